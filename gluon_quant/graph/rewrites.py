"""Exact fp32 rewrites of the traced graph (the ``TRACED`` stage of
:data:`gluon_quant.graph.passes.PASSES`), and the parameter changes they need.

Each rewrite computes the same function as the traced graph (up to float rounding) with
operators that have int8 kernels or fuse better; node names are kept where nodes stay, so
that exclusions and reports still name the user's layers. Rewrites that change what a
parameter holds record a :class:`ParamRewrite`; the pipeline applies them to its own copies
of the parameters, never to the user's net.
"""
import collections
import json
import logging
from dataclasses import dataclass
from typing import Tuple

import mxnet as mx
import numpy as np

from .. import _mxnet

__all__ = ["ParamRewrite", "unique_names", "global_adaptive_pools", "fold_dense_batchnorm",
           "fold_parameter_expressions", "masked_softmax", "lift_1d_to_2d", "num_outputs",
           "known_shape", "append_nodes", "reachable", "private_attrs", "same_shape_adds", "BROADCAST_ADDS",
           "numpy_concatenations", "batchnorm_variants", "identity_chains", "attr_ints", "prune",
           "consumers", "FOLDABLE", "parameter_entries", "redirect"]

_log = logging.getLogger(__name__)


def known_shape(shape):
    """``shape`` as a tuple of ints, or None when not known (deferred dimensions are 0)."""
    if not shape:
        return None
    shape = tuple(int(d) for d in shape)
    return shape if all(d > 0 for d in shape) else None


def num_outputs(node):
    """Outputs of an fp32 node (several only for a few operators the passes meet)."""
    attrs = node.get("attrs") or {}
    if node["op"] in ("SliceChannel", "split"):
        return int(attrs.get("num_outputs", 1))
    return 1


@dataclass(frozen=True)
class ParamRewrite:
    """How a rewritten graph's parameter is computed from the net's parameters.

    Attributes
    ----------
    target : str
        The parameter the rewritten graph reads.
    kind : str
        ``'reshape'`` (``sources[0]`` reshaped to ``shape``; an empty shape inserts a unit
        axis 2, for 1-D kernels whose shape was not known at tracing), ``'fold_batchnorm'``
        (``sources`` = dense weight, dense bias or ``''``, gamma, beta, running mean,
        running var; ``part`` says whether ``target`` is the folded weight or bias),
        ``'evaluate'`` (``graph``, a JSON graph over the ``sources`` variables, run once) or
        ``'constant'`` (``values`` reshaped to ``shape``; no sources).
    sources : tuple of str
    shape : tuple of int
    eps : float
    fix_gamma : bool
    part : str
        ``'weight'`` or ``'bias'`` for ``fold_batchnorm``.
    graph : str
        The expression ``'evaluate'`` runs, as MXNet JSON.
    """

    target: str
    kind: str
    sources: Tuple[str, ...]
    shape: Tuple[int, ...] = ()
    eps: float = 0.0
    fix_gamma: bool = False
    part: str = ""
    graph: str = ""
    values: Tuple[float, ...] = ()

    def apply(self, params):
        """Set ``params[target]`` (NDArrays, or numpy arrays) from ``params[sources]``."""
        if self.kind == "constant":
            value = np.asarray(self.values, dtype="float32").reshape(self.shape)
            sample = next(iter(params.values()), None)
            params[self.target] = mx.nd.array(value, ctx=sample.context) \
                if isinstance(sample, mx.nd.NDArray) else value
            return
        if self.kind == "reshape":
            source = params[self.sources[0]]
            # A (1, k) kernel from a (k,) one: axis 2 inserted (the shape may not have been
            # known when the graph was traced: deferred initialization).
            shape = self.shape or tuple(source.shape[:2]) + (1,) + tuple(source.shape[2:])
            params[self.target] = source.reshape(shape)
            return
        if self.kind == "evaluate":
            params[self.target] = _mxnet.evaluate_graph(
                json.loads(self.graph), {n: params[n] for n in self.sources})
            return
        weight, bias, gamma, beta, mean, var = (params[n] if n else None
                                                for n in self.sources)
        scale = 1.0 / (var + self.eps) ** 0.5
        if not self.fix_gamma:
            scale = scale * gamma
        if self.part == "weight":
            params[self.target] = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        else:
            shift = -mean if bias is None else bias - mean
            params[self.target] = shift * scale + beta


def _is_global_adaptive_pool(node):
    if node["op"] != "_contrib_AdaptiveAvgPooling2D":
        return False
    size = (node.get("attrs") or {}).get("output_size", "()")
    return size.replace(" ", "") in ("1", "(1,1)", "(1,)", "[1,1]")


