"""The image stem: a convolution that reads the network's input with few channels stays fp32.

Measured on EfficientNet-Lite1 (real ImageNet weights, held-out photos of
:mod:`gluon_quant.zoo.evaluation`), the stem convolution (3 input channels, fused
BatchNorm and ReLU6) is where int8 loses most:

* it adds 12.8 dB of output error beyond the 8-bit activation floor (output SQNR 38.1 dB
  against the floor's 50.9 dB; ``debug.compare(floor=True)``), more than any other layer.
  Its kernels are differences of neighbouring, strongly correlated pixels (edges, colour
  opponents): the true output is a small remainder of large terms, and the error of int8
  weights (and of the image rounded to int8) is not small next to it;
* rounding its output alone costs 0.0022 of the floor's 0.0039 logit-cosine loss: the
  depthwise convolution it feeds reads 32 channels whose ranges differ by 30x (7 of them
  dead) through one per-tensor scale.

Keeping the stem fp32 moved Lite1 from 35/40, 0.9908 to 36/40, 0.9936, and the input no
longer passes through int8 at all (random-weight MobileNetV2: rounding the input alone
costs 0.011 logit cosine).  It costs little: with 3 input channels the stem does 27
multiply-adds per output (about 2% of EfficientNet-Lite1's, 5% of MobileNetV2-0.5's), too
few for int8 to gain much over fp32 on them anyway.

The rule reads structure only: a convolution whose data comes from a network input
(through padding, casts or the folded input normalization's subtraction) and whose weight
has at most :data:`MAX_STEM_CHANNELS` input channels.  ``QuantConfig.fp32_stem=False``
turns it off.
"""
from .rewrites import known_shape

__all__ = ["DEPTHWISE_REASON", "MAX_STEM_CHANNELS", "STEM_REASON", "fp32_stem"]

#: A convolution reading a network input with at most this many channels is a stem
#: (images: 1 grey, 3 RGB, 4 RGBA or RGB-D).
MAX_STEM_CHANNELS = 4
#: Why the stem stays fp32 (shown in ``report()``).
STEM_REASON = ("image stem: int8 weights and input cost the most accuracy here for few "
               "multiply-adds (fp32_stem=False quantizes it)")
#: Operators between the input and the stem that leave its values (nearly) as they are.
_PASS_THROUGH = ("Pad", "pad", "Cast", "cast", "_copy", "identity", "broadcast_sub",
                 "broadcast_minus", "broadcast_mul", "_minus_scalar", "_mul_scalar",
                 "_div_scalar", "_plus_scalar")
#: Why a depthwise convolution reading the stem stays fp32 (shown in ``report()``).
DEPTHWISE_REASON = ("depthwise convolution reading the image stem: one int8 scale for the "
                    "stem's channels (ranges 30x apart) loses the small ones, which it "
                    "cannot mix away (fp32_stem=False quantizes it)")
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


def _reads_input(nodes, entry, params):
    """Whether ``entry`` is a network input, or one through pass-through operators."""
    node = nodes[_source(nodes, entry, params)]
    return node["op"] == "null" and node["name"] not in params


def _depthwise(node, conv, shape):
    groups = int((conv.get("attrs") or {}).get("num_group", "1"))
    return groups > 1 and shape[1] == 1


def fp32_stem(graph, context):
    """Stem convolutions (reading a network input with few channels) and the depthwise
    convolutions that read their output: they stay fp32.

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
    if not getattr(context, "fp32_stem", False):
        return {}
    nodes = graph["nodes"]
    params = set(context.param_shapes) | {r.target for r in context.param_rewrites}
    convs, shapes = {}, None
    for index, node in enumerate(nodes):
        if node["op"] in _CONV_OPS and len(node["inputs"]) >= 2:
            conv = _conv_member(node)
            name = nodes[node["inputs"][1][0]]["name"]
            if shapes is None and known_shape(context.param_shapes.get(name)) is None:
                shapes = (context.infer_shapes(graph) or {}) if context.infer_shapes else {}
            shape = _weight_shape(name, context, shapes or {})
            if conv is not None and shape is not None and len(shape) >= 3:
                convs[index] = (conv, shape)
    found, stems = {}, set()
    for index, (conv, shape) in convs.items():
        groups = int((conv.get("attrs") or {}).get("num_group", "1"))
        node = nodes[index]
        if shape[1] * groups <= MAX_STEM_CHANNELS and _reads_input(nodes, node["inputs"][0],
                                                                   params):
            found[node["name"]] = STEM_REASON
            stems.add(index)
    for index, (conv, shape) in convs.items():
        if index not in stems and _depthwise(nodes[index], conv, shape) and \
                _source(nodes, nodes[index]["inputs"][0], params) in stems:
            found[nodes[index]["name"]] = DEPTHWISE_REASON
    return found
