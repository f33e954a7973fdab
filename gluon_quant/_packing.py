"""Storing the weights of oneDNN's fused int8 layers as int8, without changing one output.

MXNet 1.9.1's fused oneDNN operators (``_sg_mkldnn_conv`` and ``_sg_mkldnn_fully_connected``
with ``quantized=true``) refuse int8 weights: they take fp32 weights and, at their first
run, quantize them themselves (``mkldnn_conv.cc``, ``mkldnn_fc.cc``, ``GetWeightScales`` in
``mkldnn_common.h``):

1. BatchNorm is folded in float32: ``alpha = gamma / sqrt(var + eps)`` (in double, rounded
   to float), ``w * alpha`` and ``beta + alpha * (bias - mean)``.
2. The scale is ``127.5 / max|w|`` per output channel when the layer requantizes its
   output (a convolution with ``min/max_calib_range``, a dense layer with
   ``channel_wise_quantize``), else one ``127.5 / max|w|`` for the whole tensor.
3. Per channel, a non-zero bias caps the scale: ``scale = min(scale, 2**30 / |bias| /
   data_scale)``, ``data_scale`` being 127.5 (int8 input) or 255.5 (uint8 input) over the
   input's calibrated magnitude. This guard fires on real networks: BatchNorm leaves
   "dead" channels with ``max|w|`` near 1e-7 and a bias near 1.
4. ``q = clip(rint(w * scale), -128, 127)``.

A file that stores ``q`` must, at load, give back fp32 weights for which the runtime
computes exactly the same scales *and* the same ``q`` (the scales also set the int32
bias and the requantization of the output). :func:`pack` emulates the runtime on the
exported weights and returns, besides ``q``:

* ``factors``: per output channel, ``1 / (scale * alpha)``: ``q * factor`` unfolds to
  the middle of ``q``'s rounding interval, so the runtime's rounding gives ``q`` back;
* ``fix_index`` / ``fix_value``: the few positions whose original fp32 value is kept —
  the one holding each channel's (or the tensor's) maximum, so that ``max|w|``, hence the
  scale and the bias guard, come back bit for bit, and any value that ``q * factor`` would
  push past it.

:func:`unpack` is then one multiplication and one scatter. :func:`pack` runs the runtime's
emulation on the rebuilt weights and returns None (the layer stays fp32) unless it gives
the same maxima and the same ``q``; it also refuses when the bias guard cannot be decided
(the layer's input scale is unknown, or a float rounding could tip it).
"""
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from ._background import Background

__all__ = ["ARRAYS", "OPTIONAL_ARRAYS", "LONG_ROW", "PackSpec", "Packed", "NotPackable", "pack",
           "unpack", "join", "split", "unpack_v1", "fold_factor", "runtime_quantize",
           "data_scale"]

_log = logging.getLogger(__name__)

