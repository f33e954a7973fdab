"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): an exact fp32
rescaling of consecutive layers that evens out their per-channel weight ranges.

For two fused layers A -> B where A's output feeds only B, through no activation or a
ReLU (positively homogeneous: ``relu(x / s) = relu(x) / s`` for ``s > 0``), dividing
A's output channel ``c`` by ``s_c`` and multiplying B's input channel ``c`` by ``s_c``
leaves the network's function unchanged. With ``s_c = sqrt(r1_c / r2_c)``, where ``r1_c``
is the range of A's (BatchNorm-folded) output channel ``c`` and ``r2_c`` that of B's
weights reading channel ``c``, both become ``sqrt(r1_c * r2_c)``. Chains are equalized
by sweeping over all pairs until the scales settle.

Pairs through ReLU6 (``clip(0, 6)``) or any other bounded or non-homogeneous activation
are left alone: scaling a channel would move its clip point, which one scalar ``a_max``
cannot express.

High-bias absorption then moves, where A has a ReLU and a BatchNorm, the part of each
channel that is always positive (``max(0, beta - 3 |gamma|)``, BatchNorm's own estimate
of the pre-activation's mean and spread) out of A's output and into B's bias (or B's
BatchNorm mean). This narrows A's output range; it is exact wherever the pre-activation
stays above that amount (and off at padded borders), so it is the one approximate step.

