"""MSECalibrator: the threshold that minimizes the expected squared quantization error."""
import numpy as np

from .base import HistogramCalibrator, quantization_levels

__all__ = ["MSECalibrator", "quantization_errors", "error_terms"]


def error_terms(counts, levels, *, top=None):
    """The two parts of the squared quantization error of every candidate threshold.

    Candidate ``i`` (``1..n``) clips at ``tau_i = min(i, top)`` bin widths.  A value
    inside the range gets the rounding noise of a uniform grid of ``levels`` steps,
    ``(tau_i / levels)**2 / 12``; a clipped value, represented by its bin centre ``u``,
    gets ``(u - tau_i)**2``.

    Parameters
    ----------
    counts : numpy.ndarray
        Non-negative counts of ``|x|``, shape ``(n,)``, bin ``k`` is ``[k, k+1)`` widths.
    levels : int
        Number of quantization steps over ``[0, tau]``.
    top : float, optional
        Largest magnitude in bin widths (thresholds are capped there; default ``n``).

    Returns
    -------
    taus : numpy.ndarray
        float64, shape ``(n,)``: the candidate thresholds in bin widths.
    rounding, clipping : numpy.ndarray
        float64, shape ``(n,)`` each: the summed squared error (in squared bin widths) of
        the values kept and of the values clipped; ``rounding`` increases with ``i``,
        ``clipping`` never does.
    """
    hist = np.asarray(counts, dtype=np.float64)
    n = hist.size
    total = hist.sum()
    top = float(n) if top is None else float(top)
    taus = np.minimum(np.arange(1, n + 1, dtype=np.float64), top)
    centres = np.arange(n) + 0.5

    def beyond(values):  # beyond(values)[i - 1] = sum(values[i:]) for i = 1..n
        return np.concatenate((np.cumsum(values[::-1])[::-1][1:], [0.0]))

    n_out = beyond(hist)
    clipped = beyond(hist * centres ** 2) - 2 * taus * beyond(hist * centres) + taus ** 2 * n_out
    rounding = (total - n_out) * (taus / levels) ** 2 / 12.0
    return taus, rounding, np.maximum(clipped, 0.0)  # max: cancellation in the subtraction


def quantization_errors(counts, levels, *, top=None):
    """Expected squared error of every candidate threshold, in squared bin widths.

    The sum of the two terms of :func:`error_terms`, per value.

    Parameters
    ----------
    counts, levels, top
        See :func:`error_terms`.

    Returns
    -------
    taus : numpy.ndarray
        float64, shape ``(n,)``: the candidate thresholds in bin widths.
    errors : numpy.ndarray
        float64, shape ``(n,)``: mean squared error per value, in squared bin widths.
    """
    taus, rounding, clipping = error_terms(counts, levels, top=top)
    return taus, (rounding + clipping) / np.sum(counts, dtype=np.float64)


class MSECalibrator(HistogramCalibrator):
    """Pick the threshold with the least expected squared error (clipping + rounding).

    The error model is :func:`quantization_errors`, evaluated on the ``|x|`` histogram for
    every multiple of the bin width at once.

    Parameters
    ----------
    bins, subsample
        See :class:`~gluon_quant.calib.base.HistogramCalibrator`.
    """

    method = "mse"

    def _threshold(self, stats, unsigned):
        counts, width = stats.magnitude_histogram()
        taus, errors = quantization_errors(counts, quantization_levels(unsigned),
                                           top=stats.absmax / width)
        return float(taus[np.argmin(errors)]) * width