_INT8_RANGE = np.float32(127.5)       # MXNet's kInt8Range
_UINT8_RANGE = np.float32(255.5)      # MXNet's kUint8Range
_ZERO_RANGE_SCALE = np.float32(2147483647)   # GetQuantizeScale of an all-zero range
_GUARD = np.float32(2 ** 30)          # static_cast<float>(INT32_MAX) / 2
#: Relative distance from the guard's threshold (or from a rounding boundary) under
#: which float error in the emulation could change the result: such layers stay fp32.
_MARGIN = 1e-4
#: Relative distance from a .5 rounding boundary under which a guarded channel's weight
#: could round the other way if the runtime's scale were one float step off.
_ROUNDING_MARGIN = 1e-6


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
    bias, beta, mean : str or None
        The layer's bias and BatchNorm shift, which the runtime folds into the bias that
        its overflow guard reads (all None: the layer has no bias).
    weight_adjust : float
        What oneDNN multiplies the scales by when it quantizes the weights: 0.5 for a
        convolution with int8 (signed) input where its int8 kernels sum pairs in int16
        (no VNNI: its ``scale_adjust``, ``q = rint(w * scale * 0.5)``), else 1.
    """

    weight: str
    channelwise: bool
    gamma: Optional[str] = None
    var: Optional[str] = None
    eps: float = 0.0
    fix_gamma: bool = False
    bias: Optional[str] = None
    beta: Optional[str] = None
    mean: Optional[str] = None
    weight_adjust: float = 1.0

    def to_dict(self):
        """JSON-safe form of the fields export format 1.0 stored."""
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


class Packed(NamedTuple):
    """One weight as stored; :func:`unpack` rebuilds it.

    ``q``: int8, the weight's shape. ``anchors``: float32 per output channel, a value
    whose fold is ``+max|folded weight|``. ``factor_index`` / ``factor_value``: the
    channels whose factor is not ``anchor / 127.5`` (tensor-wise scales, bias guard)
    and their factors. ``fix_index`` / ``fix_value``: flat indices of values kept as
    they were, and those values.
    """

    q: np.ndarray
    anchors: np.ndarray
    factor_index: np.ndarray
    factor_value: np.ndarray
    fix_index: np.ndarray
    fix_value: np.ndarray


def data_scale(maxabs, unsigned):
    """``GetQuantizeScale`` of an input: 255.5 (uint8) or 127.5 (int8) over its magnitude."""
    maxabs = np.float32(maxabs)
    if maxabs == 0:
        return _ZERO_RANGE_SCALE
    return np.float32((_UINT8_RANGE if unsigned else _INT8_RANGE) / maxabs)


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


def _folded_biases(spec, params, alpha):
    """The bias the guard reads, as the runtime computes it: one float32 array per way a
    compiler may evaluate ``beta + alpha * (bias - mean)`` (with or without a fused
    multiply-add); empty when the layer has no bias."""
    bias = None if spec.bias is None else params[spec.bias].astype(np.float32)
    if spec.beta is None:
        return [] if bias is None else [bias]
    beta, mean = params[spec.beta].astype(np.float32), params[spec.mean].astype(np.float32)
    if bias is None:
        plain = beta - alpha * mean
        fused = beta.astype(np.float64) - alpha.astype(np.float64) * mean
    else:
        diff = bias - mean
        plain = beta + alpha * diff
        fused = beta.astype(np.float64) + alpha.astype(np.float64) * diff
    return [plain.astype(np.float32), fused.astype(np.float32)]


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


def _guarded(scales, bias, in_scale):
    """GetWeightScales' cap ``min(scale, INT32_MAX / 2 / bias / data_scale)``, per channel."""
    with np.errstate(divide="ignore"):
        cap = (_GUARD / np.abs(bias)).astype(np.float32) / np.float32(in_scale)
    return np.where((bias != 0) & (cap < scales), cap, scales).astype(np.float32)


def _quantize(folded, scales):
    q = np.rint(_fold(folded, scales))
    return np.clip(q, -128, 127).astype(np.int8)


def runtime_quantize(spec, params, in_scale=None):
    """Emulate the runtime on ``params``.

    Parameters
    ----------
    spec : PackSpec
    params : dict of str to numpy.ndarray
    in_scale : float, optional
        The layer's input scale (:func:`data_scale`); without it the bias guard is not
        applied.

    Returns
    -------
    q : numpy.ndarray of int8
    maxabs : numpy.ndarray of float32, shape (C_out,)
        ``max|folded weight|`` per channel.
    scales : numpy.ndarray of float32, shape (C_out,)
    """
    alpha = fold_factor(spec, params)
    folded = _fold(params[spec.weight], alpha)
    maxabs = _maxabs(folded)
    scales = _scales(maxabs, spec.channelwise)
    biases = _folded_biases(spec, params, alpha)
    if spec.channelwise and biases and in_scale is not None:
        scales = _guarded(scales, biases[0], in_scale)
    return _quantize(folded, scales), maxabs, scales


def _bias_bound(spec, params, alpha):
    """An upper bound of ``|folded bias|`` per channel (None: no bias)."""
    bias = None if spec.bias is None else np.abs(params[spec.bias].astype(np.float64))
    if spec.beta is None:
        return bias
    shift = np.abs(params[spec.mean].astype(np.float64)) + (0 if bias is None else bias)
    return np.abs(params[spec.beta].astype(np.float64)) + np.abs(alpha) * shift


