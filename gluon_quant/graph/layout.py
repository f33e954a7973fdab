"""Channels-last convolutions run as channels-first ones between two transposes.

MXNet 1.9.1's oneDNN fusion takes a ``layout='NHWC'`` (or ``'NDHWC'``) convolution into a
fused node whose primitive cannot be created ("could not create a descriptor for a
dilated convolution forward propagation primitive", raised when the graph runs), and its
int8 convolution takes NCHW/NCDHW data only. A Gluon net written channels-last
(``nn.Conv2D(..., layout='NHWC')``) therefore failed to quantize at all. Rewritten as
``transpose`` -> channels-first convolution -> ``transpose``, with the weight transposed
once on the pipeline's copies (:class:`~gluon_quant.graph.rewrites.ParamRewrite`), the
convolution fuses and runs in int8 like any other; the layers around it keep their
channels-last layout.
"""
import logging

import mxnet as mx

from .rewrites import ParamRewrite, reachable

__all__ = ["channels_first_convolutions"]

_log = logging.getLogger(__name__)

#: Channels-last layout -> (channels-first layout, axes to it, axes back).
_CHANNELS_LAST = {
    "NHWC": ("NCHW", (0, 3, 1, 2), (0, 2, 3, 1)),
    "NDHWC": ("NCDHW", (0, 4, 1, 2, 3), (0, 2, 3, 4, 1)),
}


def channels_first_convolutions(graph, context):
    """Rewrite every channels-last ``Convolution`` of ``graph`` (in place) as a
    channels-first one between two transposes; its weight ``(O, *kernel, C)`` becomes a
    new parameter ``<node>_channels_first_weight`` of shape ``(O, C, *kernel)``.

    Returns
    -------
    dict
        Empty: the convolutions are not kept fp32 by it.
    """
    nodes = graph["nodes"]
    back = {}       # convolution index -> the transpose its readers now read
    for index in range(len(nodes)):
        node = nodes[index]
        attrs = node.get("attrs") or {}
        if node["op"] != "Convolution" or attrs.get("layout") not in _CHANNELS_LAST \
                or len(node["inputs"]) < 2:
            continue
        first, to_first, to_last = _CHANNELS_LAST[attrs["layout"]]
        weight = nodes[node["inputs"][1][0]]["name"]
        target = node["name"] + "_channels_first_weight"
        context.param_rewrites.append(ParamRewrite(
            target=target, kind="evaluate", sources=(weight,),
            graph=mx.sym.transpose(mx.sym.var(weight), axes=to_first).tojson()))
        nodes.append({"op": "transpose", "name": node["name"] + "_to_channels_first",
                      "attrs": {"axes": str(to_first)}, "inputs": [list(node["inputs"][0])]})
        nodes.append({"op": "null", "name": target, "inputs": []})
        node["inputs"] = [[len(nodes) - 2, 0, 0], [len(nodes) - 1, 0, 0]] + node["inputs"][2:]
        node["attrs"] = dict(attrs, layout=first)
        nodes.append({"op": "transpose", "name": node["name"] + "_to_channels_last",
                      "attrs": {"axes": str(to_last)}, "inputs": [[index, 0, 0]]})
        back[index] = len(nodes) - 1
    if not back:
        return {}
    readers = set(back.values())
    for number, node in enumerate(nodes):
        if number not in readers:
            node["inputs"] = [[back[e[0]], 0, 0] if e[0] in back and e[1] == 0 else e
                              for e in node["inputs"]]
    heads = [[back[h[0]], 0, 0] if h[0] in back and h[1] == 0 else h for h in graph["heads"]]
    graph.pop("node_row_ptr", None)
    graph.update(reachable(nodes, heads, graph.get("attrs")))
    _log.debug("Ran %d channels-last convolution(s) channels-first.", len(back))
    return {}
