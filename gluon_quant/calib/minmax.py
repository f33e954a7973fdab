"""MinMaxCalibrator: the observed range (MXNet's 'naive' calibration)."""
from .base import Calibrator

__all__ = ["MinMaxCalibrator"]


class MinMaxCalibrator(Calibrator):
    """Use the observed range: ``(0, max)`` for a tensor never negative, else
    ``(-absmax, absmax)``.

    Keeps min, max and count only (the cheapest statistics).  It also accepts the statistics
    of a histogram calibrator (``MinMaxCalibrator.from_statistics(cal.statistics)`` or
    ``cal.rescore(MinMaxCalibrator)``), keeping only their min, max and count.
    """

    method = "minmax"

    def _threshold(self, stats, unsigned):
        return stats.absmax