def global_adaptive_pools(graph, context=None):  # pylint: disable=unused-argument
    """Rewrite ``AdaptiveAvgPooling2D(output_size=1)`` as global average ``Pooling``.

    Parameters
    ----------
    graph : dict
        The traced fp32 graph (edited in place).
    context : PassContext, optional

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    rewritten = 0
    for node in graph["nodes"]:
        if _is_global_adaptive_pool(node):
            node["op"] = "Pooling"
            node["attrs"] = {"global_pool": "True", "pool_type": "avg", "kernel": "(1, 1)"}
            rewritten += 1
    if rewritten:
        _log.debug("Rewrote %d AdaptiveAvgPooling2D(1) nodes as global average pooling.",
                   rewritten)
    return {}


def shaped_nodes(graph, context, ops, arity=None):
    """``(nodes, shapes)``: the nodes of ``graph`` running one of ``ops`` (with ``arity``
    inputs, when given) and the graph's inferred shapes (``context.infer_shapes``), or
    ``([], {})`` when there are no such nodes or no shapes to infer them with."""
    found = [n for n in graph["nodes"] if n["op"] in ops
             and (arity is None or len(n["inputs"]) == arity)]
    if not found or context is None or context.infer_shapes is None:
        return [], {}
    return found, context.infer_shapes(graph) or {}


def private_attrs(node, keep=()):
    """A node's private attributes (``__profiler_scope__``, ``__layout__``...) and those named
    in ``keep``: what a node rewritten as another operator takes along."""
    return {k: v for k, v in (node.get("attrs") or {}).items() if k.startswith("__") or k in keep}


#: Additions that broadcast, traced from ``x + y`` in NumPy mode (``_npi_add``) or written
#: as ``F.broadcast_add``: with operands of one shape they are ``elemwise_add``.
BROADCAST_ADDS = frozenset(("_npi_add", "broadcast_add", "broadcast_plus"))


def same_shape_adds(graph, context):
    """Rewrite a broadcasting addition of two same-shaped tensors as ``elemwise_add``.

    oneDNN fuses only ``elemwise_add`` into a convolution as its residual sum, and MXNet
    1.9.1 has an int8 kernel for it alone: a ResNet written in NumPy mode (``Y + X`` is
    ``_npi_add`` there) kept all 8 residual sums fp32 and unfused. Exact: the same
    element-wise sums. Needs the shapes (``context.infer_shapes``); without them nothing
    is rewritten.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    candidates, shapes = shaped_nodes(graph, context, BROADCAST_ADDS, arity=2)
    nodes = graph["nodes"]
    for node in candidates:
        a, b = (shapes.get((nodes[e[0]]["name"], e[1])) for e in node["inputs"])
        if a is not None and a == b:
            node["op"], node["attrs"] = "elemwise_add", private_attrs(node)
    return {}


#: Attributes the BatchNorm variants share with ``BatchNorm`` (SyncBatchNorm's ``key`` and
#: ``ndev`` only say how training synchronizes devices).
_BATCHNORM_ATTRS = ("eps", "momentum", "fix_gamma", "use_global_stats", "output_mean_var",
                    "axis", "cudnn_off")


