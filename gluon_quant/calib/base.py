"""The calibrator contract: statistics in (``collect``), ranges out (``compute``).

A :class:`Calibrator` keeps one :class:`~gluon_quant.calib.statistics.TensorStatistics`
per tensor name and turns each into a range with one rule shared by every method:

* a tensor never negative (observed min >= 0) gets ``(0.0, t)``, searched for a uint8 grid
  of :data:`UNSIGNED_LEVELS` steps; any other gets ``(-t, t)``, searched for a symmetric
  int8 grid of :data:`SIGNED_LEVELS` steps;
* ``t`` never exceeds the observed largest magnitude;
* an all-zero tensor gets ``(0.0, ZERO_RANGE)`` and a constant tensor ``c`` gets
  ``(0.0, c)`` or ``(-|c|, |c|)``: never a zero-width range, never NaN.

Subclasses only say how to pick ``t`` from the statistics of one tensor
(:meth:`Calibrator._threshold`); no registration is needed.
"""
import abc
import inspect
import logging
import math
import types

from ..errors import (CalibrationDataError, ConfigError, EmptyCalibrationError,
                      GluonQuantError)
from .statistics import DEFAULT_BINS, TensorStatistics
from .table import CalibrationTable

__all__ = [
    "Calibrator",
    "HistogramCalibrator",
    "quantization_levels",
    "UNSIGNED_LEVELS",
    "SIGNED_LEVELS",
    "ZERO_RANGE",
]

logger = logging.getLogger(__name__)

#: Steps of the uint8 grid over ``[0, t]`` (used for tensors that are never negative).
UNSIGNED_LEVELS = 255
#: Steps of the symmetric int8 grid over ``[0, t]`` (``-127..127``).
SIGNED_LEVELS = 127
#: Upper end of the range given to an all-zero tensor. Any scale quantizes zeros exactly,
#: and a moderate one keeps the int32 bias of the layer the tensor feeds (quantized with
#: scale ``levels / range``) from overflowing, which a tiny range such as 1e-6 would cause.
ZERO_RANGE = 1.0

_STATE_FORMAT = "gluon_quant.calibrator"
# Version 2: EntropyCalibrator gained max_clip_error (version 1 states load with None).
_STATE_VERSION = 2


def quantization_levels(unsigned):
    """Number of quantization steps over ``[0, t]``: 255 if ``unsigned`` else 127."""
    return UNSIGNED_LEVELS if unsigned else SIGNED_LEVELS


def _class_path(cls):
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def _is_generic(cls):
    """Whether ``cls`` is a base that chooses no thresholds itself (Calibrator, Histogram...)."""
    return inspect.isabstract(cls) or cls.__dict__.get("_generic_base", False)


