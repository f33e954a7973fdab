"""PercentileCalibrator: the threshold at a percentile of ``|x|``."""
import math

import numpy as np

from ..errors import ConfigError
from .base import HistogramCalibrator
from .statistics import DEFAULT_BINS

__all__ = ["PercentileCalibrator"]


class PercentileCalibrator(HistogramCalibrator):
    """Clip at a percentile of ``|x|`` (of ``x`` for a tensor never negative).

    The threshold is the upper edge of the histogram bin where the cumulative count first
    reaches the percentile, so it clips at most ``100 - percentile`` percent of the values
    (up to one bin width, ``absmax / 1024`` at most with the default bins).

    Parameters
    ----------
    percentile : float, optional
        In ``(0, 100]``; 100 gives the observed range.
    bins, subsample
        See :class:`~gluon_quant.calib.base.HistogramCalibrator`.
    """

    method = "percentile"

    def __init__(self, *, percentile=99.99, bins=DEFAULT_BINS, subsample=True):
        super().__init__(bins=bins, subsample=subsample)
        if (isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.floating))
                or not math.isfinite(percentile) or not 0.0 < percentile <= 100.0):
            raise ConfigError("percentile must be a number in (0, 100], got %r." % (percentile,))
        self._percentile = float(percentile)

    @property
    def percentile(self):
        """float: the percentile of ``|x|`` clipped at."""
        return self._percentile

    def options(self):
        return {"percentile": self._percentile, **super().options()}

    def _threshold(self, stats, unsigned):
        counts, width = stats.magnitude_histogram()
        cum = np.cumsum(counts)
        k = int(np.searchsorted(cum, self._percentile / 100.0 * cum[-1]))
        return (k + 1) * width
