"""Per-tensor statistics: min, max, count and an exactly mergeable histogram.

The histogram has ``2 * bins + 1`` bins over ``[-R, R]``, where ``R = 2**exponent`` and
``bins`` is a power of two.  A value ``x`` falls in the bin of signed index
``t = trunc(x * bins / R)`` (rounded toward zero), stored at position ``t + bins``.  So the
centre bin holds ``|x| < w`` and every other bin is ``w = R / bins`` wide; a positive ``t``
covers ``[t*w, (t+1)*w)`` and a negative one ``(-(|t|+1)*w, -|t|*w]``.

Why this layout:

* ``bins / R`` is a power of two, so ``x * bins / R`` is exact in float32 (a result too small
  to be exact is below 1 in magnitude and lands in the centre bin anyway).
* When a batch needs a wider range, ``R`` doubles and ``trunc(t / 2)`` maps each old bin
  onto exactly one new bin, because ``trunc(trunc(y) / 2) == trunc(y / 2)``.  Rebinning is
  therefore exact: statistics gathered in any order, on any number of shards, and merged
  (grow the smaller range to the larger, add the counts) equal those of one pass over all
  the data, bit for bit.
* Memory is ``2 * bins + 1`` integers per tensor whatever the number of batches.

Speed: ``min``/``max`` always read every element (about 0.3-0.6 ns per element).  A full
histogram (float multiply, truncating cast, ``np.bincount``) costs about 2.3 ns per element
on gaussian data and 3 ns on ReLU outputs, whose runs of zeros serialize ``np.bincount``'s
increments.  So the histogram of a tensor with more than :data:`SUBSAMPLE_MIN_SIZE`
elements is built from every :data:`SUBSAMPLE_STRIDE`-th element, counts multiplied by the
stride: ``update`` then costs about 1 ns per element, close to the ``asnumpy()`` copy that
precedes it (``benchmarks/calib_kernels.py``), and each batch still gives at least 26,000
histogram samples.  The stride, 5, is coprime with 2 and 7, the factors of the usual
spatial sizes (224, 112, ..., 7) and channel counts, so samples do not fall on a fixed
subset of columns.  Very large tensors (a batch of 32 early-layer activations holds 25
million values) take a wider prime stride from :data:`SUBSAMPLE_STRIDES`, the widest that
still leaves :data:`SUBSAMPLE_TARGET` samples: the histogram then costs little next to
min/max, so every calibrator runs at about the speed of min-max (:func:`subsample_stride`).  Sampling depends only on the batch, never on the running state, so
merging stays exact.  A thread pool does not pay: ``np.bincount`` holds the GIL in
numpy 1.x (two threads measured no faster), and the framework's forward pass already uses
the other cores.
"""
import math

import numpy as np

from ..errors import CalibrationDataError, ConfigError, NonFiniteDataError

__all__ = [
    "TensorStatistics",
    "DEFAULT_BINS",
    "SUBSAMPLE_STRIDE",
    "SUBSAMPLE_MIN_SIZE",
    "SUBSAMPLE_STRIDES",
    "SUBSAMPLE_TARGET",
    "subsample_stride",
]

#: Histogram bins on each side of zero (a power of two).
DEFAULT_BINS = 2048
#: Histograms of large tensors are built from every ``SUBSAMPLE_STRIDE``-th element.
SUBSAMPLE_STRIDE = 5
#: Tensors with more elements than this are subsampled for the histogram (never for min/max).
SUBSAMPLE_MIN_SIZE = 2 ** 17
#: Wider strides for very large tensors (primes, coprime with 2 and 7 like the default).
SUBSAMPLE_STRIDES = (SUBSAMPLE_STRIDE, 11, 23, 47)
#: A wider stride is used only if it leaves at least this many histogram samples per batch.
SUBSAMPLE_TARGET = 2 ** 19
_MIN_BINS, _MAX_BINS = 16, 2 ** 16
# Histogram samples handled per step: the work buffers (float32 + int64) stay in L2 cache.
_CHUNK = 2 ** 16
_STATE_KEYS = ("bins", "subsample", "min", "max", "count", "exponent", "histogram")