class Calibrator(abc.ABC):
    """Base class of calibration methods.

    A calibrator collects statistics of named tensors (:meth:`collect`), can merge the
    statistics of another calibrator (:meth:`merge`), and turns them into a
    :class:`~gluon_quant.calib.table.CalibrationTable` (:meth:`compute`).  A subclass
    implements :meth:`_threshold`; one that needs options overrides ``__init__`` (keyword-only
    arguments) and :meth:`options`.

    This base keeps min, max and count only; :class:`HistogramCalibrator` adds a histogram.
    """

    #: Name written into tables and state dicts; defaults to the class name.
    method = None
    _generic_base = True

    def __init__(self):
        self._stats = {}

    # -- the subclass's part -----------------------------------------------------------
    def _threshold(self, stats, unsigned):
        """Return the threshold ``t > 0`` for one tensor.

        Parameters
        ----------
        stats : TensorStatistics
            Statistics of a tensor that is neither all zero nor constant.
        unsigned : bool
            True when the tensor was never negative: the range will be ``(0, t)`` on a grid
            of ``quantization_levels(True)`` steps, else ``(-t, t)``.

        Returns
        -------
        float
            Values above the largest observed magnitude are lowered to it.
        """
        raise NotImplementedError(
            "%s must implement _threshold(stats, unsigned), or override compute()."
            % type(self).__name__)

    def options(self):
        """Keyword arguments that rebuild this calibrator (JSON-safe)."""
        return {}

    @classmethod
    def _upgrade_options(cls, options, version):
        """Return the options of a state of an older ``version``, as this version reads them.

        Called by :meth:`from_state_dict` before ``cls(**options)``; a subclass whose
        options changed meaning overrides it (and the state version is raised).
        """
        return options

    def _new_statistics(self):
        """Empty statistics of the kind this calibrator collects."""
        return TensorStatistics(bins=None)

    def _adopt(self, stats):
        """Return a copy of ``stats`` in the form this calibrator collects, or raise."""
        return stats.without_histogram()

    # -- the contract ------------------------------------------------------------------
    @property
    def method_name(self):
        """str: the method name written into tables (``method`` or the class name)."""
        return type(self).method or type(self).__name__

    @property
    def names(self):
        """list of str: tensor names seen, in first-seen order."""
        return list(self._stats)

    @property
    def statistics(self):
        """Mapping[str, TensorStatistics]: the statistics per tensor (read-only view; the
        statistics are live objects, do not modify them)."""
        return types.MappingProxyType(self._stats)

    def collect(self, name, array):
        """Update the statistics of tensor ``name`` with one batch of values.

        Parameters
        ----------
        name : str
            Tensor name.
        array : numpy.ndarray
            float32 values of any shape (other dtypes and MXNet NDArrays are converted).

        Raises
        ------
        CalibrationDataError
            If ``array`` is empty.
        NonFiniteDataError
            If ``array`` holds NaN or Inf (the message names the tensor and counts them).
        """
        if not isinstance(name, str):
            raise CalibrationDataError("Tensor names must be strings, got %r." % (name,))
        stats = self._stats.get(name)
        fresh = stats is None
        if fresh:
            stats = self._new_statistics()
        stats.update(array, name=name)
        if fresh:
            self._stats[name] = stats

    def merge(self, other):
        """Add the statistics of ``other`` into this calibrator.

        The result equals that of one calibrator fed both streams, in any order.

        Raises
        ------
        CalibrationDataError
            If ``other`` is not a calibrator, or collected incompatible statistics
            (e.g. different ``bins``).
        """
        if not isinstance(other, Calibrator):
            raise CalibrationDataError(
                "Can only merge another Calibrator, got %s." % type(other).__name__)
        adopted = {name: self._adopt(stats) for name, stats in other._stats.items()}
        for name, stats in adopted.items():
            if name in self._stats:
                self._stats[name].merge(stats)
            else:
                self._stats[name] = stats

    def compute(self):
        """Turn the statistics into ranges; the statistics are left unchanged.

        Returns
        -------
        CalibrationTable
            ``{name: (lo, hi)}`` in first-seen order, with ``method`` set.

        Raises
        ------
        EmptyCalibrationError
            If nothing was collected.
        """
        if not self._stats:
            raise EmptyCalibrationError(
                "%s has no statistics: feed data with collect(name, array) before compute() "
                "(check that the calibration iterable is not empty or already exhausted)."
                % type(self).__name__)
        ranges = {}
        for name, stats in self._stats.items():
            ranges[name] = self._range(name, stats)
            logger.debug("%s: %r -> range %r (observed [%r, %r])",
                         self.method_name, name, ranges[name], stats.min, stats.max)
        return CalibrationTable(ranges, method=self.method_name)

    def _range(self, name, stats):
        unsigned = stats.min >= 0
        absmax = stats.absmax
        if absmax == 0:
            return 0.0, ZERO_RANGE
        if stats.min == stats.max:
            threshold = absmax
        else:
            threshold = self._threshold(stats, unsigned)
            try:
                threshold = float(threshold)
            except (TypeError, ValueError):
                threshold = math.nan
            if not threshold > 0 or not math.isfinite(threshold):
                raise GluonQuantError(
                    "%s._threshold returned %r for tensor %r: it must return a finite float "
                    "> 0." % (type(self).__name__, threshold, name))
            threshold = min(threshold, absmax)
        return (0.0, threshold) if unsigned else (-threshold, threshold)

    def reset(self):
        """Forget all statistics."""
        self._stats = {}

    def state_dict(self):
        """Return the calibrator's options and statistics as a JSON-safe, versioned dict."""
        return {"format": _STATE_FORMAT, "version": _STATE_VERSION,
                "class": _class_path(type(self)), "method": self.method_name,
                "options": self.options(),
                "tensors": [[name, stats.to_dict()] for name, stats in self._stats.items()]}

    @classmethod
    def from_state_dict(cls, state):
        """Rebuild a calibrator from :meth:`state_dict` output.

        Called on a concrete class, builds that class.  Called on :class:`Calibrator` or
        another abstract class, builds the subclass recorded in the state.

        Raises
        ------
        CalibrationDataError
            If the state is malformed, from a newer gluon_quant, or from another method.
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise CalibrationDataError(
                "Not a gluon_quant calibrator state (expected a dict with format %r)."
                % _STATE_FORMAT)
        version = state.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise CalibrationDataError("Bad calibrator state version %r." % (version,))
        if version > _STATE_VERSION:
            raise CalibrationDataError(
                "The calibrator state has version %d, newer than the %d this gluon_quant "
                "reads: upgrade gluon_quant." % (version, _STATE_VERSION))
        missing = {"class", "method", "options", "tensors"} - set(state)
        if missing:
            raise CalibrationDataError(
                "Malformed calibrator state: missing %s." % ", ".join(sorted(missing)))
        target = cls._state_class(state["class"], state["method"])
        options = state["options"]
        if not isinstance(options, dict):
            raise CalibrationDataError("Malformed calibrator state: options must be a dict.")
        options = target._upgrade_options(options, version)
        try:
            calibrator = target(**options)
        except (TypeError, ConfigError) as err:
            raise CalibrationDataError(
                "Malformed calibrator state: options %r do not fit %s: %s"
                % (options, target.__name__, err)) from None
        tensors = state["tensors"]
        if not isinstance(tensors, list) or not all(
                isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                for item in tensors):
            raise CalibrationDataError(
                "Malformed calibrator state: tensors must be a list of [name, statistics].")
        for name, stats in tensors:
            stats = TensorStatistics.from_dict(stats)
            if stats.count == 0:
                raise CalibrationDataError(
                    "Malformed calibrator state: tensor %r has no data." % (name,))
            calibrator._stats[name] = calibrator._adopt(stats)
        return calibrator

    @classmethod
    def _state_class(cls, path, method):
        if not _is_generic(cls):
            if method != (cls.method or cls.__name__):
                raise CalibrationDataError(
                    "The state is of method %r, not %r: load it with "
                    "Calibrator.from_state_dict(state), then use rescore() to score its "
                    "statistics with another method." % (method, cls.method or cls.__name__))
            return cls
        found = [sub for sub in _all_subclasses(cls)
                 if _class_path(sub) == path and not _is_generic(sub)]
        if not found:
            raise CalibrationDataError(
                "The calibrator class %r of this state is not defined: import the module "
                "that defines it, or call from_state_dict on the class itself." % (path,))
        return found[0]

    # -- scoring one pass of statistics several ways -----------------------------------
    @classmethod
    def from_statistics(cls, statistics, **options):
        """Build a calibrator from existing statistics, with no new pass over the data.

        Parameters
        ----------
        statistics : Mapping[str, TensorStatistics]
            E.g. ``other_calibrator.statistics``; copied.
        **options
            Keyword options of ``cls``.

        Raises
        ------
        CalibrationDataError
            If the statistics lack what ``cls`` needs (e.g. a histogram).
        """
        calibrator = cls(**options)
        for name, stats in statistics.items():
            calibrator._stats[name] = calibrator._adopt(stats)
        return calibrator

    def rescore(self, calibrator_class, **options):
        """Return a ``calibrator_class`` built on a copy of this calibrator's statistics.

        ``rescore(PercentileCalibrator, percentile=99.9).compute()`` equals a fresh
        percentile calibration over the same data.
        """
        if not (isinstance(calibrator_class, type) and issubclass(calibrator_class, Calibrator)):
            raise CalibrationDataError(
                "rescore expects a Calibrator subclass, got %r." % (calibrator_class,))
        return calibrator_class.from_statistics(self._stats, **options)

    def __repr__(self):
        options = ", ".join("%s=%r" % item for item in self.options().items())
        return "%s(%s) with %d tensors" % (type(self).__name__, options, len(self._stats))


class HistogramCalibrator(Calibrator):  # pylint: disable=abstract-method
    """Base of calibrators that choose thresholds from a histogram of ``|x|``.

    Parameters
    ----------
    bins : int, optional
        Histogram bins per side of zero, a power of two (default 2048).  Thresholds are
        chosen among multiples of the bin width, ``2**ceil(log2(absmax)) / bins``: at least
        ``bins / 2`` candidates over ``[0, absmax]``.
    subsample : bool, optional
        Build histograms of large tensors from a fixed stride of their elements (see
        :mod:`gluon_quant.calib.statistics`); min and max always see every element.

    Notes
    -----
    Subclasses implement ``_threshold(stats, unsigned)``, typically from
    ``stats.magnitude_histogram()``.  Every histogram calibrator accepts the statistics of
    any other with the same ``bins`` and ``subsample`` (:meth:`Calibrator.rescore`).
    """

    _generic_base = True

    def __init__(self, *, bins=DEFAULT_BINS, subsample=True):
        super().__init__()
        # Validated here, once, rather than at the first collect().
        TensorStatistics(bins=bins, subsample=subsample)
        self._bins = int(bins)
        self._subsample = bool(subsample)

    @property
    def bins(self):
        """int: histogram bins per side of zero."""
        return self._bins

    @property
    def subsample(self):
        """bool: whether histograms of large tensors are subsampled."""
        return self._subsample

    def options(self):
        return {"bins": self._bins, "subsample": self._subsample}

    def _new_statistics(self):
        return TensorStatistics(bins=self._bins, subsample=self._subsample)

    def _adopt(self, stats):
        if (stats.bins, stats.subsample) != (self._bins, self._subsample):
            raise CalibrationDataError(
                "%s(bins=%r, subsample=%r) cannot use statistics collected with bins=%r, "
                "subsample=%r%s." % (
                    type(self).__name__, self._bins, self._subsample, stats.bins,
                    stats.subsample,
                    ": collect them with a histogram calibrator" if stats.bins is None
                    else ": pass the same bins and subsample"))
        return stats.copy()

    @classmethod
    def from_statistics(cls, statistics, **options):
        """Build a calibrator from existing statistics (see :meth:`Calibrator.from_statistics`);
        ``bins`` and ``subsample`` default to those of the statistics."""
        first = next(iter(statistics.values()), None)
        if first is not None and first.bins is not None:
            options.setdefault("bins", first.bins)
            options.setdefault("subsample", first.subsample)
        return super().from_statistics(statistics, **options)