def batchnorm_variants(graph, context=None):  # pylint: disable=unused-argument
    """Rewrite ``SyncBatchNorm`` as ``BatchNorm``, and ``BatchNormReLU`` as ``BatchNorm``
    followed by ``Activation(relu)``.

    At inference both are exactly these (running statistics, the same inputs: data,
    gamma, beta, running mean and variance), but oneDNN folds only ``BatchNorm`` (and a
    ReLU ``Activation``) into a convolution. A net trained on several GPUs with GluonCV's
    ``norm_layer=SyncBatchNorm``, or written with Gluon's ``nn.BatchNormReLU``, kept each
    normalization fp32 between a dequantize and a quantize (a conv/SyncBatchNorm/ReLU net
    ran at 1.2x fp32 speed instead of the folded int8 convolutions' 12x).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes, relus = graph["nodes"], {}
    for index, node in enumerate(nodes):
        if node["op"] in ("_contrib_SyncBatchNorm", "_contrib_BatchNormWithReLU"):
            if node["op"] == "_contrib_BatchNormWithReLU":
                relus[index] = {"op": "Activation", "name": node["name"] + "_relu",
                                "attrs": {"act_type": "relu"}, "inputs": [[index, 0, 0]]}
            node["op"], node["attrs"] = "BatchNorm", private_attrs(node, _BATCHNORM_ATTRS)
    if relus:
        position = {index: len(nodes) + k for k, index in enumerate(relus)}

        def read(entry):
            return [position[entry[0]], 0, 0] if entry[0] in position and entry[1] == 0 \
                else entry
        for node in nodes:
            node["inputs"] = [read(e) for e in node["inputs"]]
        graph["heads"] = [read(h) for h in graph["heads"]]
        append_nodes(graph, list(relus.values()))
    return {}


def numpy_concatenations(graph, context=None):  # pylint: disable=unused-argument
    """Rewrite NumPy mode's ``np.concatenate`` (``_npi_concatenate``) as ``Concat``.

    MXNet 1.9.1's quantization pass has an int8 kernel for ``Concat`` only: an Inception
    block written in NumPy mode kept its channel concatenations fp32 (a dequantize of
    every branch and a quantize after). Exact: the same operator under its legacy name.
    A negative axis is rewritten where the shapes give the rank; ``axis=None`` is not.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    shapes = None
    for node in nodes:
        attrs = node.get("attrs") or {}
        if node["op"] != "_npi_concatenate" or attrs.get("axis", "0") in ("None", ""):
            continue
        axis = int(attrs.get("axis", "0"))
        if axis < 0:
            if shapes is None:
                shapes = (context.infer_shapes(graph) or {}) if context is not None \
                    and context.infer_shapes else {}
            first = node["inputs"][0]
            shape = shapes.get((nodes[first[0]]["name"], first[1]))
            if shape is None:
                continue
            axis += len(shape)
        node["op"] = "Concat"
        node["attrs"] = dict(private_attrs(node), dim=str(axis),
                             num_args=str(len(node["inputs"])))
    return {}


def consumers(graph):
    """``{(node index, output): [consumer node indices]}`` and the graph heads' entries."""
    found = collections.defaultdict(list)
    for index, node in enumerate(graph["nodes"]):
        for entry in node["inputs"]:
            found[(entry[0], entry[1])].append(index)
    return found


def _add_var(graph, name, shape=None):
    """Append a variable node; return its index."""
    attrs = {"__shape__": str(tuple(shape))} if shape else None
    node = {"op": "null", "name": name, "inputs": []}
    if attrs:
        node["attrs"] = attrs
    graph["nodes"].append(node)
    graph["arg_nodes"].append(len(graph["nodes"]) - 1)
    return len(graph["nodes"]) - 1


def unique_names(graph, context=None):  # pylint: disable=unused-argument
    """Rename operators that share a name: a block called twice (one pooling block used at
    two places) traces two nodes named alike, and MXNet then cannot tell their outputs
    apart ("There are multiple outputs with name ..."). The first keeps its name, later
    ones get ``_call2``, ``_call3``... Returns an empty dict."""
    seen = collections.Counter()
    for node in graph["nodes"]:
        if node["op"] == "null":
            continue
        seen[node["name"]] += 1
        if seen[node["name"]] > 1:
            node["name"] = "%s_call%d" % (node["name"], seen[node["name"]])
    return {}


def is_noop(node):
    """Whether ``node`` passes its input through at inference: ``_copy`` (``F.identity``),
    or a ``Dropout`` outside ``mode='always'`` (Monte Carlo dropout stays)."""
    if node["op"] in ("_copy", "identity"):
        return True
    return node["op"] == "Dropout" and (node.get("attrs") or {}).get("mode") != "always"


def identity_chains(graph, context=None):  # pylint: disable=unused-argument
    """Make a no-op that reads another no-op read that one's input instead: two dropouts
    (or ``F.identity`` calls) in a row become one.

    MXNet 1.9.1's oneDNN fusion removes inference no-ops, and where two or more follow a
    network input in a row, it left a variable reading that input (``data0``): quantizing
    a net starting with two ``nn.Dropout`` layers failed ("The traced graph has inputs
    that are neither network inputs nor parameters"). Exact: each link is the identity.
    Returns an empty dict: the rewrite keeps nothing in fp32.
    """
    nodes, changed = graph["nodes"], False
    for node in nodes:                  # in topological order: a chain's head first
        if not is_noop(node) or not node["inputs"]:
            continue
        source = node["inputs"][0]
        if source[1] == 0 and is_noop(nodes[source[0]]) and nodes[source[0]]["inputs"]:
            node["inputs"][0] = list(nodes[source[0]]["inputs"][0])
            changed = True
    if changed:
        prune(graph)
    return {}