def _check_bins(bins):
    if (isinstance(bins, bool) or not isinstance(bins, (int, np.integer))
            or not _MIN_BINS <= bins <= _MAX_BINS or bins & (bins - 1)):
        raise ConfigError(
            "bins must be a power of two between %d and %d (bins per side of zero), got %r."
            % (_MIN_BINS, _MAX_BINS, bins))
    return int(bins)


def _exponent_range(bins):
    """The exponents for which ``bins / 2**exponent`` is a normal float32."""
    log2_bins = bins.bit_length() - 1
    return log2_bins - 126, log2_bins + 126


def _exponent_for(absmax, bins):
    """Smallest ``e`` (within the float32-safe range) with ``2**e >= absmax > 0``."""
    mantissa, exponent = math.frexp(absmax)
    if mantissa == 0.5:  # absmax is a power of two
        exponent -= 1
    low, _ = _exponent_range(bins)
    return max(exponent, low)


def _fold(hist, bins, steps):
    """Rebin ``hist`` for a range ``2**steps`` times wider; exact, returns a new array."""
    if steps <= 0:
        return hist
    signed = np.arange(-bins, bins + 1)
    shift = min(steps, 62)
    target = np.sign(signed) * (np.abs(signed) >> shift) + bins
    # target is non-decreasing, so each new bin is one contiguous run of old bins.
    starts = np.flatnonzero(np.r_[True, target[1:] != target[:-1]])
    out = np.zeros_like(hist)
    out[target[starts]] = np.add.reduceat(hist, starts)
    return out