def _layer_scales(spec, params, alpha, maxabs, in_scale, in_scale_bound):
    """The runtime's scales, or a string saying why they cannot be known for sure."""
    scales = _scales(maxabs, spec.channelwise)
    biases = _folded_biases(spec, params, alpha)
    if not spec.channelwise or not biases:
        return scales          # the tensor-wise path has no bias guard
    live = maxabs > 0          # an all-zero channel quantizes to 0 at any scale
    if in_scale is None:
        # The input scale is unknown: the guard must be out of reach at its upper bound.
        with np.errstate(divide="ignore"):
            cap = 2.0 ** 30 / _bias_bound(spec, params, alpha) / float(in_scale_bound)
        if np.any(live & (cap <= scales * (1 + _MARGIN))):
            return "its input scale is unknown and its bias may trigger the runtime's " \
                   "int32 overflow guard"
        return scales
    candidates = [_guarded(scales, bias, in_scale) for bias in biases]
    for other in candidates[1:]:
        differ = live & (other != candidates[0])
        if np.any(differ):
            return "the runtime's bias guard depends on float rounding in %d channel(s)" \
                % int(differ.sum())
    # A guard that fires so near its threshold that float error could decide it.
    with np.errstate(divide="ignore"):
        cap = (_GUARD / np.abs(biases[0])).astype(np.float64) / float(in_scale)
    near = live & (np.abs(cap / scales - 1) < _MARGIN)
    if np.any(near):
        return "its bias is within float error of the runtime's overflow guard"
    return candidates[0]


def _near_half(folded, scales):
    """Whether a value of ``folded * scales`` is within float error of a .5 boundary."""
    x = np.abs(_fold(folded, scales).astype(np.float64))
    return bool(np.any(np.abs(x - np.floor(x) - 0.5) <= _ROUNDING_MARGIN * np.maximum(x, 1.0)))


