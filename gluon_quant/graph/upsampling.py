"""Nearest-neighbour upsampling run as oneDNN's depthwise deconvolution.

``F.UpSampling(x, scale=s, sample_type='nearest')`` (YOLOv3's and FPN's top-down path,
U-Nets, GAN generators) has no int8 kernel and MXNet 1.9.1 runs it with its own kernel:
11.3 ms on a 8x64x56x56 tensor at scale 2 (2 threads), where a depthwise
``Deconvolution`` with an all-ones ``s x s`` kernel and stride ``s``, which computes the
same copies (each output pixel is one input pixel times 1, nothing overlaps), takes
3.6 ms on oneDNN.

:func:`nearest_upsampling_as_deconv` rewrites the node in place, under its name, with a
``_ones`` kernel of shape ``(C, 1, s, s)`` computed in the graph (no parameter to store).
Exact: ``x * 1``, added to nothing (a -0.0 input may come out as 0.0). Only one-input
nearest upsampling of 4-D data with a known channel count is rewritten; nodes the
user's ``exclude`` names are left as they are.

GluonCV's YOLOv3 writes the same upsampling as two ``repeat`` calls,
``x.repeat(axis=-1, repeats=2).repeat(axis=-2, repeats=2)``: 74 ms on the tensor above
(MXNet's ``repeat`` copies element by element). A ``repeat`` over one spatial axis of
4-D data read only by a ``repeat`` over the other is rewritten the same way, with a
``(rh, rw)`` kernel and stride.
"""
import logging

from .builder import NodeBuilder
from .inspect import FP32_FORM_ATTR
from .rewrites import consumers, private_attrs, prune, shaped_nodes

__all__ = ["nearest_upsampling_as_deconv"]

_log = logging.getLogger(__name__)


def _scale(attrs):
    try:
        scale = int(str(attrs.get("scale", "")).strip("()[] "))
    except ValueError:
        return None
    return scale if scale >= 1 else None


def _repeats(node, rank):
    """``(axis, repeats)`` of a ``repeat`` over one axis of ``rank``-D data, or None."""
    attrs = node.get("attrs") or {}
    if node["op"] != "repeat" or len(node["inputs"]) != 1:
        return None
    try:
        axis, repeats = int(attrs.get("axis")), int(attrs.get("repeats"))
    except (TypeError, ValueError):
        return None
    return (axis % rank, repeats) if -rank <= axis < rank and repeats >= 1 else None


def _kernel(node, nodes, shapes, readers, context):
    """``(data entry, (kh, kw))`` of a nearest upsampling ``node`` (an ``UpSampling`` or
    the outer of two spatial ``repeat`` calls) over 4-D data, or None."""
    attrs = node.get("attrs") or {}
    if node["op"] == "UpSampling":
        scale = _scale(attrs)
        if attrs.get("sample_type", "nearest") != "nearest" or scale is None:
            return None
        return node["inputs"][0], (scale, scale)
    outer = _repeats(node, 4)
    inner_entry = node["inputs"][0] if node["inputs"] else None
    if outer is None or outer[0] < 2 or inner_entry[1] != 0 or \
            len(readers.get((inner_entry[0], 0), ())) != 1:
        return None
    inner = nodes[inner_entry[0]]
    first = _repeats(inner, 4)
    if first is None or {first[0], outer[0]} != {2, 3} or inner["name"] in context.excluded:
        return None
    kernel = dict((first, outer))
    return inner["inputs"][0], (kernel[2], kernel[3])


def nearest_upsampling_as_deconv(graph, context):
    """Rewrite ``UpSampling(sample_type='nearest')`` and two spatial ``repeat`` calls as a
    depthwise ``Deconvolution`` of ones, in place (see the module docstring).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    candidates, shapes = shaped_nodes(graph, context, ("UpSampling", "repeat"), arity=1)
    nodes, build = graph["nodes"], NodeBuilder(graph)
    readers, heads = consumers(graph), {(h[0], h[1]) for h in graph["heads"]}
    for node in candidates:
        found = _kernel(node, nodes, shapes, readers, context)
        if found is None or node["name"] in context.excluded:
            continue
        data, kernel = found
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        if shape is None or len(shape) != 4 or not shape[1] or \
                (node["op"] == "repeat" and (node["inputs"][0][0], 0) in heads):
            continue
        channels = shape[1]
        ones = build.add("_ones", node["name"] + "_ones", [],
                         shape=(channels, 1) + kernel, dtype="float32")
        node.update(op="Deconvolution", inputs=[list(data), ones],
                    attrs=dict(private_attrs(node), kernel=str(kernel), stride=str(kernel),
                               num_filter=str(channels), num_group=str(channels),
                               no_bias="True", **{FP32_FORM_ATTR: "nearest upsampling"}))
        context.rewritten[node["name"]] = (
            "nearest upsampling run as a depthwise Deconvolution of ones (oneDNN's kernel, "
            "3x faster than MXNet's UpSampling)")
    if build.nodes:
        build.append()
        prune(graph)        # the inner repeat calls, read by nothing now
        _log.debug("Ran %d nearest upsampling(s) as depthwise deconvolutions.",
                   len(build.nodes))
    return {}
