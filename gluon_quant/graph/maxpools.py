"""Max poolings of dequantized int8 tensors, run as int8 max poolings.

A max pooling that stays fp32 in the int8 graph (CenterNet's peak picking,
``maxpool(h) == h`` over ``h = sigmoid(heatmap logits)``, kept fp32 by
:func:`~gluon_quant.graph.passes.compared_pools` or a preset) reads an fp32 tensor that a
``_contrib_dequantize`` made from an int8 one, either directly or through element-wise
functions that never decrease (``sigmoid``, ``tanh``, ELU...). oneDNN's fp32 pooling of
the plain (NCHW) array a dequantize writes falls back to its reference kernel
(``simple_nchw``) once a channel's map outgrows the jit kernel's buffer: on this
machine's 1 MB L2 cache a 3x3 stride-1 pooling of a 96x96 map or larger, 60 ns a value
against 1.6-2 ns. GluonCV's center_net_resnet18_v1b_voc at 512 px spent 17.8 of its
88 ms there (a 20-class 128x128 heatmap), center_net_dla34_coco at 384 px 42 of 122 ms.

:func:`int8_max_pools` moves such a pooling before the dequantize and the functions:
``f(dequantize(maxpool(q)))`` for ``maxpool(f(dequantize(q)))``, with oneDNN's int8
pooling (the jit kernel, on the int8 layout the convolution wrote). The result is the
same to the bit: a dequantize multiplies by a positive scale and ``f`` never decreases,
so the largest value of a window is the image of its largest int8 value (``f`` is a
function of that value only). oneDNN's fp32 sigmoid is not monotone from one float to
the next (it wiggles by an ulp), but it is on the int8 grid's values, which lie far
apart (sigmoid, tanh, softsign: no step down over calibrated ranges of 0.5 to 60, int8
and uint8; its softrelu steps down 4699 times there and is not taken). The comparison
``maxpool(h) == h`` still compares equal values.

A node the user excluded keeps its fp32 pooling. The int8 pooling names, in its
``__pooled_as__`` attribute, the node that now holds the fp32 pooling's values (the last
function's copy): ``debug.compare`` reads that one, not the values before the functions.
"""
import logging

from ..backends import why_not_int8
from .inspect import INT8_FORM_ATTR, POOLED_AS_ATTR, describe_op
from .rewrites import redirect

__all__ = ["int8_max_pools", "MONOTONE"]

_log = logging.getLogger(__name__)

#: Element-wise operators that never decrease, by operator: the ``act_type`` values (None:
#: any node of the operator) and the attribute (with its default) that must be >= 0.
MONOTONE = {
    # not softrelu: oneDNN's decreases between int8-grid neighbours (4699 steps measured)
    "Activation": (("relu", "sigmoid", "tanh", "softsign"), None),
    "LeakyReLU": (("leaky", "elu", "selu"), ("slope", 0.25)),
    "clip": (None, None),
    "hard_sigmoid": (None, ("alpha", 0.2)),
    "_copy": (None, None),
    "identity": (None, None),
    "BlockGrad": (None, None),      # the guards' copy of an output that layers read too
}


def _never_decreases(node):
    """Whether ``node`` is a one-input element-wise function that never decreases."""
    rule = MONOTONE.get(node["op"])
    if rule is None or len(node["inputs"]) != 1:
        return False
    acts, positive = rule
    attrs = node.get("attrs") or {}
    default = "relu" if node["op"] == "Activation" else "leaky"
    if acts is not None and attrs.get("act_type", default) not in acts:
        return False
    if positive is None:
        return True
    try:
        return float(attrs.get(positive[0], positive[1])) >= 0
    except ValueError:
        return False


def _int8_source(nodes, entry):
    """The chain of functions from a dequantize to ``entry`` (nearest first), and the
    dequantize's index; None where ``entry`` is not such a chain's end."""
    chain = []
    while True:
        node = nodes[entry[0]]
        if node["op"] == "_contrib_dequantize" and len(node["inputs"]) == 3:
            return chain, entry[0]
        if not _never_decreases(node):
            return None
        chain.append(entry[0])
        entry = node["inputs"][0]


def int8_max_pools(graph, context):
    """Run fp32 max poolings of dequantized int8 tensors as int8 max poolings (in place).

    Parameters
    ----------
    graph : dict
        The final int8 graph (modified in place).
    context : PassContext
        ``spec`` (its Pooling conditions), ``excluded`` (the user's) and ``infer_dtypes``.

    Returns
    -------
    dict
        Empty: no node has to stay fp32 (a pass's contract).
    """
    support = context.spec.ops.get("Pooling")
    if support is None or support.disabled:
        return {}
    nodes, added, replace = graph["nodes"], [], {}
    dtypes = None
    for index, node in enumerate(nodes):
        attrs = node.get("attrs") or {}
        if node["op"] != "Pooling" or attrs.get("pool_type", "max") != "max" \
                or node["name"] in context.excluded or len(node["inputs"]) != 1 \
                or why_not_int8(support, attrs):
            continue
        found = _int8_source(nodes, node["inputs"][0])
        if found is None:
            continue
        chain, dequantize = found
        if dtypes is None:
            dtypes = context.infer_dtypes(graph) if context.infer_dtypes else {}
        source = nodes[nodes[dequantize]["inputs"][0][0]]["name"]
        if not {dtypes.get(source + "_output"), dtypes.get(source + "_output0")} \
                & {"int8", "uint8"}:
            continue
        first = len(nodes) + len(added)
        after = "".join(", then %s" % describe_op(nodes[i]["op"], nodes[i].get("attrs") or {})
                        for i in reversed(chain))
        why = ("int8 max pooling of its input's int8 values, dequantized%s after it: the "
               "same values to the bit as fp32 pooling (oneDNN's fp32 pooling of a large "
               "plain map is up to 30x slower)" % after)
        last = nodes[chain[0]]["name"] + "_pooled" if chain else node["name"] + "_dequantize"
        added.append({"op": "_contrib_quantized_pooling", "name": "quantized_" + node["name"],
                      "attrs": dict(attrs, **{INT8_FORM_ATTR: why, POOLED_AS_ATTR: last}),
                      "inputs": list(nodes[dequantize]["inputs"])})
        added.append({"op": "_contrib_dequantize", "name": node["name"] + "_dequantize",
                      "attrs": {}, "inputs": [[first, i, 0] for i in range(3)]})
        for step in reversed(chain):            # the functions again, on the pooled values
            added.append(dict(nodes[step], name=nodes[step]["name"] + "_pooled",
                              attrs=dict(nodes[step].get("attrs") or {}),
                              inputs=[[len(nodes) + len(added) - 1, 0, 0]]))
        replace[index] = len(nodes) + len(added) - 1
    if not added:
        return {}
    nodes.extend(added)
    redirect(graph, replace)       # and drop what only the fp32 pooling read
    _log.debug("Max poolings run in int8 on dequantized inputs: %s",
               [nodes[i]["name"] for i in replace])
    return {}
