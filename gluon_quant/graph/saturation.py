"""uint8 activations kept to 7-bit codes where oneDNN's int8 kernels saturate (no VNNI).

On x86 CPUs without VNNI (no ``avx512_vnni``/``avx_vnni``: Haswell to Skylake, AMD Zen 1-3,
or oneDNN capped below VNNI), oneDNN 2.4.4's int8 convolutions and dense layers multiply
uint8 activations by int8 weights with ``vpmaddubsw``, which adds the products of two
neighbouring input channels into a *saturating* signed 16-bit integer: 255 * 127 * 2 =
64770 > 32767. Measured here (MXNet 1.9.1, AVX2 EPYC): a 1x1 convolution whose uint8 input
and weights sit at their largest codes returned half the right value, and a real
EfficientNet-Lite0 fell from 36 to 31 of 40 held-out photos agreeing with fp32 (logit
cosine 0.9595). For int8 (signed) activations of a convolution oneDNN halves the weights
itself (its ``scale_adjust``); for uint8 ones nothing does, and depthwise convolutions
(one input channel per group) have no pairs.

:func:`seven_bit_inputs` widens the calibrated range of every uint8 tensor such a layer
reads by 255/127, so that values inside the range the calibrator chose get codes <= 127:
127 * 127 * 2 = 32258 fits. The range is widened at the node that sets it (a quantize, a
requantize, the fused layer that wrote it), through the operators that pass a range on
(pooling, flatten, concat, ReLU); every reader of that tensor sees the same, consistent
scale. The cost is one bit of resolution on those tensors only; values beyond the
calibrated range get the other codes instead of being clipped. A ReLU6 convolution's range
is its clip (MXNet cuts values off with the output scale): its readers get a requantized
7-bit copy instead. A dense layer's int8 input is shifted by its range into uint8 (oneDNN
would shift it by 128 itself, which no range keeps from saturating), the bias taking the
shift back; :func:`signed_dense_inputs` keeps fp32 the dense layers that have no
per-channel bias to do that and whose input may be negative.

It runs where the process's kernels saturate (:func:`gluon_quant.kernels.int16_pair_sums`,
a measured probe, not a guess from CPU flags), on the final graph, so a saved int8 model
is widened on the machine that loads it.
"""
import logging

import mxnet as mx

from .guards import entry_dtype
from .inspect import calib_key, is_true
from .rewrites import ParamRewrite, append_nodes

__all__ = ["seven_bit_inputs", "signed_dense_inputs", "shifted_bias_name", "NON_NEGATIVE",
           "RANGE_CARRIERS", "SIGNED_DENSE_REASON", "WIDEN"]

_log = logging.getLogger(__name__)

#: The factor that maps uint8 code 255 onto 127.
WIDEN = 255.0 / 127.0

#: int8 operators whose output range is their data inputs' (no calibrated range of their
#: own) -> how many leading inputs are data (None: all but the trailing min/max pairs).
RANGE_CARRIERS = {
    "_contrib_quantized_pooling": 1,
    "_contrib_quantized_flatten": 1,
    "_contrib_quantized_act": 1,
    "_contrib_quantized_concat": None,
}


SIGNED_DENSE_REASON = (
    "dense layer whose input can be negative, without a bias or with one weight scale "
    "(granularity='tensor'): on this CPU (no VNNI) oneDNN 2.4.4 shifts int8 input to "
    "uint8 and sums pairs of products in saturating int16 (a 2-layer MLP measured 0.98 "
    "output cosine); with no per-channel bias to absorb a shift of its own it runs fp32 "
    "here")

#: Operators whose output is never negative (by ``act_type`` where given) and operators
#: that keep their inputs' sign (None: any attributes): how :func:`signed_dense_inputs`
#: proves a dense layer's input non-negative.
NON_NEGATIVE = {
    "Activation": ("relu", "sigmoid", "softrelu"),
    "relu": None, "sigmoid": None, "softmax": None, "exp": None, "abs": None,
    "square": None, "sqrt": None,
}
_SIGN_KEEPING = frozenset((
    "Pooling", "Flatten", "Reshape", "transpose", "Dropout", "identity", "_copy",
    "BlockGrad", "expand_dims", "squeeze", "slice", "slice_axis", "slice_like",
    "SliceChannel", "Concat", "concat", "elemwise_add", "elemwise_mul", "broadcast_add",
    "broadcast_mul", "_plus", "_mul", "max", "mean", "sum", "UpSampling", "clip"))


def _non_negative(nodes, index, seen):
    """Whether node ``index``'s output is provably never negative."""
    if index in seen:
        return seen[index]
    seen[index] = False                      # cycles cannot occur; guard anyway
    node = nodes[index]
    op, attrs = node["op"], node.get("attrs") or {}
    if op in NON_NEGATIVE:
        acts = NON_NEGATIVE[op]
        result = acts is None or attrs.get("act_type") in acts
    elif op == "clip" and _float(attrs.get("a_min")) >= 0:
        result = True
    elif node.get("subgraphs") and op.startswith("_sg_"):
        sub = node["subgraphs"][0]
        heads = sub.get("heads") or []
        result = bool(heads) and _non_negative(sub["nodes"], heads[0][0], {})
    elif op in _SIGN_KEEPING and node["inputs"]:
        result = all(_non_negative(nodes, e[0], seen) for e in node["inputs"])
    else:
        result = False
    seen[index] = result
    return result


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("-inf")