def pack(spec, params, *, in_scale=None, in_scale_bound=1.0):
    """Pack one weight as int8, or say why it must stay fp32.

    Parameters
    ----------
    spec : PackSpec
    params : dict of str to numpy.ndarray
        fp32 parameters of the layer (weight, BatchNorm, bias).
    in_scale : float, optional
        The layer's exact input scale (:func:`data_scale`), which the runtime's bias
        guard reads; None when it cannot be read off the graph.
    in_scale_bound : float
        An upper bound of the input scale, used when ``in_scale`` is None.

    Returns
    -------
    Packed

    Raises
    ------
    NotPackable
        The layer must be stored in fp32; the message says why.
    """
    weight = params[spec.weight]
    if weight.dtype != np.float32 or weight.ndim < 2 or weight.size == 0:
        _refuse(spec, "it is not a float32 weight of at least 2 dimensions")
    alpha = fold_factor(spec, params)
    if not np.all(np.isfinite(alpha)) or not np.all(np.isfinite(weight)):
        _refuse(spec, "it or its BatchNorm factor holds non-finite values")
    folded = _fold(weight, alpha)
    maxabs = _maxabs(folded)
    scales = _layer_scales(spec, params, alpha, maxabs, in_scale, in_scale_bound)
    if isinstance(scales, str):
        _refuse(spec, scales)
    base = _scales(maxabs, spec.channelwise)
    if np.any(scales != base) and _near_half(folded[scales != base], scales[scales != base]):
        _refuse(spec, "a weight of a guarded channel lies on a rounding boundary")
    qscales = (scales * np.float32(spec.weight_adjust)).astype(np.float32)
    q_rt = _quantize(folded, qscales)          # what the runtime computes
    # Stored in the codes of the unadjusted scale (an int8-input convolution where pairs
    # saturate: twice the runtime's codes, so that the usual factors rebuild values at
    # the middle of its rounding intervals; -128 x 2 and 64 x 2 are kept as fixes)
    q = q_rt if spec.weight_adjust == 1.0 else np.clip(
        np.rint(q_rt.astype(np.float64) / spec.weight_adjust), -128, 127).astype(np.int8)
    channels = weight.shape[0]
    flat = weight.reshape(channels, -1)
    folded_flat = folded.reshape(channels, -1)
    argmax = np.abs(folded_flat).argmax(axis=1)
    anchors = flat[np.arange(channels), argmax]
    anchors = np.where(folded_flat[np.arange(channels), argmax] < 0, -anchors, anchors)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        factors = (1.0 / (scales.astype(np.float64) * alpha)).astype(np.float32)
    factors[~np.isfinite(factors)] = 0
    derived = _derived_factors(anchors)
    expected = q_rt.reshape(channels, -1)
    # A channel whose rows would not round back with the derived factor stores its own
    # (its maximum is not looked at: the anchor is put there).
    wrong = _quantize(_fold(q.reshape(channels, -1) * derived[:, None], alpha),
                      qscales) != expected
    wrong[np.arange(channels), argmax] = False
    odd = np.flatnonzero(np.any(wrong, axis=1) | ~np.isfinite(derived)
                         | ((scales != base) & (maxabs > 0)) | (not spec.channelwise))
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    packed = Packed(q, anchors.astype(np.float32), odd.astype(np.int64), factors[odd],
                    empty_i, empty_f)
    limit = maxabs[:, None] if spec.channelwise else maxabs.max()
    for _ in range(3):
        rebuilt = unpack(packed).reshape(channels, -1)
        again = _fold(rebuilt, alpha)
        # values pushed past the maximum, or rounding elsewhere: keep the original there
        bad = (np.abs(again) > limit) | (_quantize(again, qscales) != expected)
        if not bad.any():
            break
        fix = np.union1d(packed.fix_index, np.flatnonzero(bad))
        packed = Packed(*packed[:4], fix, flat.ravel()[fix])
    # int8 values, an anchor per channel, then (index, value) per exception, against fp32
    size = weight.size + 4 * channels + 8 * (packed.fix_index.size + odd.size)
    if size >= 4 * weight.size:
        _refuse(spec, "%d of its %d values and %d of its %d factors would have to stay "
                "fp32, more than int8 saves" % (packed.fix_index.size, weight.size,
                                                 odd.size, channels))
    again_max = _maxabs(_fold(rebuilt, alpha))
    same_max = np.array_equal(again_max, maxabs) if spec.channelwise \
        else again_max.max() == maxabs.max()
    if not (same_max and np.array_equal(_quantize(_fold(rebuilt, alpha), qscales),
                                        expected)):
        _refuse(spec, "its int8 packing would not reproduce the runtime's values exactly")
    return packed


def _derived_factors(anchors):
    """``anchor / 127.5``: the factor of a channel scaled by its own maximum (the anchor
    folds to ``+max``, so it has the sign of the BatchNorm factor)."""
    return (anchors / _INT8_RANGE).astype(np.float32)


class NotPackable(Exception):
    """Raised by :func:`pack` with the reason a weight must stay fp32."""


def _refuse(spec, reason):
    _log.info("%s kept in fp32: %s.", spec.weight, reason)
    raise NotPackable(reason)


def unpack(packed):
    """Rebuild fp32 weights that the runtime quantizes back to exactly ``packed.q``.

    Parameters
    ----------
    packed : Packed

    Returns
    -------
    numpy.ndarray of float32, the shape of ``packed.q``
    """
    (weight,) = split(join([packed]), [packed.q.shape])
    return weight


_ARRAYS = {"int8": np.int8, "anchors": np.float32, "factor_index": np.int32,
           "factor_value": np.float32, "fix_index": np.int32, "fix_value": np.float32,
           "anchor_at": np.uint8}
#: The arrays :func:`join` returns (stored as ``packed:NAME``).
ARRAYS = tuple(_ARRAYS)
#: Those of :data:`ARRAYS` that files of export format 2 lack: without ``anchor_at``,
#: :func:`split` finds each channel's anchor position from the int8 values.
OPTIONAL_ARRAYS = ("anchor_at",)
#: Rows of at least this many values have their anchor's position stored (2 bytes a
#: channel: under 1% of their int8 values); shorter ones (depthwise kernels) are cheap to
#: search, and storing theirs would cost MobileNets a 1% larger file.
LONG_ROW = 256


