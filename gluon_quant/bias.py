"""Empirical bias correction: remove the mean error int8 adds to linear layers.

Rounding weights and activations to int8 does not only add noise: per output channel
it also shifts the mean of a layer's output, and these shifts add up along a deep
network (depthwise/projection chains suffer most). For every quantized layer that ends
without an activation (convolution + BatchNorm, projection convolutions, dense
layers), the shift is measured on calibration inputs as the per-channel mean of
``fp32 - int8`` over the positions the calibrated range does not clip, and added to
the layer's BatchNorm beta (or bias). Layers are corrected one after the other, each
measured with the corrections of the earlier ones in place, so no shift is counted
twice. Layers that end in a piecewise-linear activation (ReLU, ReLU6 as ``clip``) are
corrected too, on the positions where both fp32 and int8 outputs lie strictly inside the
activation's linear part (and the calibrated range), where the output error is the
pre-activation error: depthwise convolutions, whose every output channel reads a single
input channel, carry most of the int8 error of MobileNet-style nets (EfficientNet-Lite0
on held-out photos: 34/40 top-1 agreement and cosine 0.9912 with only linear layers
corrected, 38/40 and 0.9962 with the depthwise layers kept fp32).  Other activations
(sigmoid, tanh, leaky ReLU) are left alone: a mean error after them is not a bias error;
so are the network's output layers (a classifier's per-class offsets, fitted on a few
dozen samples, flip near-ties on new inputs), and layers with fewer than
:data:`MIN_POSITIONS` output positions per channel on the kept samples (squeeze-and-
excitation and other per-sample vectors), whose measured means are mostly noise.

All corrections are measured in one run of the int8 graph (:func:`compute_corrections`):
every corrected layer is computed twice there, an uncorrected copy whose output is compared
with the fp32 reference (in the graph: one ``batch_dot`` per layer sums the masked error;
the mask of the reference's positions inside the range comes from numpy, fed without a
copy) and the layer itself, which reads ``beta + correction``, so the layers after it see
the corrected network, as when each layer is measured on a run of the graph up to it with
the earlier corrections in place
(one run per layer: the same corrections to float32 rounding, at the cost of about two
int8 forward passes over the kept samples instead of one per corrected layer).

The corrections are stored in the calibration table (``meta['bias_correction']``) with
the set of int8 layers they were measured for, so a saved table rebuilds the same int8
model without data.
"""
import collections
import functools
import json
import logging
import mmap

import mxnet as mx
import numpy as np

from . import _mxnet
from ._background import Background
from .graph.rewrites import append_nodes, reachable
from .graph.saturation import shifted_bias_name

__all__ = ["linear_layers", "has_activation", "quantized_nodes", "compute_corrections",
           "apply_corrections", "META_KEY", "MIN_POSITIONS", "KeptSamples", "ReferenceTap",
           "REFERENCE_BUDGET"]

_log = logging.getLogger(__name__)

#: Key of the corrections in ``CalibrationTable.meta``: ``{"nodes": [int8 fused nodes],
#: "params": {parameter: [float, ...]}}``.
META_KEY = "bias_correction"

_FUSED_LINEAR_OPS = ("_sg_mkldnn_conv", "_sg_mkldnn_fully_connected")
_ACTIVATIONS = {"Activation", "clip", "LeakyReLU", "relu", "sigmoid", "tanh"}
# Member labels (graph.inspect.describe_op) of activations that are the identity between
# their bounds, so that a mean error measured there is the pre-activation bias error.
_PIECEWISE_LINEAR = {"clip", "relu", "Activation(relu)"}


def has_activation(node):
    """Whether a fused node ends in an activation (of any kind)."""
    return bool(node.member_ops & _ACTIVATIONS)


def _correctable(node):
    labels = [label for _, op, label in node.members if op in _ACTIVATIONS]
    return all(label in _PIECEWISE_LINEAR or label.startswith("clip") for label in labels)