def signed_dense_inputs(graph, context):
    """Dense layers that stay fp32 where the process's int8 kernels saturate: those whose
    input is not provably non-negative (see the module docstring).

    Parameters
    ----------
    graph : dict
        The fused fp32 graph.
    context : PassContext
        ``int16_pair_sums`` and ``spec.pair_sum_ops``.

    Returns
    -------
    dict of str to str
        Node name -> :data:`SIGNED_DENSE_REASON`.
    """
    if not context.int16_pair_sums or "_sg_mkldnn_fully_connected" not in \
            context.spec.pair_sum_ops:
        return {}
    nodes, seen, found = graph["nodes"], {}, {}
    for node in nodes:
        if node["op"] not in ("_sg_mkldnn_fully_connected", "FullyConnected"):
            continue
        attrs = _subgraph_attrs(node, "FullyConnected") or node.get("attrs") or {}
        shiftable = context.granularity == "channel" and not is_true(attrs.get("no_bias"))
        if not shiftable and not _non_negative(nodes, node["inputs"][0][0], seen):
            found[node["name"]] = SIGNED_DENSE_REASON
    return found


def _subgraph_attrs(node, op):
    return next((m.get("attrs") or {} for sub in node.get("subgraphs") or ()
                 for m in sub["nodes"] if m["op"] == op), {})


def _pairs_summed(node, weight_shape):
    """Whether an int8 fused node's kernel sums pairs of input channels (the readers that
    saturate): every dense layer, every convolution but a depthwise one (one input channel
    per group, as many groups as filters; its weight is ``(filters, 1, ...)``)."""
    conv = _subgraph_attrs(node, "Convolution")
    groups = int(conv.get("num_group", 1))
    if node["op"] != "_sg_mkldnn_conv" or groups == 1:
        return True
    return not (weight_shape and len(weight_shape) > 1 and weight_shape[1] == 1
                and groups == int(conv.get("num_filter", 0)))


def _range_setters(nodes, entry, found, unknown):
    """Collect the nodes that set the range of ``entry`` (through range carriers)."""
    node = nodes[entry[0]]
    attrs = node.get("attrs") or {}
    if "max_calib_range" in attrs:
        found.add(entry[0])
        return
    carrier = RANGE_CARRIERS.get(node["op"])
    if node["op"] in RANGE_CARRIERS:
        count = carrier if carrier is not None else len(node["inputs"]) // 3
        for data in node["inputs"][:count]:
            _range_setters(nodes, data, found, unknown)
    else:
        unknown.add(node["name"])


def _cuts_off(node):
    """Whether a node's calibrated range is also its activation's bound: MXNet 1.9.1 runs
    a convolution + ``clip`` (ReLU6) with no sum by letting the output scale cut values
    off at the range ("output_scale can do the cut off"): widening it loses the clip."""
    return (node["op"] == "_sg_mkldnn_conv" and not is_true((node.get("attrs") or {})
                                                             .get("with_sum"))
            and any(m["op"] == "clip" for sub in node.get("subgraphs") or ()
                    for m in sub["nodes"]))


def _requantized_copy(nodes, reader, entry, high, added, shift=0.0):
    """Insert dequantize -> (+ shift) -> quantize (7-bit codes of ``[0, high + shift]``)
    before ``reader``."""
    base = len(nodes) + len(added)
    name = "%s_%s_7bit" % (reader["name"], nodes[entry[0]]["name"])
    added.append({"op": "_contrib_dequantize", "name": name + "_dequantize",
                  "attrs": {"out_type": "float32"},
                  "inputs": [[entry[0], 0, 0], [entry[0], 1, 0], [entry[0], 2, 0]]})
    if shift:
        added.append({"op": "_plus_scalar", "name": name + "_shift",
                      "attrs": {"scalar": repr(float(shift))}, "inputs": [[base, 0, 0]]})
    added.append({"op": "_contrib_quantize_v2", "name": name,
                  "attrs": {"out_type": "uint8", "min_calib_range": repr(0.0),
                            "max_calib_range": repr(float((high + shift) * WIDEN))},
                  "inputs": [[len(nodes) + len(added) - 1, 0, 0]]})
    copy = len(nodes) + len(added) - 1
    reader["inputs"] = [[copy, e[1], 0] if e[0] == entry[0] and e[1] < 3 else e
                        for e in reader["inputs"]]