def fold_dense_batchnorm(graph, context):
    """Fold a BatchNorm that follows a dense layer into the dense layer's weight and bias.

    oneDNN fuses convolution + BatchNorm but not FullyConnected + BatchNorm: a tabular MLP
    Dense-BatchNorm-ReLU ran 2.1x *slower* in int8 than in fp32 (the BatchNorm became a
    separate int8 operator between two requantizations). Folded, the dense layer fuses
    with its ReLU and the BatchNorm disappears; in fp32 the result is the same up to
    rounding (``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) * that + beta``).

    Only a BatchNorm over the dense layer's output features (axis 1 after a flattening
    layer, the last axis otherwise: -1, or ``BatchNorm(axis=2)`` over ``(N, T, units)``
    given the shapes) that is the dense output's only consumer is folded.

    Returns
    -------
    dict
        Empty.
    """
    nodes = graph["nodes"]
    readers, shapes = consumers(graph), {}
    heads = {(h[0], h[1]) for h in graph["heads"]}
    if any(n["op"] == "BatchNorm" and nodes[n["inputs"][0][0]]["op"] == "FullyConnected"
           and int((n.get("attrs") or {}).get("axis", 1)) >= 0 for n in nodes) \
            and context is not None and context.infer_shapes is not None:
        shapes = context.infer_shapes(graph) or {}  # before the loop adds weights
    replace = {}
    for index, node in enumerate(nodes):
        if node["op"] != "BatchNorm":
            continue
        src = node["inputs"][0]
        fc = nodes[src[0]]
        if fc["op"] != "FullyConnected" or (src[0], 0) in heads or \
                readers[(src[0], 0)] != [index]:
            continue
        attrs, fc_attrs = node.get("attrs") or {}, fc.get("attrs") or {}
        axis = int(attrs.get("axis", 1))
        flatten = str(fc_attrs.get("flatten", "True")).lower() in ("true", "1")
        rank = len(shapes.get((fc["name"], 0)) or ())
        if axis != (1 if flatten else -1) and (flatten or axis != rank - 1):
            continue
        params = [nodes[e[0]] for e in node["inputs"][1:5]] + \
            [nodes[e[0]] for e in fc["inputs"][1:]]
        if any(p["op"] != "null" for p in params):
            continue
        weight = nodes[fc["inputs"][1][0]]["name"]
        bias = nodes[fc["inputs"][2][0]]["name"] if len(fc["inputs"]) > 2 else ""
        sources = (weight, bias) + tuple(nodes[e[0]]["name"] for e in node["inputs"][1:5])
        common = dict(kind="fold_batchnorm", sources=sources,
                      eps=float(attrs.get("eps", 1e-3)),
                      fix_gamma=str(attrs.get("fix_gamma", "True")).lower() in ("true", "1"))
        new_w, new_b = node["name"] + "_folded_weight", node["name"] + "_folded_bias"
        context.param_rewrites.append(ParamRewrite(target=new_w, part="weight", **common))
        context.param_rewrites.append(ParamRewrite(target=new_b, part="bias", **common))
        w_index = _add_var(graph, new_w, context.param_shapes.get(weight))
        b_index = _add_var(graph, new_b)
        fc["inputs"] = [fc["inputs"][0], [w_index, 0, 0], [b_index, 0, 0]]
        fc_attrs["no_bias"] = "False"
        fc["attrs"] = fc_attrs
        replace[index] = src[0]
    if replace:
        redirect(graph, replace)
        append_nodes(graph, [])     # the new weight variables come before their readers
        _log.debug("Folded %d BatchNorm layer(s) into the dense layers before them.",
                   len(replace))
    return {}


#: Operators that compute the same from the same weights at every call: a chain of them
#: over parameters only is a parameter expression, folded into one parameter.
FOLDABLE = frozenset((
    "Reshape", "reshape", "Flatten", "flatten", "expand_dims", "squeeze", "transpose",
    "SwapAxis", "Concat", "concat", "stack", "_rnn_param_concat", "slice", "slice_axis",
    "Cast", "cast", "_mul_scalar", "_div_scalar", "_plus_scalar", "_minus_scalar",
    "_rdiv_scalar", "_rminus_scalar", "_power_scalar", "sqrt", "rsqrt", "reciprocal",
    "negative", "square", "elemwise_add", "elemwise_mul", "elemwise_sub", "elemwise_div",
    "broadcast_add", "broadcast_mul", "broadcast_sub", "broadcast_minus", "broadcast_div",
    "_npi_add", "_npi_multiply", "_npi_subtract", "_npi_true_divide", "_npi_sqrt",
    "_npi_add_scalar", "_npi_multiply_scalar", "_npi_subtract_scalar",
    "_npi_true_divide_scalar", "_np_reshape", "_npx_reshape", "sum", "mean", "norm", "max",
    "min", "abs", "clip", "exp", "log", "sigmoid", "tanh", "relu", "Activation",
    "softmax", "log_softmax", "L2Normalization", "_maximum_scalar", "_minimum_scalar",
    "_np_transpose", "_np_squeeze", "_np_sum", "_npi_mean", "_npi_norm", "_npi_exp",
    "_npi_log", "_npi_tanh", "_npi_absolute", "_npi_square", "_npi_power_scalar",
    "_npi_reciprocal", "_npi_negative", "_npi_rtrue_divide_scalar", "_npx_relu",
    "_npx_sigmoid"))
