"""Which fp32 weights a calibration table was measured with.

A table's ranges, bias corrections and AdaRound roundings are measurements of one set of
weights. Applied to others (a fine-tuned net, another checkpoint, fresh random weights)
they quantize a different function: a small net whose weights were scaled by 3 gave
0.905 output cosine from its old table, 0.99999 recalibrated, with no word said.

The table therefore records a CRC-32 of each parameter's shape and bytes (about 0.3 ms per
MB here; a fingerprint of the values, not a security measure), and a table is checked
against the parameters it is applied to. Tables written before this record pass unchecked.
"""
import zlib

import numpy as np

from ..errors import CalibrationTableError

__all__ = ["META_KEY", "digests", "check"]

#: Table meta key: ``{parameter name: CRC-32 of its shape and bytes}``.
META_KEY = "weights"

#: Parameters named in the error, at most.
_NAMED = 5


def digests(arrays):
    """``{name: CRC-32}`` of fp32 parameters given as ``{name: NDArray or numpy array}``.

    The shape is part of the digest; the bytes are read as stored (little-endian float32),
    so a table saved on one machine checks the same weights loaded on another.
    """
    out = {}
    for name in sorted(arrays):
        value = arrays[name]
        host = np.ascontiguousarray(value.asnumpy() if hasattr(value, "asnumpy") else value)
        out[name] = zlib.crc32(host, zlib.crc32(repr(host.shape).encode("ascii")))
    return out


def check(stored, current):
    """Refuse to apply a table measured with other weights.

    Parameters
    ----------
    stored : dict or None
        The table's ``meta['weights']`` (None: an older table, not checked).
    current : dict or None
        :func:`digests` of the parameters the table is about to be applied to.

    Raises
    ------
    CalibrationTableError
        A parameter both know has other values (or shape); the message names them.
    """
    if not stored or not current:
        return
    changed = [name for name in sorted(current)
               if name in stored and int(stored[name]) != current[name]]
    if changed:
        common = sum(1 for name in current if name in stored)
        raise CalibrationTableError(
            "The calibration table was measured with other weights: %d of the %d parameters "
            "it recorded %s other values now (%s%s). Its ranges and corrections fit the "
            "weights it was calibrated with (a net fine-tuned or loaded from another "
            "checkpoint since, or random weights drawn again, is another function): "
            "calibrate this network again, quantize(net, calib_data), or load the weights "
            "the table was saved with."
            % (len(changed), common, "has" if len(changed) == 1 else "have",
               ", ".join(changed[:_NAMED]),
               ", ..." if len(changed) > _NAMED else ""))
