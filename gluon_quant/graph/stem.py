"""The image stem that feeds a depthwise convolution stays fp32, and so does that convolution.

Measured on EfficientNet-Lite1 (real ImageNet weights, held-out photos of
:mod:`gluon_quant.zoo.evaluation`), the stem convolution (3 input channels, fused
BatchNorm and ReLU6) and the depthwise convolution reading it are where int8 loses most:

* the stem adds 12.8 dB of output error beyond the 8-bit activation floor (output SQNR
  38.1 dB against the floor's 50.9 dB; ``debug.compare(floor=True)``), more than any other
  layer. Its kernels are differences of neighbouring, strongly correlated pixels (edges,
  colour opponents): the true output is a small remainder of large terms, and the error
  of int8 weights (and of the image rounded to int8) is not small next to it;
* rounding its output alone costs 0.0022 of the floor's 0.0039 logit-cosine loss (one
  tensor fake-quantized at a time): the depthwise convolution reads its 32 channels, whose
  ranges differ by 30x (7 of them dead), through one per-tensor scale, and cannot mix the
  coarse small channels away as a full convolution does.

Lite1, 35/40 top-1 agreement and 0.9908 logit cosine with both in int8: 36/40, 0.9936
with the stem fp32; 35/40, 0.9927 with the depthwise one fp32; 38/40, 0.9979 with both.
Lite2: 35/40, 0.9897 -> 40/40, 0.9977. The two do 36 multiply-adds per output pixel,
3.8% of EfficientNet-Lite0's: in fp32 they cost it 4% of its int8 speed (batch 8, one
thread, timed side by side with a second copy of the int8 graph as a control, 0.4% off).

Only that pair is kept, and only while it is cheap (:data:`MAX_STEM_SHARE` of the net's
multiply-adds).  MobileNetV2-0.5 has the same pair at 8.1%: fp32 cost it 26% of its int8
speed, for +0.003 logit cosine (random weights).  A stem read by a full convolution or a
pooling (ResNet: 7x7, 6.5%) stays int8: fp32 cost ResNet-18 17% in one run, and its int8
logit cosine is 0.9995 already.

The rule reads structure and shapes only: a convolution whose data comes from a network
input (through padding, casts or the folded input normalization's subtraction), whose
weight has at most :data:`MAX_STEM_CHANNELS` input channels, and whose output a depthwise
convolution reads (through padding), the two doing at most :data:`MAX_STEM_SHARE` of the
multiply-adds at the calibration shapes.  ``QuantConfig.fp32_stem=False`` turns it off.
"""
import logging

import numpy as np

from .rewrites import known_shape

__all__ = ["DEPTHWISE_REASON", "MAX_STEM_CHANNELS", "MAX_STEM_SHARE", "STEM_REASON",
           "fp32_stem", "reads_input"]

#: A convolution reading a network input with at most this many channels is a stem
#: (images: 1 grey, 3 RGB, 4 RGBA or RGB-D).
MAX_STEM_CHANNELS = 4
#: Why the stem stays fp32 (shown in ``report()``).
STEM_REASON = ("image stem read by a depthwise convolution: int8 weights and input cost "
               "the most accuracy here for few multiply-adds (fp32_stem=False quantizes it)")
#: Operators between the input and the stem that leave its values (nearly) as they are.
_PASS_THROUGH = ("Pad", "pad", "Cast", "cast", "_copy", "identity", "broadcast_sub",
                 "broadcast_minus", "broadcast_mul", "_minus_scalar", "_mul_scalar",
                 "_div_scalar", "_plus_scalar")
#: Why a depthwise convolution reading the stem stays fp32 (shown in ``report()``).
DEPTHWISE_REASON = ("depthwise convolution reading the image stem: one int8 scale for all "
                    "the stem's channels loses the small ones, which it cannot mix away "
                    "(fp32_stem=False quantizes it)")
_log = logging.getLogger(__name__)
#: The stem and its depthwise reader stay fp32 only while they do at most this share of
#: the network's convolution and dense multiply-adds: EfficientNet-Lite0/1/2 3.8/2.8/2.3%,
#: MobileNet-1.0 2.5% (fp32 there cost Lite0 4% of its int8 speed); MobileNetV2-1.0 4.8%
#: and MobileNetV2-0.5 8.1% stay int8 (fp32 cost MobileNetV2-0.5 26%).
MAX_STEM_SHARE = 0.04
_DENSE_OPS = ("FullyConnected", "_sg_mkldnn_fully_connected")
_CONV_OPS = ("Convolution", "_sg_mkldnn_conv", "_contrib_quantized_conv")