def _shifted_bias(nodes, reader, shift, added, context):
    """Read ``bias - shift * sum(weight, axis=1)`` (a new parameter, computed once): the
    dense layer then takes ``x + shift`` and gives the same result."""
    weight, bias = (nodes[e[0]]["name"] for e in reader["inputs"][1:3])
    target = shifted_bias_name(reader["name"])
    expr = _shift_expression(weight, bias, shift)
    context.param_rewrites.append(ParamRewrite(target, "evaluate", (weight, bias),
                                               graph=expr))
    index = len(nodes) + len(added)
    added.append({"op": "null", "name": target, "inputs": []})
    reader["inputs"][2] = [index, 0, 0]


def shifted_bias_name(node):
    """The parameter a shifted dense layer (final-graph node ``node``) reads as its bias:
    bias correction adds its corrections there."""
    return "%s_shifted_bias" % node


def _shift_expression(weight, bias, shift):
    """``bias - shift * sum(weight, axis=1)`` as an MXNet JSON graph."""
    rows = mx.sym.sum(mx.sym.var(weight), axis=1)
    return (mx.sym.var(bias) - rows * float(shift)).tojson()


def seven_bit_inputs(graph, context):
    """Keep the uint8 tensors that pair-summing int8 layers read to 7-bit codes (in place).

    A range that only a calibrated node sets is widened there by 255/127; where one of
    the nodes setting it cuts its activation off at the range (:func:`_cuts_off`), the
    reader gets its own copy instead: the values dequantized and quantized again to 7-bit
    codes (two extra passes over that tensor, where the kernels saturate only).

    Parameters
    ----------
    graph : dict
        The final int8 graph (after post-quantization fusion).
    context : PassContext
        ``int16_pair_sums`` (whether this process's kernels saturate), ``spec``
        (``pair_sum_ops``: the fused operators whose kernels sum pairs), ``ranges`` (the
        table: a range another pass widened already is not widened twice),
        ``param_shapes`` and ``infer_dtypes``.

    Returns
    -------
    dict
        Empty: no node has to stay fp32.
    """
    ops = context.spec.pair_sum_ops
    if not context.int16_pair_sums or not ops or context.infer_dtypes is None:
        return {}
    nodes = graph["nodes"]
    readers = [n for n in nodes if n["op"] in ops and is_true((n.get("attrs") or {})
                                                               .get("quantized"))]
    if not readers:
        return {}
    dtypes = context.infer_dtypes(graph)
    widen, added, unknown = set(), [], set()
    for node in readers:
        weight = nodes[node["inputs"][1][0]]["name"]
        entry = node["inputs"][0]
        dtype = entry_dtype(dtypes, nodes, entry)
        if not _pairs_summed(node, context.param_shapes.get(weight)) \
                or dtype not in ("uint8", "int8") \
                or (dtype == "int8" and node["op"] != "_sg_mkldnn_fully_connected"):
            continue        # an int8 convolution's weights are halved by oneDNN itself
        found = set()
        _range_setters(nodes, entry, found, unknown)
        if not found:
            continue
        if dtype == "int8" or any(_cuts_off(nodes[i]) for i in found):
            high = max(max(abs(float(nodes[i]["attrs"]["max_calib_range"])),
                           abs(float(nodes[i]["attrs"].get("min_calib_range", 0))))
                       for i in found)
            # An int8 input of a dense layer: shifted by its range into uint8, the bias
            # taking the shift back; one without a bias is int8 here only where
            # signed_dense_inputs proved its input non-negative (a ReLU of an int8 sum
            # stays int8): copied as it is.
            shift = high if dtype == "int8" and len(node["inputs"]) == 5 and is_true(
                node["attrs"].get("channel_wise_quantize")) else 0.0
            _requantized_copy(nodes, node, entry, high, added, shift)
            if shift:
                _shifted_bias(nodes, node, shift, added, context)
        else:
            widen |= found
    widened = []
    for index in sorted(widen):
        attrs = nodes[index]["attrs"]
        high = float(attrs["max_calib_range"])
        table = context.ranges.get(calib_key(nodes[index], nodes))
        target = max(abs(float(v)) for v in table) * WIDEN if table else high * WIDEN
        if high < target * (1 - 1e-6):
            attrs["max_calib_range"] = repr(float(target))
            widened.append(nodes[index]["name"])
    if added:
        variables = {n["name"] for n in added if n["op"] == "null"}
        append_nodes(graph, added)
        graph["arg_nodes"] = sorted(set(graph["arg_nodes"]) | {
            i for i, n in enumerate(graph["nodes"]) if n["name"] in variables})
    if widened or added:
        _log.info("oneDNN's int8 kernels on this CPU sum pairs of uint8 x int8 products in "
                  "saturating int16 (no VNNI): %d uint8 range(s) widened to 7-bit codes, "
                  "%d tensor(s) requantized to 7 bits.", len(widened),
                  sum(n["op"] == "_contrib_quantize_v2" for n in added))
    if unknown:
        _log.debug("uint8 inputs of pair-summing layers from nodes without a range: %s",
                   sorted(unknown))
    return {}
