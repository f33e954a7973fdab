"""The exception hierarchy of gluon_quant.

Every error the package raises on bad input derives from :class:`GluonQuantError`,
so callers can catch one type.  Each subclass also derives from the closest
built-in exception (``ValueError``, ``TypeError``, ``OSError``...) so that code
written against the built-ins keeps working.
"""

__all__ = [
    "GluonQuantError",
    "ConfigError",
    "UnknownNameError",
    "CalibrationDataError",
    "EmptyCalibrationError",
    "NonFiniteDataError",
    "InputMismatchError",
    "NotHybridizableError",
    "GraphError",
    "UnsupportedDtypeError",
    "CalibrationTableError",
    "ArtifactError",
    "ModelExecutionError",
    "NotPicklableError",
]


class GluonQuantError(Exception):
    """Base class of every error raised by gluon_quant."""


class ConfigError(GluonQuantError, ValueError):
    """A setting has a bad value or an unsupported combination."""


class UnknownNameError(ConfigError, KeyError):
    """A name (dtype, backend, calibrator, preset, layer, model) is not known.

    The message lists the valid names.
    """

    def __str__(self):  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class CalibrationDataError(GluonQuantError, ValueError):
    """Calibration data cannot be used as given."""


class EmptyCalibrationError(CalibrationDataError):
    """No calibration batch was seen (empty or exhausted iterable, or a calibrator fed nothing)."""


class NonFiniteDataError(CalibrationDataError):
    """A tensor seen during calibration holds NaN or Inf."""


class InputMismatchError(GluonQuantError, ValueError):
    """A batch does not fit the network's inputs (arity, shape, rank, dtype or names)."""


class NotHybridizableError(GluonQuantError, TypeError):
    """The network cannot be turned into a symbolic graph."""


class GraphError(GluonQuantError, RuntimeError):
    """The graph cannot be fused, quantized or run."""


class UnsupportedDtypeError(ConfigError):
    """A dtype (the requested quantized one, or the network's) cannot be used as given."""


class CalibrationTableError(GluonQuantError, ValueError):
    """A calibration table is malformed, from a newer format, or from another graph."""


class ArtifactError(GluonQuantError, OSError):
    """An exported file is missing, unwritable, truncated, altered or of an unknown format."""


class ModelExecutionError(GluonQuantError, RuntimeError):
    """The user's network raised while it was run."""


class NotPicklableError(GluonQuantError, TypeError):
    """An int8 block was pickled or deep-copied (it holds MXNet handles): export it."""


def refuse_pickling(block, protocol=None):  # pylint: disable=unused-argument
    """Raise :class:`NotPicklableError` for pickling or copying the int8 block ``block``
    (its ``__reduce_ex__``)."""
    raise NotPicklableError(
        "A %s cannot be pickled or deep-copied: it holds MXNet's compiled graph and handles. "
        "To save or ship it, use export(prefix) and gluon_quant.QuantizedSymbolBlock."
        "imports(prefix) (int8 weights, a few MB); to send it to other processes, send "
        "those files; for a second block over the same net, use clone() and "
        "finalize(table)." % type(block).__name__)


def refuse_cast(block, dtype, *args, **kwargs):  # pylint: disable=unused-argument
    """The int8 block ``block``'s ``cast``: nothing to do for float32 (its inputs and
    outputs already are), :class:`ConfigError` for any other dtype."""
    if str(getattr(dtype, "__name__", dtype)) == "float32":
        return
    raise ConfigError(
        "%s.cast(%r): an int8 network cannot be cast (its int8 weights and ranges would be "
        "lost). Cast the fp32 network before quantizing it (the int8 network is built from "
        "float32 weights), or quantize again." % (type(block).__name__, dtype))


def refuse_summary(block, *inputs):  # pylint: disable=unused-argument
    """The int8 block ``block``'s ``summary``: Gluon's walks an unhybridized block layer by
    layer, and an int8 block is one compiled graph; :class:`ConfigError` says what to use."""
    raise ConfigError(
        "%s.summary(): Gluon's summary needs an unhybridized block, and an int8 network is "
        "one compiled graph. print(qnet.report()) lists its layers (op, int8 or not, dtype, "
        "range and why); summary() of the fp32 network (qnet.net for a QuantizedHybridBlock) "
        "shows shapes and parameter counts." % type(block).__name__)


def refuse_optimize_for(block, *inputs, backend=None, **kwargs):  # pylint: disable=unused-argument
    """The int8 block ``block``'s ``optimize_for``: its graph is already partitioned,
    fused and quantized for its backend, and Gluon's would partition it again;
    :class:`ConfigError` says to call the block as it is."""
    raise ConfigError(
        "%s.optimize_for(backend=%r): the int8 network is already optimized for its backend "
        "(oneDNN or cuDNN fusion, then quantization); call it as it is. To optimize the fp32 "
        "network, call optimize_for on it before quantizing, or quantize with "
        "backend='onednn' or 'cudnn'." % (type(block).__name__, backend))


def _refuse_files(owner, filename=None, *args, **kwargs):  # pylint: disable=unused-argument
    """The int8 block class ``owner``'s ``save_parameters`` / ``load_parameters`` / ``save`` /
    ``load`` (bound as class methods, so ``QuantizedSymbolBlock.load(prefix)`` is answered
    too): a Gluon parameter or model file cannot rebuild an int8 network (its graph, int8
    weights and calibrated ranges belong together), and Gluon's would write or read
    fp32-sized weights the int8 graph ignores; :class:`ConfigError` names the export that does
    it, raised before anything is written."""
    raise ConfigError(
        "%s cannot save or load Gluon's parameter or model files (%r): the int8 network is "
        "its graph, int8 weights and calibrated ranges together, and Gluon's files would hold "
        "fp32 weights the int8 graph ignores. Save it with export(prefix) and load it with "
        "gluon_quant.QuantizedSymbolBlock.imports(prefix); to change weights, load them into "
        "the fp32 network (qnet.net for a QuantizedHybridBlock) and quantize again."
        % (owner.__name__, filename))


refuse_parameter_files = classmethod(_refuse_files)
