"""What the doctor's tools take: the int8 block that :func:`gluon_quant.quantize` returns.

They read its fp32 network, fused graph and calibration; given the fp32 network itself or
a loaded export (which keeps no fp32 network), they raised ``AttributeError``.
"""
from ..errors import ConfigError

__all__ = ["check_target"]

#: What the tools read of a :class:`~gluon_quant.QuantizedHybridBlock`.
_NEEDED = ("net", "fused_graph", "quantized_graph", "calibration_table", "report")


def check_target(qnet, tool):
    """Return ``qnet`` if it is a quantized block the doctor can read.

    Raises
    ------
    ConfigError
        ``qnet`` is something else: the message says what to pass instead.
    """
    if all(hasattr(qnet, name) for name in _NEEDED):
        return qnet
    if hasattr(qnet, "metadata") and hasattr(qnet, "calibration_table"):   # a loaded export
        hint = ("a loaded export keeps neither the fp32 network nor the calibration data "
                "the doctor reads. Quantize the fp32 network again from the export's ranges, "
                "qnet = gluon_quant.quantize(net, calib_table=loaded.calibration_table), and "
                "pass qnet")
    else:
        hint = ("quantize the network first, qnet = gluon_quant.quantize(net, batches), and "
                "pass qnet")
    raise ConfigError("%s() takes the QuantizedHybridBlock that gluon_quant.quantize() "
                      "returns, got %s: %s." % (tool, type(qnet).__name__, hint))