Scales and shifts are computed in float64 and stored per pair (JSON-safe, in the
calibration table's ``meta['equalization']``); :func:`apply` replays them on fresh fp32
parameters, so a saved table rebuilds the same network.
"""
import logging

import mxnet as mx
import numpy as np

from ..errors import CalibrationTableError
from .layers import as_numpy, consumers, find_layers

__all__ = ["find_pairs", "compute", "apply", "weight_ranges", "META_KEY"]

_log = logging.getLogger(__name__)

#: Table meta key: ``{"pairs": [{"first", "second", "scale": [...], "shift": [...]}]}``.
META_KEY = "equalization"

#: Sweeps over all pairs at most, and the change of scale (log) that counts as settled.
_MAX_SWEEPS = 32
_SETTLED = 1e-4
#: Standard deviations below BatchNorm's mean that high-bias absorption keeps.
_ABSORB_SIGMAS = 3.0


_np = as_numpy


def find_pairs(graph):
    """Consecutive layer pairs ``(A, B)`` that can be equalized exactly.

    A's output feeds only B's data input; A ends in no activation or ReLU, has no fused
    residual sum and no BatchNorm with a fixed gamma; B is a dense layer after a dense
    layer, or a convolution (plain or depthwise) after a convolution.
    """
    layers = find_layers(graph)
    by_index = {layer.index: layer for layer in layers}
    readers = consumers(graph)
    pairs = []
    for second in layers:
        first = by_index.get(second.source[0])
        if first is None or second.source[1] != 0 or readers.get((first.index, 0)) != 1:
            continue
        if first.act not in (None, "relu") or first.with_sum or first.kind != second.kind:
            continue
        if first.gamma is not None and first.fix_gamma:
            continue
        pairs.append((first, second))
    return pairs


def _input_columns(second, params, channels):
    """Maps B's weight to ``(channels, -1)``-shaped reads of each input channel, or None
    when B's grouping is neither plain nor depthwise."""
    weight = _np(params, second.weight)
    if second.groups == 1 and weight.shape[1] == channels:
        return "plain"
    if weight.ndim > 1 and weight.shape[1] == 1 and second.groups == channels \
            and weight.shape[0] % channels == 0:
        return "depthwise"
    return None


def _scale_inputs(weight, layout, factor):
    """B's weight with input channel ``c`` multiplied by ``factor[c]``."""
    if layout == "plain":
        return weight * factor.reshape((1, -1) + (1,) * (weight.ndim - 2))
    per = weight.shape[0] // factor.shape[0]
    return weight * np.repeat(factor, per).reshape((-1,) + (1,) * (weight.ndim - 1))


def _input_ranges(weight, layout, channels):
    """max |w| over everything B reads from each input channel."""
    mag = np.abs(weight)
    if layout == "plain":
        return mag.swapaxes(0, 1).reshape(channels, -1).max(axis=1)
    return mag.reshape(channels, -1).max(axis=1)


def weight_ranges(graph, params):
    """Per pair, the ranges ``(r1, r2)`` of A's folded output channels and of B's folded
    weights per input channel (float64): equalization makes them equal."""
    out = []
    for first, second in find_pairs(graph):
        channels = _np(params, first.weight).shape[0]
        layout = _input_columns(second, params, channels)
        if layout is None:
            continue
        wa = _folded(first, params)
        wb = _folded(second, params)
        out.append((np.abs(wa).reshape(channels, -1).max(axis=1),
                    _input_ranges(wb, layout, channels)))
    return out


def _folded(layer, params):
    weight = _np(params, layer.weight).astype(np.float64)
    alpha = layer.fold(params).astype(np.float64)
    return weight * alpha.reshape((-1,) + (1,) * (weight.ndim - 1))


def compute(graph, params, *, absorb=True):
    """Equalization scales (and absorbed shifts) of every pair.

    Parameters
    ----------
    graph : dict
        The fused fp32 graph (JSON).
    params : dict of str to NDArray or numpy.ndarray
        Its fp32 parameters (not modified).
    absorb : bool
        Also compute high-bias absorption.

    Returns
    -------
    dict
        JSON-safe state for :func:`apply` (empty ``pairs`` when nothing applies).
    """
    pairs = []
    folded = {}
    for first, second in find_pairs(graph):
        channels = _np(params, first.weight).shape[0]
        layout = _input_columns(second, params, channels)
        if layout is None:
            continue
        for layer in (first, second):
            if layer.name not in folded:
                folded[layer.name] = _folded(layer, params)
        pairs.append((first, second, layout, channels))
    totals = {first.name: np.ones(channels) for first, _, _, channels in pairs}
    for _ in range(_MAX_SWEEPS):
        change = 0.0
        for first, second, layout, channels in pairs:
            wa, wb = folded[first.name], folded[second.name]
            r1 = np.abs(wa).reshape(channels, -1).max(axis=1)
            r2 = _input_ranges(wb, layout, channels)
            ok = (r1 > 0) & (r2 > 0) & np.isfinite(r1) & np.isfinite(r2)
            scale = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
            folded[first.name] = wa / scale.reshape((-1,) + (1,) * (wa.ndim - 1))
            folded[second.name] = _scale_inputs(wb, layout, scale)
            totals[first.name] = totals[first.name] * scale
            change = max(change, float(np.abs(np.log(scale)).max(initial=0.0)))
        if change < _SETTLED:
            break
    state = []
    for first, second, layout, channels in pairs:
        scale = totals[first.name]
        shift = np.zeros(channels)
        if absorb and first.act == "relu" and first.gamma is not None \
                and (second.gamma is not None or second.bias is not None):
            beta = _np(params, first.beta).astype(np.float64) / scale
            gamma = _np(params, first.gamma).astype(np.float64) / scale
            shift = np.maximum(0.0, beta - _ABSORB_SIGMAS * np.abs(gamma))
        state.append({"first": first.name, "second": second.name,
                      "scale": [float(v) for v in scale],
                      "shift": [float(v) for v in shift]})
    moved = sum(1 for p in state if any(v != 1.0 for v in p["scale"]))
    _log.info("Cross-layer equalization: %d layer pairs rescaled, %d with absorbed biases.",
              moved, sum(1 for p in state if any(p["shift"])))
    return {"pairs": state}


def apply(graph, params, state):
    """``params`` with the stored equalization applied (new arrays; the input untouched).

    Raises
    ------
    CalibrationTableError
        The state names layers or channel counts this graph does not have.
    """
    pairs = {(a.name, b.name): (a, b) for a, b in find_pairs(graph)}
    out = dict(params)
    arrays = {}

    def get(name):
        if name not in arrays:
            arrays[name] = _np(out, name).astype(np.float64)
        return arrays[name]

    entries = state.get("pairs") if isinstance(state, dict) else None
    if not isinstance(entries, list):
        raise CalibrationTableError("The table's equalization entry must be a dict with a "
                                    "list of pairs, got %r." % (state,))
    for entry in entries:
        try:
            first, second = pairs[(entry["first"], entry["second"])]
            scale = np.asarray(entry["scale"], np.float64)
            shift = np.asarray(entry["shift"], np.float64)
        except (KeyError, TypeError, ValueError):
            raise CalibrationTableError(
                "The table's equalization pair %r does not match this graph's layers; "
                "recalibrate this network." % (entry,)) from None
        channels = _np(out, first.weight).shape[0]
        layout = _input_columns(second, out, channels)
        if layout is None or scale.shape != (channels,) or shift.shape != (channels,) \
                or not np.all(scale > 0):
            raise CalibrationTableError(
                "The table's equalization of %s -> %s has %d scales for %d channels (or "
                "non-positive ones); recalibrate this network."
                % (first.name, second.name, scale.size, channels))
        column = (-1,) + (1,) * (get(first.weight).ndim - 1)
        if first.gamma is not None:
            arrays[first.gamma] = get(first.gamma) / scale
            arrays[first.beta] = get(first.beta) / scale - shift
        else:
            arrays[first.weight] = get(first.weight) / scale.reshape(column)
            if first.bias is not None:
                arrays[first.bias] = get(first.bias) / scale - shift
        arrays[second.weight] = _scale_inputs(get(second.weight), layout, scale)
        if np.any(shift):
            # B's pre-BatchNorm output drops by what B reads of the shift.
            moved = _scale_inputs(arrays[second.weight], layout, shift)
            moved = moved.reshape(moved.shape[0], -1).sum(axis=1)
            if second.gamma is not None:
                arrays[second.mean] = get(second.mean) - moved
            else:
                arrays[second.bias] = get(second.bias) + moved
    for name, value in arrays.items():
        ctx = getattr(out[name], "context", None)
        value = value.astype(np.float32)
        out[name] = mx.nd.array(value, ctx=ctx, dtype=np.float32) if ctx is not None else value
    return out
