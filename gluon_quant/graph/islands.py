"""Int8 regions too small to be faster than fp32.

An int8 region is a set of int8 nodes connected by int8 tensors: data enters it through
``quantize`` nodes and leaves through ``dequantize`` nodes (or through an int8 node with a
float output).  Every call pays for those conversions; the region gains only in its
multiply-adds (convolutions, dense layers).  A region without multiply-adds (an int8
pooling or flatten between fp32 layers) can only lose, and one whose single layer with
multiply-adds does fewer than its operator's ``min_island_macs`` in the backend spec
(measured, see :data:`gluon_quant.backends.ONEDNN`) loses more to the conversions than it
gains.  Such a region stays fp32, with the reason in the report.  Regions of several such
layers are left int8: they were measured to gain at smaller sizes (the conversions are
paid once for the chain).

Work is counted at the shapes of the first calibration batch: a net calibrated on small
batches and run on large ones is judged at the small size (the reason says so).
"""
import logging

import numpy as np

from .rewrites import known_shape

__all__ = ["int8_regions", "region_work", "small_int8_regions"]

_log = logging.getLogger(__name__)

#: Nodes that pass int8 data on inside a region (they are not layers of the report).
_GLUE_OPS = ("_contrib_requantize",)
#: Int8 nodes by the layer family whose multiply-adds they do.
_MAC_FAMILIES = {"_sg_mkldnn_conv": "Convolution", "_contrib_quantized_conv": "Convolution",
                 "_sg_mkldnn_fully_connected": "FullyConnected",
                 "_contrib_quantized_fully_connected": "FullyConnected"}
#: Int8 operators that move or combine values without multiply-adds.
_NO_MAC_OPS = ("_contrib_quantized_pooling", "_contrib_quantized_flatten",
               "_contrib_quantized_concat", "_contrib_quantized_elemwise_add",
               "_contrib_quantized_elemwise_mul", "_contrib_quantized_act",
               "_contrib_quantized_reshape", "_contrib_quantized_transpose",
               "_contrib_quantized_batch_norm", "_contrib_quantized_embedding")
QUANTIZED_PREFIX = "quantized_"


def _is_member(node):
    return node["name"].startswith(QUANTIZED_PREFIX) or node["op"] in _GLUE_OPS


def int8_regions(graph):
    """The int8 regions of a quantized graph.

    Parameters
    ----------
    graph : dict
        A quantized JSON graph (int8 nodes named ``quantized_X``).

    Returns
    -------
    list of list of int
        Node indices of each region's int8 layers (glue such as requantize left out), in
        graph order.
    """
    nodes = graph["nodes"]
    parent = {i: i for i, node in enumerate(nodes) if _is_member(node)}

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in parent:
        for entry in nodes[i]["inputs"]:
            if entry[0] in parent:
                parent[root(entry[0])] = root(i)
    regions = {}
    for i in sorted(parent):
        if nodes[i]["op"] not in _GLUE_OPS:
            regions.setdefault(root(i), []).append(i)
    return list(regions.values())


def region_work(graph, region, shapes, param_shapes=None):
    """Multiply-adds per call of a region's layers, by family.

    Parameters
    ----------
    graph : dict
    region : list of int
    shapes : dict
        ``(node name, output index) -> shape`` of the graph's tensors.
    param_shapes : mapping, optional
        Parameter shapes (used where ``shapes`` lacks them).

    Returns
    -------
    dict of str to int, or None
        ``{family: multiply-adds}`` (empty: the region does none); None when a member's
        work cannot be counted (an operator this module does not know, an unknown shape).
    """
    nodes = graph["nodes"]
    work = {}
    for i in region:
        node = nodes[i]
        family = _MAC_FAMILIES.get(node["op"])
        if family is None:
            if node["op"] in _NO_MAC_OPS:
                continue
            return None
        weight_node = nodes[node["inputs"][1][0]]
        weight = shapes.get((weight_node["name"], 0)) or known_shape(
            (param_shapes or {}).get(weight_node["name"]))
        out = shapes.get((node["name"], 0))
        if not weight or not out:
            return None
        per_output = int(np.prod(weight[1:]))
        work[family] = work.get(family, 0) + int(np.prod(out)) * per_output
    return work


def small_int8_regions(graph, context):
    """Int8 regions whose multiply-adds cannot pay for their conversions.

    Parameters
    ----------
    graph : dict
        The quantized (uncalibrated) graph.
    context : PassContext
        Needs ``infer_shapes`` (the pass does nothing without a calibration batch's shapes).

    Returns
    -------
    dict of str to str
        Fused-graph node name -> the reason it stays fp32.
    """
    if context.infer_shapes is None:
        return {}
    shapes = None
    nodes = graph["nodes"]
    found = {}
    for region in int8_regions(graph):
        if shapes is None:
            shapes = context.infer_shapes(graph)
        work = region_work(graph, region, shapes, context.param_shapes)
        if work is None:
            continue
        total = sum(work.values())
        layers = [i for i in region if nodes[i]["op"] in _MAC_FAMILIES]
        family = next(iter(work)) if len(layers) == 1 else None
        support = context.spec.ops.get(family)
        limit = support.min_island_macs if support is not None else 0
        names = [nodes[i]["name"][len(QUANTIZED_PREFIX):] for i in region
                 if nodes[i]["name"].startswith(QUANTIZED_PREFIX)]
        if total == 0:
            reason = ("an int8 region without multiply-adds between fp32 layers (%s): "
                      "quantizing its input and dequantizing its output only adds work"
                      % ", ".join(names[:4]))
        elif total < limit:
            reason = ("an int8 region between fp32 layers doing %d multiply-adds per call at "
                      "the calibration batch size (%s): below %d, quantizing its inputs and "
                      "outputs costs more than int8 saves on %s (calibrate at the batch size "
                      "you run at)" % (total, ", ".join(names[:4]), limit, context.spec.name))
        else:
            continue
        for name in names:
            found[name] = reason
    if found:
        _log.info("%d int8 node(s) in regions too small to gain stay fp32.", len(found))
    return found
