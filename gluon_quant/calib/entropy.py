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

KL alone can pick thresholds that clip far too much, because it only compares how much
probability each bin holds, never how far a clipped value lies from the threshold:

* on a mostly saturated ReLU6 output (a spike at 6) MXNet's KL chose 0.38, clipping most
  values; ``max_clip_fraction`` bounds the share of values a threshold may clip;
* on a long, thin tail KL trades a little probability for resolution, whatever the size
  of the clipped values.  On EfficientNet-Lite0 (ImageNet weights) two late depthwise
  ReLU6 outputs, 78 % and 51 % zeros, were clipped at 3.45 and 3.98 (MXNet's KL: 3.45
  and 4.21): 0.16 % and 0.74 % of the values, but 11 % and 16 % of the signal's energy,
  so the clipping error was 210 and 700 times the rounding error.  Their KL curves are
  flat from there to 6 (within about 20 %), so KL had no strong preference; the int8
  logits' cosine to fp32 fell from 0.994 to 0.943 (0.984 without bias correction, which,
  fitted on the calibration photos, turned the clipping error into wrong offsets).
  ``max_clip_error`` bounds the squared error clipping adds to a multiple of the rounding
  error at the same threshold, with the error model of
  :func:`~gluon_quant.calib.mse.error_terms`.  On smooth distributions KL's own choice
  clips far less than that (clipping/rounding error 0.0002 on a gaussian, 0.02 on a
  ReLU'd gaussian, 0.15 on a laplace, 1e6 samples), so the guard does not move it; it
  moves heavy tails (student-t, 3 degrees of freedom: 18.6 to 64.8, MSE's choice 68.1).

Both guards only remove candidates that clip too much: the allowed candidates are those
that keep at least :func:`first_allowed` bins, and KL picks among them (fewer candidates
to score: the search over EfficientNet-Lite0's 55 tensors takes 0.03 s instead of 0.24 s).

Subsampled histograms (``subsample=True``, the default) have noisier sparse tails, and a
noisier histogram makes KL prefer fewer bins: on EfficientNet-Lite0's signed tensors
(projections, residual sums) thresholds were up to 20 % lower than from every value, and
moved by as much with the order of the batches; the logits' cosine changed by less than
0.0005.
"""
import logging
import math

import numpy as np

from ..errors import ConfigError
from .base import HistogramCalibrator, quantization_levels
from .mse import error_terms
from .statistics import DEFAULT_BINS

__all__ = ["EntropyCalibrator", "kl_divergences", "first_allowed"]

logger = logging.getLogger(__name__)

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


def first_allowed(counts, levels, *, max_clip_fraction=1.0, max_clip_error=None, top=None):
    """The smallest number of bins a threshold may keep under both clipping guards.

    Parameters
    ----------
    counts : numpy.ndarray
        Non-negative counts of ``|x|``, shape ``(n,)``, bin ``k`` is ``[k*w, (k+1)*w)``.
    levels : int
        Number of quantization steps over ``[0, t]``.
    max_clip_fraction : float, optional
        Largest share of the counts (0 to 1) that may lie beyond the threshold.
    max_clip_error : float or None, optional
        Largest squared clipping error, as a multiple of the squared rounding error at the
        same threshold (:func:`~gluon_quant.calib.mse.error_terms`); None: no bound.
    top : float, optional
        Largest magnitude in bin widths (see :func:`~gluon_quant.calib.mse.error_terms`).

    Returns
    -------
    int
        ``i`` in ``1..n``: every candidate keeping ``i`` bins or more obeys both bounds
        (the clipped share and the clipping error never grow with ``i``, the rounding
        error never shrinks), none keeping fewer does.
    """
    cum = np.cumsum(counts)
    # First i whose kept count cum[i - 1] leaves at most the allowed share beyond.
    first = int(np.searchsorted(cum, (1.0 - max_clip_fraction) * cum[-1])) + 1
    if max_clip_error is not None:
        _, rounding, clipping = error_terms(counts, levels, top=top)
        # Candidate n clips nothing, so at least one candidate is allowed.
        first = max(first, int(np.argmax(clipping <= max_clip_error * rounding)) + 1)
    return first


class EntropyCalibrator(HistogramCalibrator):
    """Pick the threshold whose quantized distribution is closest in KL divergence.

    Among the thresholds that obey both clipping guards (:func:`first_allowed`), the one
    with the least :func:`kl_divergences`.

    Parameters
    ----------
    max_clip_fraction : float, optional
        Largest share of the values (0 to 1) a threshold may clip; candidates that clip
        more are not considered.  The default, 0.01, is far above what KL clips on smooth
        distributions (1e-6 to 1e-5 of the values of gaussian, laplace and ReLU'd gaussian
        samples, measured) and keeps saturated outputs (ReLU6 with a spike at 6) at their
        maximum.  1.0 turns the guard off; 0.0 always gives the observed range.
    max_clip_error : float or None, optional
        Largest squared error clipping may add, as a multiple of the squared rounding
        error at the same threshold (``>= 0``); candidates whose clipped values lie too far
        beyond them are not considered.  The default, 1.0, never binds on smooth
        distributions and keeps the sparse, large values of long tails (see the module
        docstring).  None turns the guard off (as in calibrator states of version 1);
        0.0 always gives the observed range.
    bins, subsample
        See :class:`~gluon_quant.calib.base.HistogramCalibrator`.
    """

    method = "entropy"

    def __init__(self, *, max_clip_fraction=0.01, max_clip_error=1.0, bins=DEFAULT_BINS,
                 subsample=True):
        super().__init__(bins=bins, subsample=subsample)
        if (isinstance(max_clip_fraction, bool)
                or not isinstance(max_clip_fraction, (int, float, np.floating))
                or not 0.0 <= max_clip_fraction <= 1.0):
            raise ConfigError(
                "max_clip_fraction must be a number between 0 and 1, got %r."
                % (max_clip_fraction,))
        if max_clip_error is not None and (
                isinstance(max_clip_error, bool)
                or not isinstance(max_clip_error, (int, float, np.floating))
                or not 0.0 <= max_clip_error < math.inf):
            raise ConfigError(
                "max_clip_error must be None (no bound) or a finite number >= 0, got %r."
                % (max_clip_error,))
        self._max_clip_fraction = float(max_clip_fraction)
        self._max_clip_error = None if max_clip_error is None else float(max_clip_error)

    @property
    def max_clip_fraction(self):
        """float: largest share of values a threshold may clip."""
        return self._max_clip_fraction

    @property
    def max_clip_error(self):
        """float or None: largest clipping error, as a multiple of the rounding error."""
        return self._max_clip_error

    def options(self):
        return {"max_clip_fraction": self._max_clip_fraction,
                "max_clip_error": self._max_clip_error, **super().options()}

    @classmethod
    def _upgrade_options(cls, options, version):
        if version < 2 and "max_clip_error" not in options:
            # State version 1 had no error guard: keep its thresholds as they were.
            logger.info("EntropyCalibrator state of version %d: max_clip_error=None keeps "
                        "its thresholds; rescore(EntropyCalibrator) applies the current "
                        "default.", version)
            options = dict(options, max_clip_error=None)
        return options

    def _threshold(self, stats, unsigned):
        counts, width = stats.magnitude_histogram()
        levels = quantization_levels(unsigned)
        if counts.size <= levels:  # each bin is its own level: nothing to gain by clipping
            return stats.absmax
        first = first_allowed(counts, levels, max_clip_fraction=self._max_clip_fraction,
                              max_clip_error=self._max_clip_error, top=stats.absmax / width)
        candidates, divergences = kl_divergences(counts, levels, first=first)
        return float(candidates[np.argmin(divergences)]) * width