def subsample_stride(size):
    """The histogram stride for a batch of ``size`` values (subsampling enabled).

    1 up to :data:`SUBSAMPLE_MIN_SIZE` values, else the widest of :data:`SUBSAMPLE_STRIDES`
    leaving at least :data:`SUBSAMPLE_TARGET` samples (at least :data:`SUBSAMPLE_STRIDE`).
    It depends on the batch size only, so merged statistics stay exact.
    """
    if size <= SUBSAMPLE_MIN_SIZE:
        return 1
    wide = [s for s in SUBSAMPLE_STRIDES if size // s >= SUBSAMPLE_TARGET]
    return max(wide) if wide else SUBSAMPLE_STRIDE


def _non_finite_error(flat, name):
    n_nan = int(np.count_nonzero(np.isnan(flat)))
    n_inf = int(np.count_nonzero(np.isinf(flat)))
    return NonFiniteDataError(
        "Tensor %r holds %d NaN and %d Inf values (of %d): calibration needs finite data. "
        "Check the model and the calibration batches (diverged weights, bad "
        "preprocessing, overflow in float16)." % (name, n_nan, n_inf, flat.size))


def _scan(flat, bins, stride, exponent, name):
    """Statistics of one batch in one pass.

    Parameters
    ----------
    flat : numpy.ndarray
        1-D float32, non-empty.
    bins : int or None
        Bins per side, or None for min/max only.
    stride : int
        Histogram from every ``stride``-th element.
    exponent : int or None
        Start with this range exponent (the running statistics' own), so that the batch
        needs no rebinning when merged unless its range is wider.
    name : str
        Tensor name for error messages.

    Returns
    -------
    tuple
        ``(min, max, exponent, hist)``; ``hist`` is an int64 array of ``2 * bins + 1``
        counts (already multiplied by ``stride``) or None.
    """
    if bins is None:
        lo, hi = float(flat.min()), float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise _non_finite_error(flat, name)
        return lo, hi, None, None
    size = flat.size
    # Chunks of at most _CHUNK * SUBSAMPLE_STRIDE values (~1.3 MB) stay in cache; the
    # samples are every stride-th value of the whole tensor, whatever the chunking.
    span = _CHUNK * min(stride, SUBSAMPLE_STRIDE)
    n_buf = min(-(-span // stride), -(-size // stride))
    fbuf = np.empty(n_buf, np.float32)
    ibuf = np.empty(n_buf, np.int64)
    hist = np.zeros(2 * bins + 1, np.int64)
    lo, hi = math.inf, -math.inf
    scale = None if exponent is None else np.float32(math.ldexp(bins, -exponent))
    # Chunks keep the data in cache between min/max and the histogram: one read from memory.
    for start in range(0, size, span):
        chunk = flat[start:start + span]
        cmin, cmax = float(chunk.min()), float(chunk.max())
        if not (math.isfinite(cmin) and math.isfinite(cmax)):
            raise _non_finite_error(flat, name)
        lo, hi = min(lo, cmin), max(hi, cmax)
        absmax = max(-cmin, cmax)
        if absmax > 0:
            need = _exponent_for(absmax, bins)
            if exponent is None or need > exponent:
                hist = _fold(hist, bins, 0 if exponent is None else need - exponent)
                exponent = need
                scale = np.float32(math.ldexp(bins, -exponent))
        sample = chunk[(-start) % stride::stride]
        n = sample.size
        if scale is None:  # only zeros so far: the centre bin, whatever the range
            hist[bins] += n
            continue
        fb, ib = fbuf[:n], ibuf[:n]
        np.multiply(sample, scale, out=fb)
        np.copyto(ib, fb, casting="unsafe")  # C cast: truncation toward zero
        np.add(ib, bins, out=ib)
        hist += np.bincount(ib, minlength=2 * bins + 1)
    if stride > 1:
        hist *= stride
    return lo, hi, exponent, hist


def _as_flat_float32(array):
    if hasattr(array, "asnumpy"):  # an MXNet NDArray
        array = array.asnumpy()
    array = np.asarray(array, dtype=np.float32)
    # C order, so that the subsample depends on the values' logical layout only.
    return array.reshape(-1)


class TensorStatistics:
    """Running statistics of one tensor: min, max, count and a mergeable histogram.

    Parameters
    ----------
    bins : int or None, optional
        Histogram bins on each side of zero, a power of two between 16 and 65536 (the
        histogram has ``2 * bins + 1`` bins).  None keeps min, max and count only.
    subsample : bool, optional
        Build the histogram of tensors larger than :data:`SUBSAMPLE_MIN_SIZE` from every
        :func:`subsample_stride`-th element (min, max and count always see every element).

    Notes
    -----
    Statistics built in any batch order, or on shards then merged with :meth:`merge`,
    are equal (``==``) to those of one pass.  See the module docstring for the layout.
    """

    __slots__ = ("_bins", "_subsample", "_min", "_max", "_count", "_exponent", "_hist")

    def __init__(self, *, bins=DEFAULT_BINS, subsample=True):
        self._bins = None if bins is None else _check_bins(bins)
        if not isinstance(subsample, (bool, np.bool_)):
            raise ConfigError("subsample must be True or False, got %r." % (subsample,))
        self._subsample = bool(subsample)
        self._min = None
        self._max = None
        self._count = 0
        self._exponent = None
        self._hist = None if self._bins is None else np.zeros(2 * self._bins + 1, np.int64)

    # -- reading -----------------------------------------------------------------------
    @property
    def bins(self):
        """int or None: histogram bins per side of zero (None: no histogram)."""
        return self._bins

    @property
    def subsample(self):
        """bool: whether histograms of large tensors are subsampled."""
        return self._subsample

    @property
    def has_histogram(self):
        """bool: whether a histogram is kept."""
        return self._bins is not None

    @property
    def count(self):
        """int: number of elements seen."""
        return self._count

    @property
    def min(self):
        """float or None: smallest value seen (None before any data)."""
        return self._min

    @property
    def max(self):
        """float or None: largest value seen (None before any data)."""
        return self._max

    @property
    def absmax(self):
        """float: largest magnitude seen (0.0 before any data)."""
        if self._count == 0:
            return 0.0
        return max(-self._min, self._max)

    @property
    def exponent(self):
        """int or None: the histogram covers ``[-2**exponent, 2**exponent]``; None while only
        zeros were seen."""
        return self._exponent

    @property
    def bin_width(self):
        """float: width of a histogram bin, ``2**exponent / bins`` (0.0 while undefined)."""
        if self._bins is None or self._exponent is None:
            return 0.0
        return math.ldexp(1.0, self._exponent) / self._bins

    @property
    def histogram(self):
        """numpy.ndarray: int64 counts, shape ``(2 * bins + 1,)``, a read-only view.

        Position ``t + bins`` counts the values with ``trunc(x / bin_width) == t``.
        """
        if self._hist is None:
            raise CalibrationDataError(
                "These statistics keep no histogram (bins=None); collect with a histogram "
                "calibrator ('entropy', 'percentile', 'mse') to get one.")
        view = self._hist.view()
        view.flags.writeable = False
        return view

    def magnitude_histogram(self):
        """Histogram of ``|x|`` over ``[0, absmax]``, the input of every threshold search.

        Returns
        -------
        counts : numpy.ndarray
            int64, shape ``(n,)`` with ``n <= bins``: bin ``k`` counts ``k*w <= |x| < (k+1)*w``;
            the last bin holds ``absmax``.  Subsampled counts are scaled by the stride, so
            ``counts.sum()`` approximates :attr:`count`.
        width : float
            Bin width ``w`` in the tensor's units.
        """
        hist, bins = self.histogram, self._bins
        if self._exponent is None:  # only zeros
            return hist[bins:bins + 1].copy(), 0.0
        magnitude = hist[bins:].copy()
        magnitude[1:] += hist[bins - 1::-1]
        magnitude[bins - 1] += magnitude[bins]  # |x| == R exactly
        width = self.bin_width
        used = min(bins, int(self.absmax / width) + 1)
        return magnitude[:used], width

    # -- updating ----------------------------------------------------------------------
    def update(self, array, *, name="tensor"):
        """Add one batch.

        Parameters
        ----------
        array : array_like
            Values of any shape; converted to float32 (an MXNet NDArray is copied to numpy).
        name : str, optional
            Tensor name used in error messages.

        Raises
        ------
        CalibrationDataError
            If ``array`` is empty.
        NonFiniteDataError
            If ``array`` holds NaN or Inf; the statistics are then left unchanged.
        """
        flat = _as_flat_float32(array)
        if flat.size == 0:
            raise CalibrationDataError(
                "Tensor %r is empty (shape %r): calibration needs at least one value."
                % (name, np.shape(array)))
        stride = subsample_stride(flat.size) if self._subsample else 1
        lo, hi, exponent, hist = _scan(flat, self._bins, stride, self._exponent, name)
        self._add(lo, hi, flat.size, exponent, hist)

    def merge(self, other):
        """Add the statistics of ``other`` (same ``bins`` and ``subsample``) in place.

        Raises
        ------
        CalibrationDataError
            If the two were collected with different settings.
        """
        if not isinstance(other, TensorStatistics):
            raise CalibrationDataError(
                "Can only merge TensorStatistics, got %s." % type(other).__name__)
        if other._settings() != self._settings():
            raise CalibrationDataError(
                "Cannot merge statistics collected with bins=%r, subsample=%r into statistics "
                "with bins=%r, subsample=%r: collect all shards with the same settings."
                % (other._bins, other._subsample, self._bins, self._subsample))
        if other._count:
            self._add(other._min, other._max, other._count, other._exponent, other._hist)

    def _settings(self):
        # subsample only matters for a histogram
        return self._bins, (self._subsample if self._bins is not None else None)

    def _add(self, lo, hi, count, exponent, hist):
        if self._count == 0:
            self._min, self._max = lo, hi
        else:
            self._min, self._max = min(self._min, lo), max(self._max, hi)
        self._count += count
        if hist is None:
            return
        if exponent is not None and (self._exponent is None or exponent > self._exponent):
            if self._exponent is not None:
                self._hist = _fold(self._hist, self._bins, exponent - self._exponent)
            self._exponent = exponent
        elif exponent is not None:
            hist = _fold(hist, self._bins, self._exponent - exponent)
        self._hist = self._hist + hist

    def copy(self):
        """Return an independent copy."""
        new = TensorStatistics(bins=self._bins, subsample=self._subsample)
        if self._count:
            new._add(self._min, self._max, self._count, self._exponent, self._hist)
        return new

    def without_histogram(self):
        """Return a copy that keeps min, max and count only."""
        new = TensorStatistics(bins=None)
        if self._count:
            new._add(self._min, self._max, self._count, None, None)
        return new

    def __eq__(self, other):
        if not isinstance(other, TensorStatistics):
            return NotImplemented
        same = ((self._settings(), self._min, self._max, self._count, self._exponent)
                == (other._settings(), other._min, other._max, other._count, other._exponent))
        return same and (self._hist is None or np.array_equal(self._hist, other._hist))

    __hash__ = None

    def __repr__(self):
        return "TensorStatistics(count=%d, min=%r, max=%r, bins=%r, exponent=%r)" % (
            self._count, self._min, self._max, self._bins, self._exponent)

    # -- serialization -----------------------------------------------------------------
    def to_dict(self):
        """Return a JSON-safe dict; the histogram is stored without its zero ends."""
        hist = None
        if self._hist is not None:
            nonzero = np.flatnonzero(self._hist)
            first = int(nonzero[0]) if nonzero.size else 0
            last = int(nonzero[-1]) + 1 if nonzero.size else 0
            hist = {"offset": first, "counts": self._hist[first:last].tolist()}
        return {"bins": self._bins, "subsample": self._subsample, "min": self._min,
                "max": self._max, "count": self._count, "exponent": self._exponent,
                "histogram": hist}

    @classmethod
    def from_dict(cls, state):
        """Rebuild statistics from :meth:`to_dict` output, validating it.

        Raises
        ------
        CalibrationDataError
            If ``state`` is malformed; the message names the problem.
        """
        def bad(problem):
            return CalibrationDataError("Malformed tensor statistics: %s." % problem)

        if not isinstance(state, dict) or set(state) != set(_STATE_KEYS):
            raise bad("expected a dict with keys %s, got %r"
                      % (", ".join(_STATE_KEYS), sorted(state) if isinstance(state, dict)
                         else type(state).__name__))
        try:
            new = cls(bins=state["bins"], subsample=state["subsample"])
        except ConfigError as err:
            raise bad(str(err)) from None
        count = state["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise bad("count must be a non-negative integer, got %r" % (count,))
        if count == 0:
            if state["min"] is not None or state["max"] is not None or state["exponent"] \
                    is not None:
                raise bad("empty statistics must have min, max and exponent None")
            return new
        lo, hi = state["min"], state["max"]
        for key, value in (("min", lo), ("max", hi)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise bad("%s must be a finite number, got %r" % (key, value))
        if lo > hi:
            raise bad("min %r is larger than max %r" % (lo, hi))
        exponent, hist = state["exponent"], None
        if new._bins is not None:
            low, high = _exponent_range(new._bins)
            if exponent is not None and (isinstance(exponent, bool) or not isinstance(
                    exponent, int) or not low <= exponent <= high):
                raise bad("exponent must be None or an integer in [%d, %d], got %r"
                          % (low, high, exponent))
            if exponent is None and max(-lo, hi) > 0:
                raise bad("exponent is None but the values are not all zero")
            if exponent is not None and max(-lo, hi) > math.ldexp(1.0, exponent):
                raise bad("values up to %r exceed the histogram range 2**%d"
                          % (max(-lo, hi), exponent))
            hist = cls._histogram_from_dict(state["histogram"], new._bins, bad)
        elif state["histogram"] is not None or exponent is not None:
            raise bad("statistics without bins cannot have a histogram or exponent")
        new._add(float(lo), float(hi), count, exponent, hist)
        return new

    @staticmethod
    def _histogram_from_dict(hist, bins, bad):
        if not isinstance(hist, dict) or set(hist) != {"offset", "counts"}:
            raise bad("histogram must be a dict with keys 'offset' and 'counts'")
        offset, counts = hist["offset"], hist["counts"]
        if (isinstance(offset, bool) or not isinstance(offset, int) or not isinstance(counts, list)
                or offset < 0 or offset + len(counts) > 2 * bins + 1):
            raise bad("histogram offset %r and %d counts do not fit %d bins"
                      % (offset, len(counts) if isinstance(counts, list) else -1, 2 * bins + 1))
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise bad("histogram counts must be non-negative integers")
        out = np.zeros(2 * bins + 1, np.int64)
        out[offset:offset + len(counts)] = counts
        return out