def quantized_nodes(fused_view, final_graph):
    """Sorted names of the fused nodes that run in int8 in ``final_graph``."""
    final_nodes = {n["name"] for n in _mxnet.graph_json(final_graph)["nodes"]}
    return sorted(n.name for n in fused_view if "quantized_" + n.name in final_nodes)


def linear_layers(fused_view, final_graph):
    """``(node, parameter)`` of every quantized fused layer bias correction applies to.

    Layers without an activation and layers ending in ReLU or ReLU6 (``clip``).

    Parameters
    ----------
    fused_view : GraphView
        The fused fp32 graph.
    final_graph : Symbol
        The final int8 graph; only layers quantized there, whose beta or bias is a plain
        fp32 input of it, are returned.
    """
    final_args = set(final_graph.list_arguments())
    final_nodes = {n["name"] for n in _mxnet.graph_json(final_graph)["nodes"]}
    layers = []
    for node in fused_view:
        if node.op not in _FUSED_LINEAR_OPS or not _correctable(node):
            continue
        if node.name in fused_view.outputs:
            # A network output (a classifier's logits): its per-class offsets, fitted on a
            # few dozen calibration samples, flipped near-ties on new inputs (EfficientNet-
            # Lite0 on held-out photos: 54/60 top-1 agreement corrected, 58/60 not).
            continue
        if "quantized_" + node.name not in final_nodes:
            continue
        target = next((i for i in node.inputs if i.endswith("_beta") and i in final_args), None)
        target = target or next((i for i in node.inputs
                                 if i.endswith("_bias") and i in final_args), None)
        shifted = shifted_bias_name("quantized_" + node.name)     # graph/saturation.py
        target = shifted if shifted in final_args else target
        if target is not None:
            layers.append((node.name, target))
    return layers


class KeptSamples(tuple):
    """Calibration samples (one array per input) and, in :attr:`references`, the fp32
    outputs of the fused graph's linear layers on them, read during calibration.

    ``references`` is ``(fingerprint of the fused graph, {node name: numpy array})`` or None;
    :func:`compute_corrections` uses them instead of running the fp32 graph again.
    """

    references = None


def release_references(samples):
    """Drop the fp32 references of the :class:`KeptSamples` ``samples`` (if it has them):
    once a block is built they only speed up measuring corrections for variants of it
    (:func:`compute_corrections` computes them again from the samples), and they may take
    up to :data:`REFERENCE_BUDGET` (2.0 GB for ResNet-101 at 224 px) for the block's life."""
    if getattr(samples, "references", None) is not None:     # a plain tuple has none
        samples.references = None


#: Bytes the fp32 references kept for bias correction may take: as many samples as fit,
#: up to the asked 32 (at least one). The EfficientNet-Lites, ResNet-50 and Inception-v3
#: at their own sizes (24-47 MB a sample) keep all 32; Xception at 299 (200 MB a
#: sample) kept 6.4 GB before (filling it took 51 s of a 56 s calibration), a 1024x2048
#: segmentation net would not have fit in memory.
REFERENCE_BUDGET = 2 << 30


