"""Storing the weights of oneDNN's fused int8 layers as int8, without changing one output.

MXNet 1.9.1's fused oneDNN operators (``_sg_mkldnn_conv`` and ``_sg_mkldnn_fully_connected``
with ``quantized=true``) refuse int8 weights: they take fp32 weights and, at their first
run, fold BatchNorm into them (``w * gamma / sqrt(var + eps)``) and quantize the result
with a step of ``max|w| / 127.5`` per output channel (``weight_channelwise_scale`` /
``channel_wise_quantize``; one step for the whole tensor otherwise), rounding to nearest
even and saturating to ``[-128, 127]``.

A file that stores those int8 values ``q`` must, at load, give back fp32 weights that
the runtime turns into exactly the same ``q`` *and* the same scales (the scales also
set the int32 bias and the requantization of the output). This module does that:

* :func:`pack` emulates the runtime in numpy on the exported weights and keeps ``q``
  plus, per output channel, the *anchor*: the unfolded weight whose folded magnitude is
  the channel's maximum ``M`` (so ``M``, hence every scale, is reproduced bit for bit).
* :func:`unpack` rebuilds every weight as ``q / scale`` (unfolded by the BatchNorm
  factor), clipped to ``[-M, M]``, and puts the anchor (or its negation) where the
  extreme values of ``q`` are. Each rebuilt value lies well inside its rounding interval,
  so the runtime's own rounding gives ``q`` back.
* :func:`pack` checks that the runtime, emulated on the rebuilt weights, gives back the
  same maxima and the same ``q``; a layer for which it would not (or whose bias could
  hit the runtime's int32 overflow guard, which lowers the scale) is kept in fp32.

A naive packing (``round(w / (max / 127))``) is *not* the runtime's quantization and
changes outputs; BatchNorm parameters stay as they are (per channel, small).
"""
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["PackSpec", "pack", "unpack", "fold_factor", "runtime_quantize"]

_log = logging.getLogger(__name__)

_INT8_RANGE = np.float32(127.5)       # MXNet's kInt8Range
_ZERO_RANGE_SCALE = np.float32(2147483647)   # GetQuantizeScale of an all-zero range
#: The runtime lowers a channel's scale when ``|bias| * data_scale * scale`` reaches
#: ``2**31 / 2``; packing refuses layers within this factor of it.
_BIAS_GUARD = float(2 ** 30) / 64


@dataclass(frozen=True)
class PackSpec:
    """What the runtime does to one weight.

    Parameters
    ----------
    weight : str
        Name of the fp32 weight parameter, shape ``(C_out, ...)``.
    channelwise : bool
        One scale per output channel (else one per tensor).
    gamma, var : str or None
        BatchNorm parameters folded into the weight (None: no BatchNorm).
    eps : float
        BatchNorm epsilon.
    fix_gamma : bool
        BatchNorm ignores gamma (``scale=False``).
    """

    weight: str
    channelwise: bool
    gamma: Optional[str] = None
    var: Optional[str] = None
    eps: float = 0.0
    fix_gamma: bool = False

    def to_dict(self):
        """JSON-safe form, for the export metadata."""
        return {"weight": self.weight, "channelwise": self.channelwise, "gamma": self.gamma,
                "var": self.var, "eps": self.eps, "fix_gamma": self.fix_gamma}

    @classmethod
    def from_dict(cls, state):
        """Inverse of :meth:`to_dict` (raises TypeError/KeyError on a malformed entry)."""
        spec = cls(weight=state["weight"], channelwise=state["channelwise"],
                   gamma=state["gamma"], var=state["var"], eps=state["eps"],
                   fix_gamma=state["fix_gamma"])
        if not isinstance(spec.weight, str) or not isinstance(spec.channelwise, bool) \
                or not isinstance(spec.fix_gamma, bool) \
                or isinstance(spec.eps, bool) or not isinstance(spec.eps, (int, float)) \
                or any(v is not None and not isinstance(v, str) for v in (spec.gamma, spec.var)) \
                or (spec.gamma is None) != (spec.var is None):
            # A folded BatchNorm needs both gamma and var; neither when there is none.
            raise TypeError("bad field types in %r" % (state,))
        return spec


def fold_factor(spec, params):
    """The per-channel factor the runtime multiplies the weight by (float32, shape (C,)).

    ``gamma / sqrt(var + eps)`` computed in double and rounded to float32, as
    ``UpdateConvWeightBias`` does; ones when there is no BatchNorm.
    """
    channels = params[spec.weight].shape[0]
    if spec.gamma is None:
        return np.ones(channels, np.float32)
    var = params[spec.var].astype(np.float64)
    gamma = np.ones(channels) if spec.fix_gamma else params[spec.gamma].astype(np.float64)
    return (gamma / np.sqrt(var + float(spec.eps))).astype(np.float32)


def _fold(weight, alpha):
    return weight * alpha.reshape((-1,) + (1,) * (weight.ndim - 1))


def _maxabs(folded):
    flat = folded.reshape(folded.shape[0], -1)
    return np.maximum(np.abs(flat.min(axis=1)), np.abs(flat.max(axis=1))).astype(np.float32)


