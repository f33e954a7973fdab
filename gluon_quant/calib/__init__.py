"""Calibration: collect statistics of named tensors, then choose their float ranges.

Example::

    cal = get_calibrator("entropy")
    cal.collect("conv0_output", activations)          # once per batch and tensor
    table = cal.compute()                             # {name: (lo, hi)}
    table.save("calib.json")
    cal.rescore(PercentileCalibrator).compute()       # another method, no new pass

Methods (one per module): ``'minmax'`` (alias ``'naive'``), ``'entropy'`` (``'kl'``),
``'percentile'`` and ``'mse'``.  Any :class:`Calibrator` subclass can be passed wherever a
name is accepted; it needs no registration.
"""
import inspect
import types

from .._names import suggest
from ..errors import ConfigError, UnknownNameError
from .base import (SIGNED_LEVELS, UNSIGNED_LEVELS, ZERO_RANGE, Calibrator, HistogramCalibrator,
                   quantization_levels)
from .entropy import EntropyCalibrator
from .minmax import MinMaxCalibrator
from .mse import MSECalibrator
from .percentile import PercentileCalibrator
from .statistics import DEFAULT_BINS, TensorStatistics
from .table import CalibrationTable

__all__ = [
    "CALIBRATORS",
    "get_calibrator",
    "Calibrator",
    "HistogramCalibrator",
    "MinMaxCalibrator",
    "EntropyCalibrator",
    "PercentileCalibrator",
    "MSECalibrator",
    "CalibrationTable",
    "TensorStatistics",
    "quantization_levels",
    "DEFAULT_BINS",
    "SIGNED_LEVELS",
    "UNSIGNED_LEVELS",
    "ZERO_RANGE",
]

#: Calibration methods by name (read-only).
CALIBRATORS = types.MappingProxyType({
    "minmax": MinMaxCalibrator,
    "naive": MinMaxCalibrator,
    "entropy": EntropyCalibrator,
    "kl": EntropyCalibrator,
    "percentile": PercentileCalibrator,
    "mse": MSECalibrator,
})


def get_calibrator(calibrator, **options):
    """Return a :class:`Calibrator` instance.

    Parameters
    ----------
    calibrator : str, Calibrator subclass or Calibrator
        A name from :data:`CALIBRATORS` (case-insensitive), a class (instantiated with
        ``options``) or an instance (returned as is).
    **options
        Keyword options of the class, e.g. ``percentile=99.9``.

    Raises
    ------
    UnknownNameError
        If the name is unknown; the message lists the valid names.
    ConfigError
        If an option does not exist for the method, or options come with an instance.
    """
    if isinstance(calibrator, Calibrator):
        if options:
            raise ConfigError(
                "Options %s cannot be applied to an existing %s instance: pass its class or "
                "name instead." % (sorted(options), type(calibrator).__name__))
        return calibrator
    if isinstance(calibrator, str):
        key = calibrator.strip().lower()
        if key not in CALIBRATORS:
            valid = sorted(CALIBRATORS)
            raise UnknownNameError(
                "Unknown calibration method %r. Valid names: %s.%s"
                % (calibrator, ", ".join(repr(v) for v in valid), suggest(calibrator, valid)))
        cls = CALIBRATORS[key]
    elif isinstance(calibrator, type) and issubclass(calibrator, Calibrator) \
            and not inspect.isabstract(calibrator):
        cls = calibrator
    else:
        raise ConfigError(
            "Expected a calibration method name (%s), a Calibrator subclass or instance, "
            "got %r." % (", ".join(repr(v) for v in sorted(CALIBRATORS)), calibrator))
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise ConfigError(
                "%s has no option %s. Its options: %s." % (
                    cls.__name__, ", ".join(repr(u) for u in unknown),
                    ", ".join(repr(p) for p in parameters) or "none"))
    return cls(**options)
