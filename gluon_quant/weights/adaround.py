"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"): choose, for every int8 weight, whether to round down or up so that each
layer's output on calibration data stays closest to fp32.

Rounding to nearest minimizes each weight's own error, not the layer's output error. For
each quantized layer, with ``x = w * scale`` on the runtime's grid, the weight is
``(floor(x) + h(V)) / scale`` with ``h`` a rectified sigmoid; ``V`` is optimized (Adam,
numpy, manual gradients) to minimize the mean squared error of the layer's output
(after its ReLU / ReLU6 when it has one) on patches of the layer's fp32 input from the
calibration samples, plus a regularizer ``lambda * sum(1 - |2h - 1|^beta)`` that drives
every ``h`` to 0 or 1 while ``beta`` anneals from 20 to 2. A layer whose result is not
better than nearest rounding on all its patches keeps nearest rounding.

oneDNN's int8 layers take fp32 weights and round them themselves (fold the BatchNorm,
``rint(w * 127.5 / max|w|)`` per channel; :mod:`gluon_quant._packing`). So the result is
handed over as fp32 weights that lie on that grid: ``q / scale`` unfolded by the
BatchNorm factor, with each channel's largest weight (which sets the scale) kept exactly
as it is, so that the runtime's own rounding gives back the chosen ``q`` bit for bit
(checked here with the runtime's emulation; a layer where it would not keeps nearest).

The choices are stored in the calibration table (``meta['adaround']``: per weight, the
"rounded up" bits, packed and compressed) so a saved table rebuilds the same weights.
"""
import base64
import logging
import zlib

import mxnet as mx
import numpy as np

from .. import _mxnet, _packing
from .layers import as_numpy, find_layers, input_entry_name

__all__ = ["eligible_layers", "compute", "apply", "reconstruction_error", "META_KEY"]

_log = logging.getLogger(__name__)

#: Table meta key: ``{"nodes": [...], "weights": {weight: base64 bits}}``.
META_KEY = "adaround"

_ZETA, _GAMMA = 1.1, -0.1
#: Optimization budget per layer: steps, patches sampled per step, patches kept.
ITERATIONS = 200
_BATCH = 128
_PATCHES = 1024
_WARMUP = 0.2
_LAMBDA = 100.0
_LR = 0.1
#: Fewer input rows than this (a dense layer on a few samples) would overfit: nearest.
_MIN_PATCHES = 256
#: Layers whose inputs one forward pass over the samples computes.
_LAYERS_PER_PASS = 8


def _flag(value, default):
    if value is None:
        return default
    return str(value).strip().lower() in ("true", "1")


def eligible_layers(fused_graph, final_graph):
    """``[(Layer, PackSpec)]``: fused 2-D convolutions and dense layers that run in int8 in
    ``final_graph`` with fp32 weights (read by no other node) the runtime quantizes itself."""
    final = {n["name"]: n for n in final_graph["nodes"]}
    nodes = fused_graph["nodes"]
    readers = {}
    for node in nodes:
        for src, _, _ in node.get("inputs", []):
            readers[nodes[src]["name"]] = readers.get(nodes[src]["name"], 0) + 1
    out = []
    for layer in find_layers(fused_graph):
        if readers.get(layer.weight) != 1:
            continue        # a shared weight: its other readers would change too
        node = final.get("quantized_" + layer.name)
        if node is None or not _flag((node.get("attrs") or {}).get("quantized"), False):
            continue
        if layer.kind == "conv" and len(dict(layer.conv).get("kernel", ())) != 2:
            continue
        attrs = node.get("attrs") or {}
        # oneDNN's convolution: per channel exactly when it requantizes its output (a
        # grouped one without a range outputs int32: graph.guards.grouped_per_tensor)
        channelwise = _flag(attrs.get("weight_channelwise_scale"), "max_calib_range" in attrs) \
            if layer.kind == "conv" else _flag(attrs.get("channel_wise_quantize"), False)
        spec = _packing.PackSpec(layer.weight, channelwise, gamma=layer.gamma, var=layer.var,
                                 eps=layer.eps, fix_gamma=layer.fix_gamma)
        out.append((layer, spec))
    return out


def _grid(spec, params):
    """``x = folded * scale`` (float32), the fold factor, and the fixed elements (each
    channel's extreme weight, and those whose choices leave [-127, 127])."""
    weight = params[spec.weight]
    alpha = _packing.fold_factor(spec, params)
    folded = weight * alpha.reshape((-1,) + (1,) * (weight.ndim - 1))
    flat = folded.reshape(weight.shape[0], -1)
    maxabs = np.abs(flat).max(axis=1).astype(np.float32)
    ranges = maxabs if spec.channelwise else np.full_like(maxabs, maxabs.max())
    with np.errstate(divide="ignore"):
        scale = np.where(ranges > 0, np.float32(127.5) / ranges, 0).astype(np.float32)
    x = flat * scale[:, None]
    fixed = np.zeros(flat.shape, bool)
    if spec.channelwise:
        fixed[np.arange(flat.shape[0]), np.abs(flat).argmax(axis=1)] = True
    else:
        fixed.reshape(-1)[np.abs(flat).argmax()] = True
    low = np.floor(x)
    fixed |= (low < -127) | (low + 1 > 127) | (scale[:, None] == 0) | (alpha[:, None] == 0)
    return x, low, scale, alpha, fixed


def _rebuild(spec, params, up):
    """fp32 weights the runtime rounds to ``floor(x) + up`` (fixed elements unchanged)."""
    weight = params[spec.weight]
    x, low, scale, alpha, fixed = _grid(spec, params)
    q = low + up.reshape(low.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (q / scale[:, None] / alpha[:, None]).astype(np.float32)
    flat = weight.reshape(weight.shape[0], -1)
    return np.where(fixed, flat, value).astype(np.float32).reshape(weight.shape)


def _nearest_up(spec, params):
    x, low, _, _, _ = _grid(spec, params)
    return (np.rint(x) > low).astype(np.uint8)


def _encode(bits):
    return base64.b64encode(zlib.compress(np.packbits(bits.reshape(-1)).tobytes(), 9)) \
        .decode("ascii")


def _decode(text, size):
    raw = zlib.decompress(base64.b64decode(text.encode("ascii")))
    return np.unpackbits(np.frombuffer(raw, np.uint8))[:size]


def _patches(layer, array, rng, count):
    """Rows of the layer's input as its weight reads them: ``(groups, P, K)`` float32."""
    array = np.asarray(array, np.float32)
    if layer.kind == "dense":
        rows = array.reshape(array.shape[0], -1) if layer.flatten \
            else array.reshape(-1, array.shape[-1])
        pick = rng.choice(rows.shape[0], min(count, rows.shape[0]), replace=False)
        return np.ascontiguousarray(rows[pick][None])
    conv = dict(layer.conv)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (conv["kernel"], conv["stride"], conv["pad"],
                                              conv["dilate"])
    n, c, h, w = array.shape
    # Channels last: each gather below then reads whole contiguous rows.
    padded = np.pad(array.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    total = n * oh * ow
    pick = rng.choice(total, min(count, total), replace=False)
    ni, rest = np.divmod(pick, oh * ow)
    yi, xi = np.divmod(rest, ow)
    patch = np.empty((len(pick), c, kh, kw), np.float32)
    for i in range(kh):           # one (P, C) gather per kernel offset
        for j in range(kw):
            patch[:, :, i, j] = padded[ni, yi * sh + i * dh, xi * sw + j * dw]
    patch = patch.reshape(len(pick), layer.groups, -1).transpose(1, 0, 2)
    return np.ascontiguousarray(patch)


def _forward(patches, weight, bias):
    """``(g, P, O/g)`` outputs of ``(g, P, K)`` patches with a ``(g, O/g, K)`` weight."""
    kernel = np.ascontiguousarray(weight.astype(np.float32).transpose(0, 2, 1))
    return np.matmul(patches, kernel) + bias.reshape(weight.shape[0], 1, -1).astype(np.float32)


def _activate(layer, y):
    if layer.with_sum or layer.act not in ("relu", "relu6"):
        return y, None
    hi = 6.0 if layer.act == "relu6" else np.inf
    return np.clip(y, 0, hi), (y > 0) & (y < hi)


def reconstruction_error(layer, patches, target, weight, bias):
    """Mean squared error of the layer's (activated) output against ``target``."""
    out, _ = _activate(layer, _forward(patches, weight, bias))
    return float(np.mean((out - target) ** 2, dtype=np.float64))


def _held_out_error(layer, spec, params, patches, up):
    """Output error of the layer rounded as ``up`` on ``patches`` (fp32 output as target)."""
    x, low, scale, _, _ = _grid(spec, params)
    shape3 = (layer.groups, x.shape[0] // layer.groups, -1)
    step = np.where(scale == 0, 0, 1.0 / np.where(scale == 0, 1, scale))[:, None]
    bias = layer.folded_bias(params)
    target, _ = _activate(layer, _forward(patches, (x * step).reshape(shape3), bias))
    weight = ((low + up.reshape(low.shape)) * step).reshape(shape3)
    return reconstruction_error(layer, patches, target, weight, bias)


def _optimize(layer, spec, params, patches, rng, iterations):
    """The learned rounding bits of one layer (``up``: uint8, flat)."""
    x, low, scale, _, fixed = _grid(spec, params)
    groups = layer.groups
    shape3 = (groups, x.shape[0] // groups, -1)
    bias = layer.folded_bias(params)
    step = np.where(scale == 0, 0, 1.0 / np.where(scale == 0, 1, scale))[:, None] \
        .astype(np.float32)
    low = low.astype(np.float32)
    target, _ = _activate(layer, _forward(patches, (x * step).reshape(shape3), bias))
    nearest = _nearest_up(spec, params).reshape(x.shape).astype(np.float32)

    def weights(h):
        return ((low + h) * step).reshape(shape3)

    rest = np.clip(x - low, 0.01, 0.99)
    v = (-np.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).astype(np.float32)
    free = ~fixed
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    norm = max(float(np.mean(target ** 2, dtype=np.float64)), 1e-12)
    base = reconstruction_error(layer, patches, target, weights(nearest), bias) / norm
    lam = np.float32(_LAMBDA * base / max(free.sum(), 1))
    warm = int(iterations * _WARMUP)
    count = patches.shape[1]
    for it in range(iterations):
        sig = 1 / (1 + np.exp(-v))
        soft = sig * np.float32(_ZETA - _GAMMA) + np.float32(_GAMMA)
        h = np.where(free, np.clip(soft, 0, 1), nearest)
        pick = np.sort(rng.choice(count, min(_BATCH, count), replace=False))
        p, t = patches[:, pick], target[:, pick]
        out, mask = _activate(layer, _forward(p, weights(h), bias))
        dy = (out - t) * np.float32(2.0 / (out.size * norm))          # (g, B, O/g)
        if mask is not None:
            dy = dy * mask
        dw = np.matmul(np.ascontiguousarray(dy.transpose(0, 2, 1)), p)  # (g, O/g, K)
        grad = dw.reshape(x.shape) * step
        if it >= warm:
            beta = np.float32(20 + (2 - 20) * (it - warm) / max(iterations - warm - 1, 1))
            z = 2 * h - 1
            grad = grad - (2 * lam * beta) * np.abs(z) ** (beta - 1) * np.sign(z)
        grad = grad * (sig * (1 - sig) * np.float32(_ZETA - _GAMMA)) \
            * ((soft > 0) & (soft < 1) & free)
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad * grad
        v = v - np.float32(_LR / (1 - 0.9 ** (it + 1))) * m1 \
            / (np.sqrt(m2 / np.float32(1 - 0.999 ** (it + 1))) + np.float32(1e-8))
    sig = 1 / (1 + np.exp(-v))
    return np.where(free, (sig * (_ZETA - _GAMMA) + _GAMMA) >= 0.5, nearest) \
        .astype(np.uint8).reshape(-1)


def _layer_inputs(fused_symbol, graph, layers, params, inputs, input_names, ctx):
    """The fp32 input of each layer on ``inputs`` (numpy), by layer name."""
    outputs = fused_symbol.get_internals().list_outputs()
    names = {}
    for layer in layers:
        entry = input_entry_name(graph, layer.source, outputs)
        if entry is not None:
            names[layer.name] = entry
    wanted = sorted(set(names.values()))
    if not wanted:
        return {}
    internals = fused_symbol.get_internals()
    group = mx.sym.Group([internals[outputs.index(n)] for n in wanted])   # by name: O(N) each
    block = _mxnet.symbol_block(group, input_names, params, ctx)
    arrays = _mxnet.run_block(block, inputs, "AdaRound (layer inputs)")
    by_entry = {n: a.asnumpy() for n, a in zip(wanted, arrays)}
    return {layer: by_entry[entry] for layer, entry in names.items()}


def compute(*, fused_symbol, final_symbol, params, inputs, input_names, ctx,
            iterations=ITERATIONS, seed=0):
    """AdaRound every eligible layer on the calibration ``inputs``.

    Parameters
    ----------
    fused_symbol, final_symbol : Symbol
        The fused fp32 graph and the final int8 graph.
    params : dict of str to NDArray
        fp32 parameters of the fused graph (not modified).
    inputs : list of NDArray
        Calibration samples, one array per graph input.
    input_names : list of str
    ctx : mxnet.Context
    iterations : int
        Optimization steps per layer.
    seed : int

    Returns
    -------
    dict of str to str
        Weight name -> encoded "rounded up" bits (JSON-safe), for :func:`apply`.
    """
    graph = _mxnet.graph_json(fused_symbol)
    layers = eligible_layers(graph, _mxnet.graph_json(final_symbol))
    rng = np.random.RandomState(seed)
    result, better, acts = {}, 0, {}
    for index, (layer, spec) in enumerate(layers):
        if index % _LAYERS_PER_PASS == 0:
            # The inputs of a few layers at a time: all of them at once would hold every
            # activation of the calibration samples.
            acts = _layer_inputs(fused_symbol, graph, [lay for lay, _ in
                                                       layers[index:index + _LAYERS_PER_PASS]],
                                 params, inputs, input_names, ctx)
        if layer.name not in acts:
            continue
        local = {n: as_numpy(params, n) for n in (layer.weight, layer.bias, layer.gamma,
                                                  layer.beta, layer.mean, layer.var) if n}
        patches = _patches(layer, acts.pop(layer.name), rng, _PATCHES)
        nearest = _nearest_up(spec, local).reshape(-1)
        if patches.shape[1] < _MIN_PATCHES:
            _log.debug("AdaRound %s: %d input rows are too few; nearest rounding.",
                       layer.name, patches.shape[1])
            up = nearest
        else:
            # Learned on three quarters of the rows, kept only if better on the rest.
            split = patches.shape[1] * 3 // 4
            up = _optimize(layer, spec, local, patches[:, :split], rng, iterations)
            err, base = (_held_out_error(layer, spec, local, patches[:, split:], bits)
                         for bits in (up, nearest))
            _log.debug("AdaRound %s: held-out error %.3g (nearest %.3g).", layer.name, err,
                       base)
            if err < base:
                better += 1
            else:
                up = nearest
        if _check(spec, local, up):
            result[spec.weight] = _encode(up)
    _log.info("AdaRound: %d of %d int8 layers rounded better than nearest.", better,
              len(layers))
    return result


def _check(spec, params, up):
    """Whether the runtime, given the rebuilt weights, rounds them to ``floor + up``."""
    rebuilt = _rebuild(spec, params, up)
    q, maxabs, _ = _packing.runtime_quantize(spec, {**params, spec.weight: rebuilt})
    _, low, _, _, _ = _grid(spec, params)
    _, before, _ = _packing.runtime_quantize(spec, params)
    chosen = np.clip(low + up.reshape(low.shape), -128, 127).astype(np.int8)
    ok = np.array_equal(q.reshape(low.shape), chosen) and np.array_equal(maxabs, before)
    if not ok:
        _log.info("AdaRound: %s keeps nearest rounding (the runtime would not reproduce "
                  "the choice exactly).", spec.weight)
    return ok


def apply(fused_graph, final_graph, params, state):
    """``params`` with each stored weight's rounding applied (new arrays).

    Weights of layers that are not int8 in ``final_graph`` are left as they are.
    """
    out = dict(params)
    for layer, spec in eligible_layers(fused_graph, final_graph):
        text = state.get(spec.weight)
        if not isinstance(text, str):
            continue
        local = {n: as_numpy(out, n) for n in (layer.weight, layer.gamma, layer.var) if n}
        size = local[spec.weight].size
        try:
            up = _decode(text, size)
        except (ValueError, zlib.error):
            up = None
        if up is None or up.size != size:
            _log.warning("AdaRound bits of %s do not fit its %d weights; nearest rounding "
                         "is used.", spec.weight, size)
            continue
        value = out[spec.weight]
        out[spec.weight] = mx.nd.array(_rebuild(spec, local, up), ctx=value.context,
                                       dtype=np.float32)
    return out
