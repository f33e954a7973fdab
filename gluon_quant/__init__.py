"""gluon_quant: quantize any Apache MXNet Gluon model to int8 in one call.

>>> import gluon_quant
>>> qnet = gluon_quant.quantize(net, calib_batches)
>>> print(qnet.report())
"""
from ._version import __version__
from ._compat import check_mxnet
from .errors import (GluonQuantError, ConfigError, UnknownNameError, CalibrationDataError,
                     EmptyCalibrationError, NonFiniteDataError, InputMismatchError,
                     NotHybridizableError, GraphError, UnsupportedDtypeError,
                     CalibrationTableError, ArtifactError, ModelExecutionError,
                     NotPicklableError)

check_mxnet()

from . import kernels  # noqa: E402  (before any MXNet operator runs: oneDNN reads its ISA once)
kernels.check_isa()

# pylint: disable=wrong-import-position
from .config import QuantConfig, QuantDtype, Backend, Granularity, WeightRounding
from .backends import BackendSpec, OpSupport, get_spec
from .calib import (Calibrator, CalibrationTable, MinMaxCalibrator, EntropyCalibrator,
                    PercentileCalibrator, MSECalibrator, get_calibrator)
from .block import QuantizedHybridBlock
from .symbol_block import QuantizedSymbolBlock
from .api import quantize
from .parts import quantize_parts, load_parts, QuantizedParts, QuantizedPart, PartResult
from .parallel import calibrate_parallel
from .tune import tune, TuneResult
from . import debug
from .report import LayerReport, QuantReport
from .presets import ClipRange, KeepFP32, Preset, get_preset

__all__ = [
    "__version__", "quantize", "quantize_parts", "load_parts", "QuantizedParts", "QuantizedPart",
    "PartResult", "calibrate_parallel", "tune", "TuneResult", "debug", "QuantizedHybridBlock",
    "QuantizedSymbolBlock", "QuantReport",
    "LayerReport",
    "Calibrator", "CalibrationTable", "MinMaxCalibrator", "EntropyCalibrator",
    "PercentileCalibrator", "MSECalibrator", "get_calibrator",
    "QuantConfig", "QuantDtype", "Backend", "Granularity", "WeightRounding", "BackendSpec", "OpSupport", "get_spec",
    "GluonQuantError", "ConfigError", "UnknownNameError", "CalibrationDataError",
    "EmptyCalibrationError", "NonFiniteDataError", "InputMismatchError", "NotHybridizableError",
    "GraphError", "UnsupportedDtypeError", "CalibrationTableError", "ArtifactError",
    "ModelExecutionError",
    "NotPicklableError",
    "Preset", "KeepFP32", "ClipRange", "get_preset",
]