#: Where a folded parameter expression may be read: weights and biases of layers whose
#: speed-up was measured (BERT's interleaved q/k/v projection, Gluon's RNN layers, a
#: weight-normalized convolution).
_FOLD_READERS = frozenset(("FullyConnected", "RNN", "Convolution"))


def parameter_entries(graph, params):
    """Per node of ``graph``: whether it computes from the parameters ``params`` alone (one
    of them, or a chain of :data:`FOLDABLE` operators over them only)."""
    constant = []
    for node in graph["nodes"]:
        if node["op"] == "null":
            constant.append(node["name"] in params)
        else:
            constant.append(node["op"] in FOLDABLE and bool(node["inputs"]) and num_outputs(
                node) == 1 and all(constant[e[0]] for e in node["inputs"]))
    return constant


def fold_parameter_expressions(graph, context):
    """Compute once what the graph computes from parameters alone at every call.

    Two kinds of layers build their weights in the graph, from their parameters, at
    every call:

    * Gluon's ``rnn.LSTM``/``GRU``/``RNN`` hand MXNet's ``RNN`` operator the concatenation
      of their per-gate weights (``_rnn_param_concat`` of reshaped parameters). With one
      OpenMP thread that copy took more time than the recurrence itself: 62% of an LSTM
      sentence classifier's fp32 time (2 layers of 256 over 64 steps, batch 1; the RNN 30%),
      27% of an LSTM language model's at batch 1, and the RNN ran faster on a constant
      weight array (mx.profiler, ``benchmarks/nlp.py --profile``).
    * GluonNLP's BERT attention concatenates its query, key and value weights (reshape,
      concat, stack) into the interleaved projection: 11% of int8 BERT-base's time at
      batch 1 x 128; and MXNet quantized that computed weight at run time instead of
      offline.

    Each maximal expression of :data:`FOLDABLE` operators over parameters that a
    ``FullyConnected`` or ``RNN`` reads becomes one parameter (named after the expression's
    last node), computed once on the pipeline's copies by running the expression itself
    (the same values, exactly).

    Returns
    -------
    dict
        Empty.
    """
    nodes = graph["nodes"]
    constant = parameter_entries(graph, context.param_shapes)
    readers = consumers(graph)
    heads = {(h[0], h[1]) for h in graph["heads"]}
    replace = {}
    for index, node in enumerate(nodes):
        users = readers.get((index, 0), [])
        if node["op"] == "null" or not constant[index] or (index, 0) in heads or not any(
                nodes[u]["op"] in _FOLD_READERS for u in users) or not all(
                    constant[u] or nodes[u]["op"] in _FOLD_READERS for u in users):
            continue
        expression = reachable(nodes, [[index, 0, 0]])
        context.param_rewrites.append(ParamRewrite(
            target=node["name"], kind="evaluate",
            sources=tuple(expression["nodes"][i]["name"] for i in expression["arg_nodes"]),
            graph=json.dumps(expression)))
        replace[index] = _add_var(graph, node["name"])
    if replace:
        redirect(graph, replace)
        _log.debug("Folded %d parameter expression(s) into parameters.", len(replace))
    return {}


#: What masked positions become before the softmax: exp(-1e30 - max) is exactly 0.
_MASKED = -1e30


