"""EntropyCalibrator: the threshold that minimizes the KL divergence (TensorRT-style).

For a candidate that keeps the first ``i`` bins of the ``|x|`` histogram ``h``:

* the reference ``P`` is ``h[:i]`` with every count beyond (the values that would be
  clipped) added to its last bin;
* the candidate ``Q`` splits the ``i`` bins into ``levels`` groups (group ``j`` is bins
  ``floor(j*i/levels)`` to ``floor((j+1)*i/levels)``), gives each group the sum of ``h``
  over it, and spreads that sum evenly over the bins of the group where ``P`` is non-zero;
  the first bin (``|x|`` below one bin width) stays a group of its own, because zero is on
  the grid: without this, the zeros of a ReLU output (half the values) are smeared over the
  first group and KL clips far too much (2.3 % of a ReLU'd gaussian, measured);
* the score is ``KL(P/sum(P) || Q/sum(Q))``, infinite where ``Q`` misses mass of ``P``
  (rather than smoothing with an arbitrary epsilon; the candidate that keeps every bin is
  always finite).

All candidates are scored at once: ``Q`` is constant over a group, so the divergence is a
sum of ``levels`` group terms plus prefix sums, and the search costs
``O(candidates * levels)`` vectorized operations, a few milliseconds per tensor.

KL alone can pick absurd thresholds: on a mostly saturated ReLU6 output (a spike at 6)
MXNet's KL chose 0.38, clipping most values.  ``max_clip_fraction`` bounds the share of
values a threshold may clip.
"""
import math

import numpy as np

from ..errors import ConfigError
from .base import HistogramCalibrator, quantization_levels
from .statistics import DEFAULT_BINS

__all__ = ["EntropyCalibrator", "kl_divergences"]

# Elements per temporary array of the vectorized search (8 MiB of float64).
_BLOCK = 2 ** 20


def _xlogx(values):
    out = np.zeros_like(values)
    positive = values > 0
    out[positive] = values[positive] * np.log(values[positive])
    return out


def kl_divergences(counts, levels, *, first=None):
    """Score every candidate threshold of a magnitude histogram.

    Parameters
    ----------
    counts : numpy.ndarray
        Non-negative counts of ``|x|``, shape ``(n,)``, bin ``k`` is ``[k*w, (k+1)*w)``.
    levels : int
        Number of quantization steps (groups of ``Q``).
    first : int, optional
        Smallest candidate to score (default and minimum: ``levels``).

    Returns
    -------
    candidates : numpy.ndarray
        int64, shape ``(m,)``: the numbers of bins kept, ``first..n``; the threshold of
        candidate ``i`` is ``i * w``.
    divergences : numpy.ndarray
        float64, shape ``(m,)``: ``KL(P || Q)`` in nats (``inf`` where undefined).
    """
    hist = np.asarray(counts, dtype=np.float64)
    n = hist.size
    first = levels if first is None else max(int(first), levels)
    candidates = np.arange(first, n + 1)
    if candidates.size == 0:
        return candidates, np.empty(0)
    total = hist.sum()
    cum = np.concatenate(([0.0], np.cumsum(hist)))            # cum[i] = sum(hist[:i])
    cum_support = np.concatenate(([0], np.cumsum(hist > 0)))
    cum_xlogx = np.concatenate(([0.0], np.cumsum(_xlogx(hist))))
    divergences = np.empty(candidates.size)
    rows = max(1, _BLOCK // (levels + 2))  # bounds the (rows, levels) temporaries
    for start in range(0, candidates.size, rows):
        block = candidates[start:start + rows]
        divergences[start:start + rows] = _block_divergences(
            block, levels, hist, total, cum, cum_support, cum_xlogx)
    return candidates, divergences


def _block_divergences(candidates, levels, hist, total, cum, cum_support, cum_xlogx):
    kept = cum[candidates]
    outliers = total - kept
    # sum(P log P): the first i - 1 bins as they are, the last one with the outliers.
    p_log_p = cum_xlogx[candidates - 1] + _xlogx(total - cum[candidates - 1])
    # Group edges floor(j * i / levels), plus an edge at 1: the first bin (|x| < w) is kept
    # exact, as the grid holds zero exactly (see the module docstring).
    edges = np.empty((candidates.size, levels + 2), np.int64)
    edges[:, 0] = 0
    edges[:, 2:] = (candidates[:, None] * np.arange(1, levels + 1)) // levels
    edges[:, 1] = np.minimum(1, edges[:, 2])
    group_sum = np.diff(cum[edges], axis=1)                               # (m, levels + 1)
    group_support = np.diff(cum_support[edges], axis=1).astype(np.float64)
    # The last bin is in P's support when it holds outliers, even where h is 0.
    group_support[:, -1] += (hist[candidates - 1] == 0) & (outliers > 0)
    group_p = group_sum.copy()
    group_p[:, -1] += outliers
    with np.errstate(divide="ignore", invalid="ignore"):
        # sum(P log Q) with Q = group_sum / group_support on P's support (before normalizing)
        terms = group_p * np.log(group_sum / group_support)
        p_log_q = np.where(group_p > 0, terms, 0.0).sum(axis=1)
        divergences = (p_log_p - p_log_q) / total - math.log(total) + np.log(kept)
    divergences[~np.isfinite(divergences)] = np.inf
    return divergences


class EntropyCalibrator(HistogramCalibrator):
    """Pick the threshold whose quantized distribution is closest in KL divergence.

    Parameters
    ----------
    max_clip_fraction : float, optional
        Largest share of the values (0 to 1) a threshold may clip; candidates that clip
        more are not considered.  The default, 0.01, is far above what KL clips on smooth
        distributions (1e-6 to 1e-5 of the values of gaussian, laplace and ReLU'd gaussian
        samples, measured) and keeps saturated outputs (ReLU6 with a spike at 6) at their
        maximum.  1.0 turns the guard off; 0.0 always gives the observed range.
    bins, subsample
        See :class:`~gluon_quant.calib.base.HistogramCalibrator`.
    """

    method = "entropy"

    def __init__(self, *, max_clip_fraction=0.01, bins=DEFAULT_BINS, subsample=True):
        super().__init__(bins=bins, subsample=subsample)
        if (isinstance(max_clip_fraction, bool)
                or not isinstance(max_clip_fraction, (int, float, np.floating))
                or not 0.0 <= max_clip_fraction <= 1.0):
            raise ConfigError(
                "max_clip_fraction must be a number between 0 and 1, got %r."
                % (max_clip_fraction,))
        self._max_clip_fraction = float(max_clip_fraction)

    @property
    def max_clip_fraction(self):
        """float: largest share of values a threshold may clip."""
        return self._max_clip_fraction

    def options(self):
        return {"max_clip_fraction": self._max_clip_fraction, **super().options()}

    def _threshold(self, stats, unsigned):
        counts, width = stats.magnitude_histogram()
        levels = quantization_levels(unsigned)
        if counts.size <= levels:  # each bin is its own level: nothing to gain by clipping
            return stats.absmax
        cum = np.cumsum(counts)
        # First candidate i whose kept count cum[i - 1] leaves at most the allowed outliers.
        first = int(np.searchsorted(cum, (1.0 - self._max_clip_fraction) * cum[-1])) + 1
        candidates, divergences = kl_divergences(counts, levels, first=first)
        return float(candidates[np.argmin(divergences)]) * width