def join(packs):
    """Concatenate packed weights into the seven arrays an export stores.

    Returns
    -------
    dict of str to numpy.ndarray
        The fields of :class:`Packed` over all weights, in order: ``int8`` (every ``q``
        flattened), ``anchors`` (every channel's), ``factor_index`` (into ``anchors``),
        ``factor_value``, ``fix_index`` (into ``int8``), ``fix_value``; then
        ``anchor_at``: per channel of the weights with rows of :data:`LONG_ROW` values
        or more, the position in its row where :func:`split` puts the anchor (computed
        here once, instead of at every load; uint16 as byte pairs, or int32, as the
        longest row needs). Indices are int32, or int64 past 2**31 values.
    """
    sizes = np.cumsum([0] + [p.q.size for p in packs], dtype=np.int64)
    rows = np.cumsum([0] + [p.q.shape[0] for p in packs], dtype=np.int64)
    index_type = np.int32 if sizes[-1] < 2 ** 31 else np.int64
    joined = {}
    for number, key in enumerate(_ARRAYS):     # the fields of Packed, in order
        arrays = [np.ravel(p[number]) for p in packs] if key != "anchor_at" \
            else [_anchor_positions(p.q).astype(np.int64) for p in packs
                  if p.q.size // p.q.shape[0] >= LONG_ROW]
        if key in ("factor_index", "fix_index"):
            offsets = rows if key == "factor_index" else sizes
            arrays = [a.astype(np.int64) + offset for a, offset in zip(arrays, offsets)]
        dtype = index_type if key.endswith("_index") else np.int64 if key == "anchor_at" \
            else _ARRAYS[key]
        joined[key] = np.concatenate(arrays).astype(dtype) if arrays \
            else np.zeros(0, dtype)
    joined["anchor_at"] = _offsets_array(
        joined["anchor_at"], max((p.q.size // p.q.shape[0] for p in packs), default=1),
        sum(p.q.shape[0] for p in packs if p.q.size // p.q.shape[0] >= LONG_ROW))
    return joined


def _offsets_array(offsets, length, count):
    """The ``count`` ``offsets`` (each below ``length``) in as few bytes as the NDArray
    file format allows: uint8 (when there are none), or uint16 as little-endian byte
    pairs (the format has no uint16), or int32. :func:`_offsets` reads them back."""
    if count == 0:
        return np.zeros(0, np.uint8)
    if length <= 1 << 16:
        return offsets.astype("<u2").view(np.uint8)
    return offsets.astype(np.int32)


def _offsets(array, count):
    """The ``count`` offsets that :func:`_offsets_array` stored in ``array``, or None
    when its size fits no encoding."""
    if array.size == count:
        return array
    if array.dtype == np.uint8 and array.size == 2 * count:
        return array.view("<u2")
    return None


def _anchor_positions(q):
    """Per row of ``q`` (channels first), where :func:`split` puts the row's anchor
    (:func:`_extremes`), as int32 offsets within the row."""
    rows = q.reshape(q.shape[0], -1)
    first, _ = _extremes(rows.ravel(), np.arange(rows.shape[0]) * rows.shape[1],
                         rows.argmax(axis=1), rows.argmin(axis=1))
    return first.astype(np.int32)


def split(joined, shapes, outs=None, threads=1):
    """Inverse of :func:`join` followed by :func:`unpack`: every weight, rebuilt.

    Per weight, two passes of numpy (the cast to float32, then the multiplication by its
    channel factors in place, block by block so that the cast values are still in the
    cache), which release the GIL: with ``threads=2`` a second thread takes the first
    half of the values. The anchors of all channels are then scattered in at once at
    ``anchor_at``, with the kept values; without ``anchor_at`` (format 2 files) their
    positions are found from the int8 values (each channel's maximum and minimum: two
    more passes).

    Parameters
    ----------
    joined : dict of str to numpy.ndarray
        As :func:`join` returns (checked: sizes, dtypes and indices must agree).
    shapes : list of tuple of int
        The weights' shapes, in order.
    outs : list of numpy.ndarray of float32, optional
        Where to write each weight: C-contiguous arrays of as many values as its shape
        (e.g. views of the memory the runtime will use); new arrays if None.
    threads : int
        1 or 2: how many threads cast and multiply (2 only pays from about a million
        values on: below, the thread costs more than it saves).

    Returns
    -------
    list of numpy.ndarray of float32
        The weights, shaped (views of ``outs`` when given).

    Raises
    ------
    ValueError
        The arrays do not fit ``shapes``.
    """
    check_joined(joined, shapes)
    q, anchors = joined["int8"], joined["anchors"]
    factors = _derived_factors(anchors)
    factors[joined["factor_index"]] = joined["factor_value"]
    fix_index, fix_value = joined["fix_index"], joined["fix_value"]
    if fix_index.size > 1 and np.any(fix_index[1:] < fix_index[:-1]):
        # join writes them sorted; an edited file may not (the last duplicate wins, as
        # in one scatter over all weights)
        order = np.argsort(fix_index, kind="stable")
        fix_index, fix_value = fix_index[order], fix_value[order]
    channels = np.array([shape[0] for shape in shapes], np.int64)
    bounds = np.concatenate([[0], np.cumsum([math.prod(shape) for shape in shapes],
                                            dtype=np.int64)])
    rows = np.concatenate([[0], np.cumsum(channels)])
    if outs is None:
        outs = [np.empty(shape, np.float32) for shape in shapes]
    flats = [out.reshape(-1) for out in outs]
    row_length = np.diff(bounds) // channels
    # Weights whose anchor positions the file stores (none in format 2 files).
    stored = np.zeros(len(shapes), bool) if "anchor_at" not in joined \
        else row_length >= LONG_ROW
    high_at, low_at = np.empty(rows[-1], np.intp), np.empty(rows[-1], np.intp)

    def expand(numbers):
        for number in numbers:
            start, stop = bounds[number], bounds[number + 1]
            low, high = rows[number], rows[number + 1]
            values = q[start:stop].reshape(high - low, -1)
            view = flats[number].reshape(high - low, -1)
            step = max(1, _BLOCK_VALUES // values.shape[1])
            for row in range(0, high - low, step):
                # float32(q) * factor: the cast, then in place (numpy's mixed int8 x
                # float32 multiply buffers the cast: 2.4x slower)
                end = min(row + step, high - low)
                block = view[row:end]
                np.copyto(block, values[row:end])
                block *= factors[low + row:low + end, None]
            if not stored[number]:
                values.argmax(axis=1, out=high_at[low:high])
                values.argmin(axis=1, out=low_at[low:high])

    if threads == 2 and bounds[-1] >= _THREADED_VALUES:
        half = int(np.searchsorted(bounds, bounds[-1] // 2))
        helper = Background(expand, range(half))
        try:
            expand(range(half, len(shapes)))
        finally:
            helper.result()
    else:
        expand(range(len(shapes)))
    # Each channel's anchor goes where its int8 value is most extreme, with that sign.
    first_value = np.repeat(bounds[:-1], channels) + (
        np.arange(rows[-1]) - np.repeat(rows[:-1], channels)) * np.repeat(row_length, channels)
    first, extreme = np.empty(rows[-1], np.intp), np.empty(rows[-1], np.int16)
    known = np.repeat(stored, channels)
    first[~known], extreme[~known] = _extremes(q, first_value[~known], high_at[~known],
                                               low_at[~known])
    if known.any():
        first[known] = _offsets(joined["anchor_at"], int(known.sum()))
        extreme[known] = q[first_value[known] + first[known]]
    signed = np.where(extreme < 0, -anchors, anchors)
    at = first_value - np.repeat(bounds[:-1], channels) + first     # within its weight
    cuts = np.searchsorted(fix_index, bounds)
    for number, flat in enumerate(flats):
        low, high = rows[number], rows[number + 1]
        flat[at[low:high]] = signed[low:high]
        if cuts[number + 1] > cuts[number]:
            flat[fix_index[cuts[number]:cuts[number + 1]] - bounds[number]] = \
                fix_value[cuts[number]:cuts[number + 1]]
    return [out.reshape(shape) for out, shape in zip(outs, shapes)]


#: From how many int8 values on ``split(threads=2)`` uses a second thread.
_THREADED_VALUES = 1 << 20
#: Values cast and multiplied at a time (256 KB of float32: in the second-level cache;
#: resnet18_v1's weights unpacked 20% faster than weight by weight).
_BLOCK_VALUES = 1 << 16


def _extremes(q, row_start, high_at, low_at):
    """Per row of int8 ``q`` (starting at ``row_start``, its maximum at ``high_at`` and
    its minimum at ``low_at``, first occurrences), where the runtime's rounding of
    ``+-max|w|`` lies and its value: the first -128 if present, else the first value of
    largest magnitude, positive on a tie."""
    high = q[row_start + high_at].astype(np.int16)
    low = q[row_start + low_at].astype(np.int16)
    positive = (low != -128) & (high >= -low)
    return np.where(positive, high_at, low_at), np.where(positive, high, low)


def check_joined(joined, shapes):
    """Raise ValueError unless ``joined`` (as :func:`join` returns) fits ``shapes``."""
    sizes = [math.prod(shape) for shape in shapes]
    rows = [shape[0] if len(shape) >= 2 else 0 for shape in shapes]
    if min(rows, default=1) <= 0 or min(sizes, default=1) <= 0:
        raise ValueError("a packed weight has shape %s" % (shapes,))
    for key, dtype in _ARRAYS.items():
        array = joined.get(key)
        if array is None and key in OPTIONAL_ARRAYS:
            continue
        if array is None:
            raise ValueError("packed:%s is missing" % key)
        kind_ok = array.dtype.kind in "iu" if key.endswith("_index") or key == "anchor_at" \
            else array.dtype == dtype
        if not kind_ok or array.ndim != 1:
            raise ValueError("packed:%s is %s of %d dimension(s)"
                             % (key, array.dtype, array.ndim))
    if joined["int8"].size != sum(sizes) or joined["anchors"].size != sum(rows):
        raise ValueError("%d int8 values and %d anchors for weights of %d values and %d "
                         "channels" % (joined["int8"].size, joined["anchors"].size,
                                       sum(sizes), sum(rows)))
    for key, bound in (("factor", sum(rows)), ("fix", sum(sizes))):
        index, value = joined[key + "_index"], joined[key + "_value"]
        if index.size != value.size or (index.size and (index.min() < 0
                                                        or index.max() >= bound)):
            raise ValueError("packed:%s_index does not fit (%d indices, %d values, %d "
                             "slots)" % (key, index.size, value.size, bound))
    anchor_at = joined.get("anchor_at")
    if anchor_at is not None:
        long_rows = [(size // row, row) for size, row in zip(sizes, rows)
                     if size // row >= LONG_ROW]
        lengths = np.repeat([length for length, _ in long_rows],
                            [row for _, row in long_rows]).astype(np.int64)
        offsets = _offsets(anchor_at, lengths.size)
        if offsets is None or (offsets.size and (
                offsets.min() < 0 or np.any(offsets >= lengths))):
            raise ValueError("packed:anchor_at does not fit (%d %s values for the %d "
                             "channels of rows of %d values or more, each below its row's "
                             "length)" % (anchor_at.size, anchor_at.dtype, lengths.size,
                                          LONG_ROW))


def unpack_v1(spec, q, anchors, params):
    """Rebuild a weight stored by export format 1.0 (``int8:`` values and ``anchor:``s).

    Parameters
    ----------
    spec : PackSpec
    q : numpy.ndarray of int8, shape (C_out, ...)
    anchors : numpy.ndarray of float32, shape (C_out,)
        Per channel, the unfolded weight whose folded magnitude is the channel maximum.
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
