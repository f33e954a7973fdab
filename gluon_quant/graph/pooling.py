"""Global average pooling written as a mean over the spatial axes, run as ``Pooling``.

``F.mean(x, axis=(2, 3))`` (and ``x.mean(axis=(2, 3))`` in NumPy mode, the way nets ported
from PyTorch write ``torch.mean(x, [2, 3])``) is global average pooling followed by a
flatten; with ``keepdims=True`` it is the squeeze of a squeeze-and-excitation block. MXNet
1.9.1 has no int8 ``mean``: the convolution before it dequantized its whole output for an
fp32 reduction, and the dense layer or 1x1 convolution after it quantized the result
again. :func:`spatial_means` rewrites such a mean as a global average ``Pooling`` (an int8
kernel: the convolution's uint8 output is pooled as it is), followed by ``Flatten`` where
the mean dropped the reduced axes. Exact up to float rounding: both average every spatial
position of each (sample, channel).
"""
import logging

from .rewrites import append_nodes, private_attrs

__all__ = ["spatial_means"]

_log = logging.getLogger(__name__)

#: The mean operators of legacy and NumPy-mode graphs.
MEANS = frozenset(("mean", "_npi_mean"))


def _is_true(value):
    return str(value).strip().lower() in ("true", "1")


def _axes(text, rank):
    """The sorted non-negative axes an ``axis`` attribute names, or None for all axes."""
    if text in (None, "None", "()", ""):
        return None
    try:
        values = [int(v) for v in str(text).strip("()[] ").split(",") if v.strip()]
    except ValueError:
        return None
    return sorted(v % rank for v in values)


def spatial_means(graph, context):
    """Rewrite a mean over every spatial axis of 4-D/5-D data as global average pooling.

    Needs the shapes (``context.infer_shapes``): without them nothing is rewritten. Only
    plain means are: no ``exclude``, no ``dtype``, one input. The node keeps its name
    (it becomes the ``Flatten``, or the ``Pooling`` itself with ``keepdims``).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates = [n for n in nodes if n["op"] in MEANS and len(n["inputs"]) == 1]
    if not candidates or context is None or context.infer_shapes is None:
        return {}
    shapes = context.infer_shapes(graph) or {}
    new = []
    for node in candidates:
        attrs = node.get("attrs") or {}
        data = node["inputs"][0]
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        if shape is None or len(shape) not in (4, 5) or _is_true(attrs.get("exclude")) \
                or attrs.get("dtype", "None") not in ("None", "none") \
                or _axes(attrs.get("axis"), len(shape)) != list(range(2, len(shape))):
            continue
        pool_attrs = dict(private_attrs(node), global_pool="True", pool_type="avg",
                          kernel=str((1,) * (len(shape) - 2)))
        if _is_true(attrs.get("keepdims")):
            node["op"], node["attrs"] = "Pooling", pool_attrs
            continue
        new.append({"op": "Pooling", "name": node["name"] + "_pool", "inputs": [data],
                    "attrs": pool_attrs})
        node["op"], node["attrs"] = "Flatten", private_attrs(node)
        node["inputs"] = [[len(nodes) + len(new) - 1, 0, 0]]
    if new:
        append_nodes(graph, new)
    _log.debug("Rewrote spatial means as global average pooling (%d with a flatten).",
               len(new))
    return {}
