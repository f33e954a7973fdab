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
dozen samples, flip near-ties on new inputs).

All corrections are measured in one run of the int8 graph (:func:`compute_corrections`):
every corrected layer is computed twice there, an uncorrected copy whose output is compared
with the fp32 reference (by numpy, in a ``Custom`` operator) and the layer itself, which
reads ``beta + correction``, so the layers after it see the corrected network, exactly as
when each layer is measured on a run of the graph up to it with the earlier corrections
in place (one run per layer: the same corrections bit for bit, at the cost of about two
int8 forward passes over the kept samples instead of one per corrected layer).

The corrections are stored in the calibration table (``meta['bias_correction']``) with
the set of int8 layers they were measured for, so a saved table rebuilds the same int8
model without data.
"""
import collections
import functools
import json
import logging

import mxnet as mx
import numpy as np

from . import _mxnet
from .graph.rewrites import append_nodes, reachable

__all__ = ["linear_layers", "has_activation", "quantized_nodes", "compute_corrections",
           "apply_corrections", "META_KEY", "KeptSamples", "ReferenceTap"]

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
        if target is not None:
            layers.append((node.name, target))
    return layers


class KeptSamples(tuple):
    """Calibration samples (one array per input) and, in :attr:`references`, the fp32
    outputs of the fused graph's linear layers on them, read during calibration.

    ``references`` is ``(fingerprint of the fused graph, {node name: NDArray})`` or None;
    :func:`compute_corrections` uses them instead of running the fp32 graph again.
    """

    references = None


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
    """

    def __init__(self, calibrator, fused_view, limit):
        self._calibrator = calibrator
        self._limit = limit
        self._wanted = {n.name + "_output" for n in fused_view
                        if n.op in _FUSED_LINEAR_OPS and _correctable(n)
                        and n.name not in fused_view.outputs}
        self._shapes, self._chunks, self._count = {}, {}, {}

    @property
    def wanted(self):
        """set of str: the tensor keys (``<node>_output``) to keep."""
        return set(self._wanted)

    def set_shapes(self, shapes):
        """``{tensor key: per-sample shape}`` of the wanted tensors (others are ignored)."""
        self._shapes = {k: tuple(v) for k, v in shapes.items() if k in self._wanted}
        self._chunks = {}
        self._count = {k: 0 for k in self._shapes}

    def collect(self, name, array):
        """Keep the first samples of ``array`` if ``name`` is tapped; pass it on."""
        shape = self._shapes.get(name)
        if shape is not None and self._count[name] < self._limit:
            per = int(np.prod(shape)) if shape else 1
            take = min(self._limit - self._count[name], int(array.size) // max(per, 1))
            if take > 0:
                if name not in self._chunks:
                    # One copy, into MXNet's memory pool (a new numpy array of this size
                    # costs a page fault per 4 KB, then two more copies to an NDArray).
                    self._chunks[name] = _mxnet.host_array((self._limit * per,), np.float32)
                start = self._count[name] * per
                np.copyto(self._chunks[name][1][start:start + take * per],
                          np.ravel(array)[:take * per])
                self._count[name] += take
        self._calibrator.collect(name, array)

    def references(self, count, ctx):
        """``{node name: NDArray (count, ...)}`` of the tensors that kept ``count`` samples."""
        per = {k: int(np.prod(v)) if v else 1 for k, v in self._shapes.items()}
        return {k[:-len("_output")]: self._chunks[k][0][:count * per[k]].reshape(
            (count,) + self._shapes[k]).as_in_context(ctx)
            for k in self._shapes if self._count[k] == count}


#: One layer to correct: its fused node, the parameter its correction is added to, its
#: calibrated range, whether it ends in an activation, and the name of the variable its
#: fp32 reference is fed as.
_Measured = collections.namedtuple(
    "_Measured", ["name", "target", "lo", "hi", "activated", "reference"])
_REFERENCE_SUFFIX = "_bias_reference"
_MEAN_ERROR_OP = "gluon_quant_bias_mean_error"


def _mean_error(f, q, lo, hi, activated):
    """Per-channel (axis 1) mean of ``f - q`` where ``lo < f < hi`` (and ``lo < q < hi``
    for a layer ending in an activation, whose bounds lie at or inside the range); 0 for
    a channel without such positions. float32 numpy arrays in, float32 out."""
    axes = tuple(i for i in range(f.ndim) if i != 1) if f.ndim > 1 else (0,)
    inside = (f > lo) & (f < hi)
    if activated:
        inside &= (q > lo) & (q < hi)
    count = inside.sum(axis=axes)
    delta = np.where(count > 0, ((f - q) * inside).sum(axis=axes) / np.maximum(count, 1), 0.0)
    return delta.astype(np.float32)


class _MeanError(mx.operator.CustomOp):
    """:func:`_mean_error` of a layer's fp32 reference and its (int8) output, in the graph
    (outputs of rank 2 or more).

    numpy, because MXNet's element-wise operators and its ``sum`` over the batch and
    spatial axes run at a fraction of memory speed (on resnet18_v1: 4.6 s in MXNet for
    what numpy does in well under a second). Inputs: the reference and the output, both
    float32.
    """

    def __init__(self, lo, hi, activated):
        super().__init__()
        self._lo, self._hi, self._activated = lo, hi, activated

    def forward(self, is_train, req, in_data, out_data, aux):
        f, q = _mxnet.host_view(in_data[0]), _mxnet.host_view(in_data[1])
        self.assign(out_data[0], req[0], mx.nd.array(
            _mean_error(f, q, self._lo, self._hi, self._activated), ctx=out_data[0].context))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        raise NotImplementedError("bias correction's measurement has no gradient")


@mx.operator.register(_MEAN_ERROR_OP)
class _MeanErrorProp(mx.operator.CustomOpProp):
    """Shapes and types of :class:`_MeanError`: ``(N, C, ...)`` in, ``(C,)`` float32 out."""

    def __init__(self, lo, hi, activated):
        super().__init__(need_top_grad=False)
        self._lo, self._hi, self._activated = float(lo), float(hi), activated == "True"

    def list_arguments(self):
        return ["reference", "output"]

    def infer_shape(self, in_shape):
        return in_shape, [(in_shape[0][1],)], []

    def infer_type(self, in_type):
        return in_type, [np.float32], []

    def create_operator(self, ctx, shapes, dtypes):
        return _MeanError(self._lo, self._hi, self._activated)


def _plain(x):
    """``x`` in the plain (default) layout, reordered inside the graph.

    A ``Custom`` operator runs asynchronously, after MXNet has handed it its inputs: one
    left in a oneDNN blocked layout is reordered in place when numpy reads it, or
    replaced by a temporary copy that MXNet may free before numpy is done (corrections
    then changed from run to run). Reshaping to 1-D and back reorders it in the graph.
    """
    return mx.sym.reshape_like(mx.sym.reshape(x, shape=(-1,)), x)


@functools.lru_cache(maxsize=2)
def _measurement(quantized):
    """JSON of the graph measuring one layer's correction from its uncorrected output ``q``
    (with ``qmin``/``qmax`` when int8) and fp32 reference ``f``: ``[delta, beta + delta]``;
    the layer's range goes into the attributes of its ``Custom`` node."""
    f, q = mx.sym.var("f"), mx.sym.var("q")
    if quantized:   # dequantized by MXNet, as its taps of int8 outputs are
        q = mx.sym.contrib.dequantize(q, mx.sym.var("qmin"), mx.sym.var("qmax"),
                                      out_type="float32")
    delta = mx.sym.Custom(f, _plain(q), op_type=_MEAN_ERROR_OP, lo="0", hi="0",
                          activated="False")
    return mx.sym.Group([delta, mx.sym.var("beta") + delta]).tojson()


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
        A JSON graph whose inputs are the final graph's plus one reference variable per
        layer, and whose outputs are the corrections, in the order of ``layers``.
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
        out = node["name"] + "_output"
        quantized = dtypes.get(out, dtypes.get(out + "0")) in ("int8", "uint8")
        # MXNet's quantized operators output (data, min, max).
        bound = {"q": [probe, 0], "qmin": [probe, 1], "qmax": [probe, 2],
                 "beta": node["inputs"][slot][:2],
                 "f": [add({"op": "null", "name": layer.reference, "inputs": []}), 0]}
        sub = json.loads(_measurement(quantized))
        for member in sub["nodes"]:
            if member["op"] == "Custom":
                member["attrs"].update(lo=repr(layer.lo), hi=repr(layer.hi),
                                       activated=str(layer.activated))
        entry = {}
        for i, member in enumerate(sub["nodes"]):
            if member["op"] == "null":
                entry[i] = bound[member["name"]]
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
    references : dict of str to NDArray, optional
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
        reference = mx.sym.Group([_plain(internals[name + "_output"]) for name in missing])
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
        lo, hi = table.get(name + "_output", (-np.inf, np.inf))
        kept.append(_Measured(name, target, float(lo), float(hi), name in activated,
                             name + _REFERENCE_SUFFIX))
    if not kept:
        return {}
    dtypes = _mxnet.infer_output_dtypes(final, {n: "float32" for n in input_names})
    graph = _correction_graph(_mxnet.graph_json(final), kept, dtypes)
    names = list(input_names) + [m.reference for m in kept]
    block = _mxnet.symbol_block(_mxnet.load_graph(graph), names, params, ctx, trainable=False)
    deltas = _mxnet.run_block(block, list(inputs) + [known[m.name] for m in kept],
                              "Bias correction (int8 graph)")
    corrections = {m.target: [float(v) for v in d.asnumpy()] for m, d in zip(kept, deltas)}
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