class ReferenceTap:
    """Wraps a calibrator during the calibration pass and keeps the first ``limit`` samples
    of the fp32 outputs of the candidate linear layers, which the pass computes anyway.

    Bias correction needs those outputs on the kept samples as its reference; reading them
    here saves one fp32 pass over the kept samples (the same fused graph on the same
    inputs, so the same values).

    Parameters
    ----------
    calibrator : Calibrator
        Receives every ``collect`` unchanged.
    fused_view : GraphView
        The fused fp32 graph; the layers bias correction may correct (no activation or
        ReLU/ReLU6, not an output) are tapped.
    limit : int
        Samples to keep.
    skip : iterable of str
        Tensor keys whose statistics come from another tensor
        (:func:`~gluon_quant.collect.range_sources`): not tapped, their references are
        computed by bias correction.
    """

    def __init__(self, calibrator, fused_view, limit, skip=()):
        self._calibrator = calibrator
        self._limit = limit
        self._wanted = {n.name + "_output" for n in fused_view
                        if n.op in _FUSED_LINEAR_OPS and _correctable(n)
                        and n.name not in fused_view.outputs} - set(skip)
        self._shapes, self._chunks, self._count = {}, {}, {}
        self._whole, self._whole_data, self._first = {}, {}, None
        self._faulting = None       # the Background touching the buffers' pages

    @property
    def wanted(self):
        """set of str: the tensor keys (``<node>_output``) to keep."""
        return set(self._wanted)

    @property
    def limit(self):
        """int: the samples kept (fewer than asked where they would exceed
        :data:`REFERENCE_BUDGET`; known after :meth:`set_shapes`)."""
        return self._limit

    def set_shapes(self, shapes, whole=None, batch=None, batches=None):
        """``{tensor key: per-sample shape}`` of the wanted tensors (others are ignored).

        ``whole``: ``{tensor key: shape}`` of wanted tensors without the batch axis (the
        per-region layers of a Faster R-CNN head, ``(regions, C, 7, 7)``), kept whole from
        the first batch, of ``batch`` samples: the reference when the kept samples are
        that batch alone. ``batches``: how many batches (of at most ``batch`` samples
        after the first) the data gives, where its length says: no buffer is made for
        samples that never come (SENet-154 calibrated on 8 images waited 10 s for the
        pages of 32 samples' references)."""
        if batch and batches:
            self._limit = max(1, min(self._limit, int(batch) * int(batches)))
        self._shapes = {k: tuple(v) for k, v in shapes.items() if k in self._wanted}
        self._count = {k: 0 for k in self._shapes}
        self._whole = {k: tuple(v) for k, v in (whole or {}).items()
                       if k in self._wanted and k not in self._shapes}
        self._whole_data, self._first = {}, batch
        budget = REFERENCE_BUDGET - 4 * sum(int(np.prod(v)) for v in self._whole.values())
        if budget < REFERENCE_BUDGET // 2:      # the per-sample references come first
            self._whole, budget = {}, REFERENCE_BUDGET
        per_sample = 4 * sum(int(np.prod(shape)) for shape in self._shapes.values())
        if per_sample * self._limit > budget:
            self._limit = max(1, budget // per_sample)
            _log.info("Bias correction keeps %d calibration samples: their fp32 references "
                      "take %.0f MB each.", self._limit, per_sample / 2.0 ** 20)
        # The buffers now, their pages touched on a second thread while the first forward
        # pass runs: filled on fresh 4 KB pages by the copies in collect(), the page faults
        # cost the main thread more than the copy (EfficientNet-Lite0, 0.82 GB at two
        # threads: calibrate() 11.0-14.0 s -> 9.0-11.1 s; resnet18_v1 0.3-0.4 s less).
        self._chunks = {name: np.empty((self._limit,) + shape, np.float32)
                        for name, shape in self._shapes.items()}
        self._faulting = Background(_touch_pages, list(self._chunks.values()))

    def _settle(self):
        """Wait until the buffers' pages are touched (before anything writes or reads them)."""
        if self._faulting is not None:
            faulting, self._faulting = self._faulting, None
            faulting.result()

    def collect(self, name, array):
        """Keep the first samples of ``array`` if ``name`` is tapped; pass it on."""
        self._settle()
        whole = self._whole.get(name)
        if whole is not None and name not in self._whole_data \
                and int(array.size) == int(np.prod(whole)):
            self._whole_data[name] = np.array(array, dtype=np.float32).reshape(whole)  # a copy
        shape = self._shapes.get(name)
        if shape is not None and self._count[name] < self._limit:
            per = int(np.prod(shape)) if shape else 1
            done = self._count[name]
            take = min(self._limit - done, int(array.size) // max(per, 1))
            if take > 0:
                # Copied once, by numpy, into a buffer numpy owns: a view of memory from
                # MXNet's pool, written by numpy, gave references that changed from one
                # quantize() to the next.
                self._chunks[name].reshape(-1)[done * per:(done + take) * per] = \
                    np.ravel(array)[:take * per]
                self._count[name] += take
        self._calibrator.collect(name, array)

    def references(self, count, ctx=None):
        """``{node name: numpy array (count, ...)}``: the first ``count`` samples of the
        tensors that kept at least that many (the kept calibration samples are the first
        ones; where the graph takes only one batch size, the first batch alone). ``ctx`` is
        unused: the references stay on the host, where bias correction computes masks."""
        self._settle()
        found = {k[:-len("_output")]: self._chunks[k][:count]
                 for k in self._shapes if self._count[k] >= count}
        if count == self._first:
            found.update((k[:-len("_output")], v) for k, v in self._whole_data.items())
        return found


def _touch_pages(buffers):
    """Write one value per memory page of each numpy buffer, so that the kernel maps them."""
    for buf in buffers:
        flat = buf.reshape(-1)
        flat[::max(1, mmap.PAGESIZE // flat.itemsize)] = 0


#: One layer to correct: its fused node, the parameter its correction is added to, its
#: calibrated range, whether it ends in an activation, the name of the variable its fp32
#: reference is fed as, and its output channels.
_Measured = collections.namedtuple(
    "_Measured", ["name", "target", "lo", "hi", "activated", "reference", "channels"])
_REFERENCE_SUFFIX = "_bias_reference"
#: Suffixes of the other variables fed per layer: the mask of the positions where the fp32
#: reference lies inside the range (uint8 0/1), and, for a layer without activation, the
#: per-channel count of those positions (at least 1).
_MASK_SUFFIX, _COUNT_SUFFIX = "_mask", "_count"


def _channel_dot(a, b, channels):
    """Per-channel (axis 1) sum of ``a * b`` over the other axes of ``(N, C, ...)`` tensors.

    One ``batch_dot`` of every (sample, channel) row with its partner: a multiply and a sum
    in one pass over both (MXNet's element-wise multiply and ``sum`` over the batch and
    spatial axes took 5-10x as long: they are not vectorized in MXNet 1.9's CPU build)."""
    rows = [mx.sym.reshape(t, shape=(-3, 1, -1)) for t in (a, b)]
    dots = mx.sym.batch_dot(rows[0], rows[1], transpose_b=True)
    return mx.sym.sum(mx.sym.reshape(dots, shape=(-1, channels)), axis=0)


def _channel_count(mask, channels):
    """Per-channel (axis 1) sum of a 0/1 ``(N, C, ...)`` mask: the rows' sums as a product
    with a row of ones (oneDNN's inner product; exact, the counts being below 2**24)."""
    rows = mx.sym.reshape(mask, shape=(-3, -1))
    sums = mx.sym.FullyConnected(rows, mx.sym.ones_like(mx.sym.slice_axis(
        rows, axis=0, begin=0, end=1)), num_hidden=1, no_bias=True)
    return mx.sym.sum(mx.sym.reshape(sums, shape=(-1, channels)), axis=0)


#: A layer is corrected only where each channel's mean error is taken over at least this
#: many output positions (kept samples x spatial positions). Layers whose output is one
#: value per channel and sample (squeeze-and-excitation convolutions after a global
#: pooling, a classifier convolution before ``Flatten``, dense layers) have as many
#: positions as kept samples (32): their means were mostly noise, and correcting them
#: cost accuracy on held-out photos (random-weight mobilenetv3_small logit cosine 0.9735
#: corrected, 0.9765 without them; mobilenetv3_large 0.9363 / 0.9428; the EfficientNet-
#: Lites, mobilenetv2, inceptionv3, squeezenet and ResNets unchanged).
MIN_POSITIONS = 1000

#: Finite stand-ins for unbounded ranges in the graph's scalar attributes.
_FLOAT_MAX = 3.0e38


@functools.lru_cache(maxsize=256)
def _measurement(quantized, lo, hi, activated, channels):
    """JSON of the graph measuring one layer's correction from its uncorrected output ``q``
    (with ``qmin``/``qmax`` when int8, or ``'int32'``: requantized to ``[lo, hi]``), fp32 reference ``f`` and uint8 ``mask`` (1 where
    ``lo < f < hi``, else 0; computed by numpy on the host, where comparisons are 10x
    faster than MXNet's): ``[delta, beta + delta]``, ``delta`` the per-channel (axis 1) mean
    of ``f - q`` where ``mask`` is 1 (and ``lo < q < hi`` for a layer ending in an
    activation, whose bounds lie at or inside the range), 0 for a channel without such
    positions. A layer without activation is fed the count of its positions (``count``,
    at least 1) too.

    In the graph, not in a ``Custom`` operator calling numpy: that one read its inputs
    while MXNet still reordered or reused them, and corrections changed from run to run
    (garbage of 1e32 on a 3-D convolution net).
    """
    f, q = mx.sym.var("f"), mx.sym.var("q")
    mask = mx.sym.Cast(mx.sym.var("mask"), dtype="float32")    # fed as uint8
    if quantized == "int32":    # requantized to the layer's range, as in the network
        q = mx.sym.contrib.requantize(q, mx.sym.var("qmin"), mx.sym.var("qmax"),
                                      min_calib_range=lo, max_calib_range=hi)
        q = mx.sym.contrib.dequantize(q[0], q[1], q[2], out_type="float32")
    elif quantized:     # dequantized by MXNet, as its taps of int8 outputs are
        q = mx.sym.contrib.dequantize(q, mx.sym.var("qmin"), mx.sym.var("qmax"),
                                      out_type="float32")
    error = f - q   # before the sums: f and q are close, their sums would cancel
    if activated:
        lo, hi = max(lo, -_FLOAT_MAX), min(hi, _FLOAT_MAX)
        mask = mask * (q > lo) * (q < hi)
        count = mx.sym.maximum(_channel_count(mask, channels), 1.0)
    else:
        count = mx.sym.var("count")
    delta = _channel_dot(mask, error, channels) / count
    return mx.sym.Group([delta, mx.sym.var("beta") + delta]).tojson()


def _host_inputs(layer, reference):
    """The arrays fed for ``layer`` besides its int8 output: the fp32 reference, the mask
    of the positions inside the range, and, without activation, their per-channel count;
    numpy arrays lent to MXNet without a copy (kept alive by the caller until the run's
    outputs are read)."""
    f = np.ascontiguousarray(reference, dtype=np.float32)
    inside = (f > layer.lo) & (f < layer.hi)
    # uint8 (a view of the booleans), cast in the graph: numpy's cast to float32, into
    # fresh pages, took longer than the whole measurement (EfficientNet-Lite0: 2.1 s).
    arrays = [f, inside.view(np.uint8)]
    if not layer.activated:
        per_row = inside.reshape(f.shape[0], f.shape[1], -1).sum(axis=2)
        arrays.append(np.maximum(per_row.sum(axis=0), 1).astype(np.float32))
    return arrays


def _output_dtype(dtypes, layer):
    """The inferred dtype of ``layer``'s int8 node's output (None when unknown)."""
    out = "quantized_%s_output" % layer.name
    return dtypes.get(out, dtypes.get(out + "0"))


def _fed_name(layer, variable):
    """The correction graph's input name of a measurement variable (``f``, ``mask``,
    ``count``) of ``layer``."""
    suffix = {"f": "", "mask": _MASK_SUFFIX, "count": _COUNT_SUFFIX}[variable]
    return layer.reference + suffix


def _fed_names(layer):
    """The correction graph's input names for ``layer``, in the order of :func:`_host_inputs`."""
    return [_fed_name(layer, v) for v in ("f", "mask", "count")[:2 if layer.activated else 3]]


def _correction_graph(graph, layers, dtypes):
    """The int8 graph rewritten to measure every correction in one run.

    Each layer ``L`` (in topological order) is computed twice from the same inputs: a
    copy with its original parameter gives the uncorrected output the correction is
    measured on, and ``L`` itself reads ``parameter + correction``, so that every layer
    after it sees the corrected network, as when layers are corrected one after the
    other. The cost is one run with the corrected layers computed twice, instead of one
    run of the graph up to each layer.

    Parameters
    ----------
    graph : dict
        The final int8 graph as JSON (modified).
    layers : list of _Measured
    dtypes : dict of str to str
        Output dtypes of the final graph (:func:`gluon_quant._mxnet.infer_output_dtypes`).

    Returns
    -------
    dict
        A JSON graph whose inputs are the final graph's plus the variables of
        :func:`_fed_names` per layer, and whose outputs are the corrections, in the order
        of ``layers``.
    """
    nodes = graph["nodes"]
    index = {n["name"]: i for i, n in enumerate(nodes)}
    new, heads = [], []

    def add(node):
        new.append(node)
        return len(nodes) + len(new) - 1

    for layer in layers:
        node = nodes[index["quantized_" + layer.name]]
        slot = next(j for j, e in enumerate(node["inputs"])
                    if nodes[e[0]]["op"] == "null" and nodes[e[0]]["name"] == layer.target)
        probe = add(dict(node, name=node["name"] + "_uncorrected",
                         inputs=[list(e) for e in node["inputs"]]))
        dtype = _output_dtype(dtypes, layer)    # int32: a grouped convolution's output
        quantized = dtype if dtype == "int32" else dtype in ("int8", "uint8")
        # MXNet's quantized operators output (data, min, max).
        bound = {"q": [probe, 0], "qmin": [probe, 1], "qmax": [probe, 2],
                 "beta": node["inputs"][slot][:2]}
        sub = json.loads(_measurement(quantized, float(layer.lo), float(layer.hi),
                                      bool(layer.activated), int(layer.channels)))
        entry = {}
        for i, member in enumerate(sub["nodes"]):
            if member["op"] == "null":
                entry[i] = bound.get(member["name"]) or [add(
                    {"op": "null", "name": _fed_name(layer, member["name"]), "inputs": []}), 0]
                continue
            entry[i] = [add(dict(member, name="%s_bias_%s" % (layer.name, member["name"]),
                                 inputs=[entry[e[0]][:1] + [entry[e[0]][1] + e[1], 0]
                                         for e in member["inputs"]])), 0]
        delta, corrected = (entry[h[0]][:1] + [entry[h[0]][1] + h[1]] for h in sub["heads"])
        node["inputs"][slot] = corrected + [0]
        heads.append(delta + [0])
    graph["arg_nodes"] = graph["arg_nodes"] + [len(nodes) + i for i, n in enumerate(new)
                                               if n["op"] == "null"]
    graph["heads"] = heads
    append_nodes(graph, new)
    return reachable(graph["nodes"], graph["heads"], graph.get("attrs"))


def compute_corrections(*, fused, final, layers, params, fp32_params, inputs, input_names,
                        table, ctx, references=None, activated=frozenset()):
    """Measure the per-channel mean error of each layer, in order, and return corrections.

    One run of the int8 graph measures them all (see the module doc): each layer is
    measured with the corrections of the layers before it in place, as if corrected one
    after the other.

    Parameters
    ----------
    fused, final : Symbol
        The fused fp32 graph and the final int8 graph.
    layers : list of (str, str)
        From :func:`linear_layers`, in topological order.
    activated : set of str, optional
        The layers of ``layers`` that end in a (piecewise-linear) activation: their mean
        error is taken where both fp32 and int8 outputs lie strictly inside the range.
    params : dict of str to NDArray
        Parameters of the final graph (not modified).
    fp32_params : dict of str to NDArray
        Parameters of the fused fp32 graph: the reference runs with these (the final graph
        renames the weights it reads as int8, ``<weight>_quantize``, e.g. of Embedding).
    inputs : list of NDArray
        One calibration batch per graph input.
    input_names : list of str
    table : CalibrationTable
        Ranges; positions outside a layer's range are left out of its mean.
    ctx : Context
    references : dict of str to numpy.ndarray or NDArray, optional
        fp32 outputs of layers on ``inputs`` already computed (:class:`ReferenceTap`);
        the others are computed here.

    Returns
    -------
    dict
        Parameter name -> list of float corrections (JSON-safe).
    """
    if not layers:
        return {}
    known = dict(references or {})
    missing = [name for name, _ in layers if name not in known]
    if missing:
        internals = fused.get_internals()
        at = {name: i for i, name in enumerate(internals.list_outputs())}
        reference = mx.sym.Group([internals[at[name + "_output"]] for name in missing])
        # symbol_block takes from ``params`` only what the graph uses.
        outs = _mxnet.run_block(_mxnet.symbol_block(reference, input_names, fp32_params, ctx),
                                inputs, "Bias correction (fp32 reference)")
        known.update(zip(missing, outs))
    kept = []
    for name, target in layers:
        ref = known[name]
        if ref.ndim < 2 or (ref.shape[1],) != tuple(params[target].shape):
            _log.debug("Skipping bias correction of %s: output %s, %s %s.", name, ref.shape,
                       target, params[target].shape)
            continue
        positions = ref.size // max(ref.shape[1], 1)
        if positions < MIN_POSITIONS:
            _log.debug("Skipping bias correction of %s: %d positions per channel (< %d).",
                       name, positions, MIN_POSITIONS)
            continue
        lo, hi = table.get(name + "_output", (-np.inf, np.inf))
        kept.append(_Measured(name, target, float(lo), float(hi), name in activated,
                              name + _REFERENCE_SUFFIX, ref.shape[1]))
    dtypes = _mxnet.infer_output_dtypes(final, {n: "float32" for n in input_names})
    typed = [m for m in kept if _output_dtype(dtypes, m) is not None]
    if len(typed) < len(kept):      # measuring an int8 output needs to know it is one
        _log.debug("Skipping bias correction of %s: output dtype unknown.",
                   ", ".join(m.name for m in kept if m not in typed))
    kept = typed
    if not kept:
        return {}
    graph = _correction_graph(_mxnet.graph_json(final), kept, dtypes)
    names, host = list(input_names), []
    for m in kept:
        names += _fed_names(m)
        ref = known[m.name]
        host += _host_inputs(m, ref.asnumpy() if isinstance(ref, mx.nd.NDArray) else ref)
    # The parameters read as they are (the graph adds the corrections to new arrays).
    block = _mxnet.symbol_block(_mxnet.load_graph(graph), names,
                                {k: v.as_in_context(ctx) for k, v in params.items()}, ctx,
                                dtypes=["float32"] * len(input_names)
                                + [a.dtype.name for a in host], copy=False)
    # Lent without a copy on CPU: ``host`` stays alive, unchanged, until the deltas are read.
    lent = [mx.nd.from_numpy(a, zero_copy=True) if ctx == mx.cpu()      # cpu(0) only
            else mx.nd.array(a, ctx=ctx) for a in host]
    deltas = _mxnet.run_block(block, list(inputs) + lent, "Bias correction (int8 graph)")
    corrections = {m.target: [float(v) for v in d.asnumpy()] for m, d in zip(kept, deltas)}
    del host
    _log.info("Bias correction: adjusted %d linear layers.", len(corrections))
    return corrections


def apply_corrections(params, corrections):
    """Return ``params`` with each correction added (float32), the originals untouched."""
    out = dict(params)
    for name, values in corrections.items():
        if name in out:
            delta = np.asarray(values, dtype=np.float32)
            if delta.shape == tuple(out[name].shape):
                out[name] = out[name] + mx.nd.array(delta, ctx=out[name].context)
    return out