def _scales(maxabs, channelwise):
    """GetQuantizeScale(kInt8, min, max): 127.5 / max|w| in float32, per channel or tensor."""
    ranges = maxabs if channelwise else np.full_like(maxabs, maxabs.max())
    with np.errstate(divide="ignore"):
        scales = np.where(ranges > 0, _INT8_RANGE / ranges, _ZERO_RANGE_SCALE)
    return scales.astype(np.float32)


def runtime_quantize(spec, params):
    """Emulate the runtime: the int8 weight and the per-channel max|folded weight|."""
    weight = params[spec.weight]
    folded = _fold(weight, fold_factor(spec, params))
    maxabs = _maxabs(folded)
    scales = _scales(maxabs, spec.channelwise)
    q = np.rint(_fold(folded, scales))
    return np.clip(q, -128, 127).astype(np.int8), maxabs


def _anchors(weight, alpha):
    """Per channel, the unfolded weight whose folded magnitude is the channel maximum."""
    flat = np.abs(_fold(weight, alpha)).reshape(weight.shape[0], -1)
    index = flat.argmax(axis=1)
    return weight.reshape(weight.shape[0], -1)[np.arange(weight.shape[0]), index]


def unpack(spec, q, anchors, params):
    """Rebuild fp32 weights that the runtime quantizes back to exactly ``q``.

    Parameters
    ----------
    spec : PackSpec
    q : numpy.ndarray of int8, shape (C_out, ...)
    anchors : numpy.ndarray of float32, shape (C_out,)
    params : dict of str to numpy.ndarray
        Holds the BatchNorm parameters named by ``spec`` (not the weight).

    Returns
    -------
    numpy.ndarray of float32, the shape of ``q``
    """
    channels = q.shape[0]
    alpha = fold_factor(spec, {**params, spec.weight: q})
    folded_anchor = anchors * alpha
    maxabs = np.abs(folded_anchor).astype(np.float32)
    scales = _scales(maxabs, spec.channelwise)
    qf = q.reshape(channels, -1).astype(np.float32)
    target = np.clip(qf / scales[:, None], -maxabs[:, None], maxabs[:, None]).astype(np.float32)
    # Values at the edge of the range are the anchor itself (or its negation): their fold
    # is then exactly +-M, never one ulp above it.
    sign_a = np.where(folded_anchor < 0, -1, 1).astype(np.float32)
    signed_anchor = (anchors * sign_a)[:, None]            # folds to +M
    at_edge = np.abs(target) >= maxabs[:, None]
    # Where q is most extreme (-128 before 127 before -127, as the runtime's rounding of
    # +-M gives them) the anchor goes, so that each channel's maximum is reproduced.
    key = np.abs(qf) * 2 + (qf > 0)
    first = key.argmax(axis=1)
    at_edge[np.arange(channels), first] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        unfolded = np.where(alpha[:, None] != 0, target / alpha[:, None], 0).astype(np.float32)
    edge = np.where(qf < 0, -signed_anchor, signed_anchor).astype(np.float32)
    return np.where(at_edge, edge, unfolded).astype(np.float32).reshape(q.shape)


def pack(spec, params, *, bias_bound=None, data_scale_bound=1.0):
    """Pack one weight as int8, or say why it must stay fp32.

    Parameters
    ----------
    spec : PackSpec
    params : dict of str to numpy.ndarray
        fp32 parameters of the layer (weight, BatchNorm, bias).
    bias_bound : numpy.ndarray, shape (C_out,), optional
        An upper bound of ``|folded bias|`` per channel (None: the layer has no bias).
    data_scale_bound : float
        An upper bound of the layer's input scale (``255 / smallest calibrated range``).
        With ``bias_bound`` it tells whether the runtime's bias-overflow guard, which
        lowers the scale, could fire; such layers are kept in fp32.

    Returns
    -------
    (q, anchors) : (numpy.ndarray of int8, numpy.ndarray of float32), or None
        None when the layer must be stored in fp32 (the reason is logged).
    """
    weight = params[spec.weight]
    if weight.dtype != np.float32 or weight.ndim < 2 or weight.shape[0] == 0:
        return None
    alpha = fold_factor(spec, params)
    if not np.all(np.isfinite(alpha)) or not np.all(np.isfinite(weight)):
        return None
    q, maxabs = runtime_quantize(spec, params)
    scales = _scales(maxabs, spec.channelwise)
    if bias_bound is not None and np.any(bias_bound * scales * data_scale_bound > _BIAS_GUARD):
        _log.info("%s kept in fp32: its bias is near the runtime's int32 overflow guard.",
                  spec.weight)
        return None
    anchors = _anchors(weight, alpha).astype(np.float32)
    rebuilt = unpack(spec, q, anchors, params)
    again, again_max = runtime_quantize(spec, {**params, spec.weight: rebuilt})
    if not (np.array_equal(again, q) and np.array_equal(again_max, maxabs)):
        _log.info("%s kept in fp32: its int8 packing would not reproduce the runtime's "
                  "values exactly.", spec.weight)
        return None
    return q, anchors