def _conv_member(node):
    """The Convolution node of a (possibly fused) node, or None."""
    if node["op"] == "Convolution":
        return node
    for sub in node.get("subgraphs", ()) or ():
        for member in sub["nodes"]:
            if member["op"] == "Convolution":
                return member
    return None


def _weight_shape(name, context, shapes):
    shape = known_shape(context.param_shapes.get(name)) or shapes.get((name, 0))
    if shape is not None:
        return shape
    for rewrite in context.param_rewrites:
        if rewrite.target == name and rewrite.sources:
            return known_shape(rewrite.shape) or known_shape(
                context.param_shapes.get(rewrite.sources[0]))
    return None


def _source(nodes, entry, params):
    """Index of the node whose output ``entry`` is, looking through pass-through operators
    whose other inputs are parameters."""
    for _ in range(len(nodes)):
        node = nodes[entry[0]]
        if node["op"] not in _PASS_THROUGH or not node["inputs"] or any(
                nodes[e[0]]["op"] != "null" or nodes[e[0]]["name"] not in params
                for e in node["inputs"][1:]):
            return entry[0]
        entry = node["inputs"][0]
    return entry[0]


def reads_input(nodes, entry, params):
    """Whether ``entry`` is a network input, or one through pass-through operators."""
    node = nodes[_source(nodes, entry, params)]
    return node["op"] == "null" and node["name"] not in params


def _depthwise(conv, shape):
    groups = int((conv.get("attrs") or {}).get("num_group", "1"))
    return groups > 1 and shape[1] == 1


def fp32_stem(graph, context):
    """Stem convolutions (reading a network input with few channels) whose output a
    depthwise convolution reads, and that depthwise convolution: they stay fp32.

    Parameters
    ----------
    graph : dict
        The fused fp32 graph.
    context : PassContext
        ``fp32_stem`` switches the rule on; ``param_shapes`` and ``param_rewrites`` give
        the weights' shapes.

    Returns
    -------
    dict of str to str
        Node name -> :data:`STEM_REASON` or :data:`DEPTHWISE_REASON`.
    """
    if not getattr(context, "fp32_stem", False) or context.infer_shapes is None:
        return {}
    nodes = graph["nodes"]
    params = set(context.param_shapes) | {r.target for r in context.param_rewrites}
    inferred = []

    def shapes():       # shape inference of the whole graph, once and only where needed
        if not inferred:
            inferred.append(context.infer_shapes(graph) or {})
        return inferred[0]

    convs = {}
    for index, node in enumerate(nodes):
        if node["op"] in _CONV_OPS and len(node["inputs"]) >= 2:
            conv = _conv_member(node)
            name = nodes[node["inputs"][1][0]]["name"]
            shape = _weight_shape(name, context, {}) or _weight_shape(name, context, shapes())
            if conv is not None and shape is not None and len(shape) >= 3:
                convs[index] = (conv, shape)
    stems = set()
    for index, (conv, shape) in convs.items():
        groups = int((conv.get("attrs") or {}).get("num_group", "1"))
        if shape[1] * groups <= MAX_STEM_CHANNELS and reads_input(
                nodes, nodes[index]["inputs"][0], params):
            stems.add(index)
    found = {}
    for index, (conv, shape) in convs.items():
        stem = _source(nodes, nodes[index]["inputs"][0], params)
        if index in stems or stem not in stems or not _depthwise(conv, shape):
            continue
        total = _total_macs(nodes, context, shapes())
        pair = [_macs(nodes, i, context, shapes()) for i in (stem, index)]
        share = sum(pair) / total if total and None not in pair else None
        if share is not None and share <= MAX_STEM_SHARE:
            found[nodes[stem]["name"]] = STEM_REASON
            found[nodes[index]["name"]] = DEPTHWISE_REASON
        _log.debug("image stem %s + depthwise %s: %s of the multiply-adds",
                    nodes[stem]["name"], nodes[index]["name"],
                    "unknown share" if share is None else "%.1f%%" % (100 * share))
    return found


def _macs(nodes, index, context, shapes):
    """Multiply-adds of a convolution or dense node per call, or None if unknown."""
    node = nodes[index]
    weight = _weight_shape(nodes[node["inputs"][1][0]]["name"], context, shapes)
    out = shapes.get((node["name"], 0))
    if not weight or not out:
        return None
    return int(np.prod(out, dtype=np.int64)) * int(np.prod(weight[1:], dtype=np.int64))


def _total_macs(nodes, context, shapes):
    """Multiply-adds of every convolution and dense node, or None if one is unknown."""
    total = 0
    for index, node in enumerate(nodes):
        if node["op"] in _CONV_OPS + _DENSE_OPS and len(node["inputs"]) >= 2:
            macs = _macs(nodes, index, context, shapes)
            if macs is None:
                return None
            total += macs
    return total