def masked_softmax(graph, context=None):  # pylint: disable=unused-argument
    """Run ``softmax(x, length=l, use_length=True)`` as a masked ``softmax(x)``.

    MXNet 1.9.1 computes a softmax with lengths (BERT's attention over padded sequences:
    ``valid_length`` per query row) with its generic kernel, and a plain softmax with
    oneDNN: on (96, 128, 128) scores, one thread, 14-37 ms against 1 ms, and 22% of
    int8 BERT-base's time at batch 8 x 128 (``benchmarks/nlp.py --profile``). The rewrite
    sets the positions at or past each row's length to -1e30 (``SequenceMask`` over the
    scores seen as ``(rows, last axis)``, then shaped back as the lengths' shape plus the
    last axis), then takes the plain softmax: the masked
    positions get exactly 0 and the others the same values up to float rounding (largest
    difference 1.2e-7). A row of length 0 gets a uniform distribution instead of zeros.

    Only a softmax over the last axis (``axis=-1``) is rewritten; the node keeps its name.

    Returns
    -------
    dict
        Empty.
    """
    nodes = graph["nodes"]
    new = []
    for node in nodes:
        attrs = node.get("attrs") or {}
        if node["op"] != "softmax" or len(node["inputs"]) != 2 or str(
                attrs.get("use_length", "False")).lower() not in ("true", "1") or str(
                attrs.get("axis", "-1")) != "-1":
            continue
        data, length = node["inputs"]
        name, base = node["name"], len(nodes) + len(new)
        new += [
            {"op": "Reshape", "name": name + "_rows", "inputs": [data],
             "attrs": {"shape": "(-1, 0)", "reverse": "True"}},
            {"op": "Reshape", "name": name + "_row_lengths", "inputs": [length],
             "attrs": {"shape": "(-1,)"}},
            {"op": "SequenceMask", "name": name + "_mask",
             "inputs": [[base, 0, 0], [base + 1, 0, 0]],
             "attrs": {"use_sequence_length": "True", "axis": "1", "value": repr(_MASKED)}},
            # (rows, last axis) -> the lengths' shape + last axis. Not reshape_like(data):
            # a second reader of the q.k matmul's output makes MXNet's post-quantization
            # fusion wire it to an output that does not exist.
            {"op": "reshape_like", "name": name + "_masked",
             "inputs": [[base + 2, 0, 0], length],
             "attrs": {"lhs_begin": "0", "lhs_end": "1", "rhs_begin": "0",
                       "rhs_end": "None"}},
        ]
        node["inputs"] = [[base + 3, 0, 0]]
        node["attrs"] = {k: v for k, v in attrs.items() if k != "use_length"}
    if new:
        append_nodes(graph, new)
        _log.debug("Rewrote %d softmax(es) with lengths as masked softmaxes.", len(new) // 4)
    return {}


def redirect(graph, replace):
    """Make every reader of output 0 of node ``old`` read output 0 of ``replace[old]``;
    then drop the nodes nothing reaches any more."""
    for node in graph["nodes"]:
        node["inputs"] = [[replace[e[0]], 0, 0] if e[0] in replace and e[1] == 0 else e
                          for e in node["inputs"]]
    graph["heads"] = [[replace[h[0]], 0, 0] if h[0] in replace and h[1] == 0 else h
                      for h in graph["heads"]]
    prune(graph)


def reachable(nodes, heads, attrs=None):
    """The graph of the nodes ``heads`` reach, in their order as far as it is topological
    (a variable a pass appended moves before its first reader), every entry renumbered.
    The nodes are copied (``nodes`` is left as it is): a sub-graph can be cut out of a
    graph still in use.

    Parameters
    ----------
    nodes : list of dict
    heads : list of entries ``[node, output, version]``
    attrs : dict, optional
        Graph attributes to keep.

    Returns
    -------
    dict
        A JSON graph (``nodes``, ``arg_nodes``, ``heads`` and ``attrs`` if given).
    """
    keep, stack = set(), [h[0] for h in heads]
    while stack:
        i = stack.pop()
        if i not in keep:
            keep.add(i)
            stack.extend(e[0] for e in nodes[i]["inputs"])
    order = _topological(nodes, sorted(keep))
    new = {old: i for i, old in enumerate(order)}
    kept = [dict(nodes[i], inputs=[[new[e[0]]] + list(e[1:]) for e in nodes[i]["inputs"]])
            for i in order]
    graph = {"nodes": kept, "arg_nodes": [i for i, n in enumerate(kept) if n["op"] == "null"],
             "heads": [[new[h[0]]] + list(h[1:]) for h in heads]}
    if attrs:
        graph["attrs"] = attrs
    return graph


def _topological(nodes, indices):
    """``indices`` in an order where every node comes after its inputs: their own order
    where it already is one (each node's unvisited inputs are placed just before it)."""
    order, done = [], set()
    for root in indices:
        stack = [(root, False)]
        while stack:
            index, ready = stack.pop()
            if index in done:
                continue
            if ready:
                done.add(index)
                order.append(index)
                continue
            stack.append((index, True))
            stack.extend((e[0], False) for e in reversed(nodes[index]["inputs"])
                         if e[0] not in done)
    return order


def prune(graph):
    """Drop, in place, the nodes of ``graph`` its heads do not reach."""
    pruned = reachable(graph["nodes"], graph["heads"], graph.get("attrs"))
    graph.pop("node_row_ptr", None)
    graph.update(pruned)


#: Operators that compute the same thing on (N, C, W) and on (N, C, 1, W) data.
_RANK_AGNOSTIC = frozenset(("Activation", "relu", "sigmoid", "tanh", "LeakyReLU", "clip",
                            "Dropout", "_copy", "identity", "softsign", "erf", "abs",
                            "_mul_scalar", "_plus_scalar", "_minus_scalar", "_div_scalar",
                            "_rminus_scalar", "_rdiv_scalar", "_maximum_scalar",
                            "_minimum_scalar", "_power_scalar", "square", "sqrt", "exp"))
_ELEMWISE_BINARY = frozenset(("elemwise_add", "elemwise_mul", "elemwise_sub", "_Plus", "_plus",
                              "_add", "_Mul", "_mul", "_sub", "_Minus", "_minus"))


def attr_ints(attrs, key):
    """A tuple attribute (``"(0, 0, 1, 1)"``) as a list of ints."""
    text = str(attrs.get(key, "()")).strip("()[] ")
    return [int(v) for v in text.split(",") if v.strip() not in ("", "None")]


def _lift_attrs(attrs):
    """The 2-D (1 x k) attributes of a 1-D convolution or pooling."""
    new = dict(attrs)
    for key, fill in (("kernel", 1), ("stride", 1), ("dilate", 1), ("pad", 0)):
        if key in attrs:
            new[key] = str(tuple([fill] + attr_ints(attrs, key)))
    if "layout" in attrs:
        new["layout"] = "NCHW"
    return new


def _is_1d(node):
    attrs = node.get("attrs") or {}
    if node["op"] not in ("Convolution", "Pooling") or attrs.get("layout") not in (
            None, "None", "NCW"):
        return False
    if node["op"] == "Pooling" and str(attrs.get("global_pool", "False")).lower() in (
            "true", "1") and len(attr_ints(attrs, "kernel")) != 1:
        return False
    return len(attr_ints(attrs, "kernel")) == 1


def lift_1d_to_2d(graph, context):
    """Run 1-D convolutions and poolings as 2-D ones over ``(N, C, 1, W)`` data.

    MXNet 1.9.1's oneDNN int8 convolution and pooling take 4-D/5-D data only ("mkldnn
    quantized_conv now supports NCHW or NCDHW", "QuantizedPoolingOp only supports 4D/5D"),
    while a Conv1D written as Conv2D with a (1, k) kernel ran in int8 at 0.99985 cosine
    and about 3x fp32 speed. The data is expanded once (``expand_dims(axis=2)``) and
    stays 4-D through operators that do not care (BatchNorm over channels, activations,
    element-wise sums of lifted tensors, channel concatenation, slices, more 1-D layers),
    so that conv + BatchNorm + ReLU still fuse; it is squeezed back where anything else
    reads it. The weights are reshaped to ``(O, I, 1, k)`` on the pipeline's copies.

    Returns
    -------
    dict
        Empty.
    """
    old = graph["nodes"]
    if not any(_is_1d(n) for n in old):
        return {}
    new_nodes, where, lifted = [], {}, set()   # old (node, out) -> new (node, out)
    read = {}       # node -> the highest output anything reads (an RNN's states, ...)
    for e in [e for n in old for e in n["inputs"]] + list(graph["heads"]):
        read[e[0]] = max(read.get(e[0], 0), e[1])

    def add(node):
        new_nodes.append(node)
        return len(new_nodes) - 1

    def entry(e, want_lifted=False):
        """The new-graph entry of old entry ``e``, squeezed or expanded as asked."""
        key = (e[0], e[1])
        index, out = where[key]
        if key in lifted and not want_lifted:
            squeezed = ("squeeze", key)
            if squeezed not in where:
                where[squeezed] = (add({"op": "squeeze", "name": "%s_squeeze%d" % (
                    old[e[0]]["name"], e[1]), "attrs": {"axis": "(2,)"},
                    "inputs": [[index, out, 0]]}), 0)
            index, out = where[squeezed]
        elif key not in lifted and want_lifted:
            expanded = ("expand", key)
            if expanded not in where:
                where[expanded] = (add({"op": "expand_dims", "name": "%s_expand%d" % (
                    old[e[0]]["name"], e[1]), "attrs": {"axis": "2"},
                    "inputs": [[index, out, 0]]}), 0)
            index, out = where[expanded]
        return [index, out, e[2] if len(e) > 2 else 0]

    reshaped = set()
    for index, node in enumerate(old):
        copy = {k: v for k, v in node.items() if k != "inputs"}
        inputs = node["inputs"]
        lift = False
        if _is_1d(node) and all(old[e[0]]["op"] == "null" for e in inputs[1:]):
            lift = True
            copy["attrs"] = _lift_attrs(node.get("attrs") or {})
            copy["inputs"] = [entry(inputs[0], True)] + [entry(e) for e in inputs[1:]]
            if node["op"] == "Convolution" and len(inputs) > 1:
                weight = old[inputs[1][0]]
                shape = known_shape(context.param_shapes.get(weight["name"]))
                if weight["name"] not in reshaped:
                    reshaped.add(weight["name"])
                    target = shape[:2] + (1,) + shape[2:] if shape else None
                    context.param_rewrites.append(ParamRewrite(
                        target=weight["name"], kind="reshape", sources=(weight["name"],),
                        shape=target or ()))
                    w_new = where[(inputs[1][0], 0)][0]
                    w_attrs = dict(new_nodes[w_new].get("attrs") or {})
                    if target:
                        w_attrs["__shape__"] = str(target)
                    else:
                        w_attrs.pop("__shape__", None)
                    new_nodes[w_new]["attrs"] = w_attrs
        elif inputs and (inputs[0][0], inputs[0][1]) in lifted and (
                node["op"] in _RANK_AGNOSTIC or (
                    node["op"] == "BatchNorm"
                    and int((node.get("attrs") or {}).get("axis", 1)) == 1)):
            lift = True
            copy["inputs"] = [entry(inputs[0], True)] + [entry(e) for e in inputs[1:]]
        elif node["op"] == "slice_axis" and inputs and (inputs[0][0], inputs[0][1]) in lifted:
            lift = True     # a gated 1-D convolution's halves; a time axis moves past H
            axis = int((node.get("attrs") or {}).get("axis", 0)) % 3
            copy["attrs"] = dict(node.get("attrs") or {}, axis=str(axis if axis < 2 else 3))
            copy["inputs"] = [entry(inputs[0], True)]
        elif node["op"] == "Flatten" and inputs and (inputs[0][0], inputs[0][1]) in lifted:
            # (N, C, 1, W) flattens as (N, C, W) does: read it as it is, no squeeze.
            copy["inputs"] = [entry(inputs[0], True)]
        elif node["op"] in _ELEMWISE_BINARY and len(inputs) == 2 and any(
                (e[0], e[1]) in lifted for e in inputs):
            lift = True
            copy["inputs"] = [entry(e, True) for e in inputs]
        elif node["op"] == "Concat" and inputs and all(
                (e[0], e[1]) in lifted for e in inputs) and int(
                    (node.get("attrs") or {}).get("dim", 1)) == 1:
            lift = True
            copy["inputs"] = [entry(e, True) for e in inputs]
        else:
            copy["inputs"] = [entry(e) for e in inputs]
        new_index = add(copy)
        for out in range(max(num_outputs(node), read.get(index, 0) + 1)):
            where[(index, out)] = (new_index, out)
        if lift:
            lifted.add((index, 0))
    graph["nodes"] = new_nodes
    graph["heads"] = [entry(h) for h in graph["heads"]]
    graph["arg_nodes"] = [i for i, n in enumerate(new_nodes) if n["op"] == "null"]
    graph.pop("node_row_ptr", None)
    _log.debug("Lifted %d tensors of 1-D layers to 2-D.", len(lifted))
    return {}


def append_nodes(graph, new_nodes):
    """Append nodes to a JSON graph and put every node back in topological order."""
    nodes = graph["nodes"] + new_nodes
    order, state = [], {}

    def visit(i):
        stack = [(i, False)]
        while stack:
            j, done = stack.pop()
            if done:
                order.append(j)
                continue
            if state.get(j):
                continue
            state[j] = True
            stack.append((j, True))
            for src in reversed(nodes[j]["inputs"]):
                if not state.get(src[0]):
                    stack.append((src[0], False))

    for i in range(len(nodes)):
        visit(i)
    position = {old: new for new, old in enumerate(order)}
    for node in nodes:
        node["inputs"] = [[position[e[0]]] + list(e[1:]) for e in node["inputs"]]
    graph["nodes"] = [nodes[i] for i in order]
    graph["arg_nodes"] = [position[i] for i in graph["arg_nodes"]]
    graph["heads"] = [[position[h[0]]] + list(h[1:]) for h in graph["heads"]]
    graph.pop("node_row_ptr", None)
