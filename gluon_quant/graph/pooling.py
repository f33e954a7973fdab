"""Global pooling written as a mean or a max over the spatial axes, run as ``Pooling``.

``F.mean(x, axis=(2, 3))`` (and ``x.mean(axis=(2, 3))`` in NumPy mode, the way nets ported
from PyTorch write ``torch.mean(x, [2, 3])``) is global average pooling followed by a
flatten; with ``keepdims=True`` it is the squeeze of a squeeze-and-excitation block.
``F.max(x, axis=(2, 3))`` is the same with a global max, and ``F.max(x, axis=2)`` over
1-D data PointNet's global feature. MXNet 1.9.1 has no int8 ``mean``
or ``max``: the convolution before one dequantized its whole output for an fp32
reduction, and the dense layer or 1x1 convolution after it quantized the result again.
:func:`spatial_reductions` rewrites such a reduction as a global ``Pooling`` (an int8
kernel: the convolution's uint8 output is pooled as it is), followed by ``Flatten`` where
the reduction dropped the reduced axes. The maximum is exact; the mean is exact up to
float rounding (both average every spatial position of each sample and channel).

An ``AdaptiveAvgPooling2D(output_size=(oh, ow))`` whose input sides are multiples of
``(oh, ow)`` (torchvision's VGG and AlexNet ports: ``(7, 7)`` of a 7x7 or 14x14 map) tiles
its input into equal windows: :func:`tiled_adaptive_pools` runs it as the average
``Pooling`` with that window as kernel and stride (MXNet 1.9.1 has no int8 adaptive
pooling). Exact up to float rounding, the same windows averaged.

Measured: a 4-block squeeze-excite net written with means, batch 32 at 56 px, ran at
2.06x fp32 in int8 before and 4.2-4.4x after, with the same output cosine.

A mean, max or sum over one other axis (a transformer's token pooling
``x.mean(axis=1)`` over ``(N, T, C)``, CBAM's channel mean and max, attention pooling's
``(x * a).sum(axis=1)``) has no pooling form as it stands, but MXNet 1.9.1's reductions
are slow on any axis (a mean over axis 1 of 8x197x192: 3.5-3.9 ms; of 8x64x56x56: 18 ms):
:func:`axis_reductions` moves the axis last, views the rest as ``(P, 1, 1, K)`` and runs
a global ``Pooling`` over it (0.6 ms and 3.2 ms; 4-7x faster), then gives the result its
shape back. The maximum is exact, the mean and sum equal up to float rounding; every
shape is taken from the data, so the graph still runs at any sequence length.

A sum or mean over axis 1 needs no transpose: it is what a 1x1 ``Deconvolution`` with one
filter computes over the data viewed as ``(N, K, -1, 1)``, with a ``(K, 1, 1, 1)`` kernel of
ones (of ``1/K`` for a mean) made from the data in the graph. oneDNN runs it 15-60x faster
than MXNet's reduction and 3-10x faster than the pooling form: ResNeSt's sums over its
radix axis, ``(4, 2, 64, 56, 56)`` to ``(4, 64, 56, 56)``, 21.7 ms as ``sum``, 21.3 ms as
transpose + pooling, 0.5 ms as the deconvolution; CBAM's channel mean of 8x64x56x56,
14.4 / 3.2 / 0.16 ms. GluonCV's resnest14 (batch 4 at 224 px) ran at 1.54x fp32 in int8,
now 5.73x. Up to float rounding (the K values are added in another order).
"""
import logging

from .inspect import FP32_FORM_ATTR, is_true
from .builder import NodeBuilder
from .rewrites import append_nodes, parameter_entries, private_attrs, shaped_nodes

__all__ = ["spatial_reductions", "axis_reductions", "tiled_adaptive_pools", "unsized_global_pools",
           "POOL_TYPES"]

_log = logging.getLogger(__name__)

#: The reductions of legacy and NumPy-mode graphs that are global poolings, by pool type.
POOL_TYPES = {"mean": "avg", "_npi_mean": "avg", "max": "max", "_np_max": "max"}
#: ... and, over one axis moved last, those that are global poolings too (MXNet's ``sum``
#: pooling is not oneDNN's and has no int8 kernel: only ``axis_reductions`` makes it).
AXIS_POOL_TYPES = dict(POOL_TYPES, sum="sum", _np_sum="sum")
#: ... and those over axis 1, a channel axis, run as a Deconvolution of ones instead.
_CHANNEL_SUMS = {op: kind for op, kind in AXIS_POOL_TYPES.items() if kind in ("avg", "sum")}


def _axes(text, rank):
    """The sorted non-negative axes an ``axis`` attribute names, or None for all axes."""
    if text in (None, "None", "()", ""):
        return None
    try:
        values = [int(v) for v in str(text).strip("()[] ").split(",") if v.strip()]
    except ValueError:
        return None
    return sorted(v % rank for v in values)


def spatial_reductions(graph, context):
    """Rewrite a mean (max) over every spatial axis of 3-D/4-D/5-D data as a global
    average (max) ``Pooling`` (a 1-D one is lifted to 2-D by ``lift_1d_to_2d`` after).

    Needs the shapes (``context.infer_shapes``): without them nothing is rewritten. Only
    plain reductions are: no ``exclude``, no ``dtype``, one input. The node keeps its name
    (it becomes the ``Flatten``, or the ``Pooling`` itself with ``keepdims``).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, POOL_TYPES, arity=1)
    new, rewritten = [], 0
    for node in candidates:
        attrs = node.get("attrs") or {}
        data = node["inputs"][0]
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        if shape is None or len(shape) not in (3, 4, 5) or is_true(attrs.get("exclude")) \
                or attrs.get("dtype", "None") not in ("None", "none") \
                or _axes(attrs.get("axis"), len(shape)) != list(range(2, len(shape))):
            continue
        rewritten += 1
        pool_attrs = dict(private_attrs(node), global_pool="True",
                          pool_type=POOL_TYPES[node["op"]],
                          kernel=str((1,) * (len(shape) - 2)))
        if is_true(attrs.get("keepdims")):
            node["op"], node["attrs"] = "Pooling", pool_attrs
            continue
        new.append({"op": "Pooling", "name": node["name"] + "_pool", "inputs": [data],
                    "attrs": pool_attrs})
        node["op"], node["attrs"] = "Flatten", private_attrs(node)
        node["inputs"] = [[len(nodes) + len(new) - 1, 0, 0]]
    if new:
        append_nodes(graph, new)
    if rewritten:
        _log.debug("Rewrote %d spatial means/maxima as global pooling.", rewritten)
    return {}


def _plain(attrs):
    """Whether a reduction's attributes ask for nothing a pooling does not do."""
    return not is_true(attrs.get("exclude")) and \
        attrs.get("dtype", "None") in ("None", "none") and \
        attrs.get("initial", "None") in ("None", "none")


def _pool_last_axis(build, name, data, rank, pool_type):
    """Pool ``data`` over its last axis with nodes ``build`` (a
    :class:`~gluon_quant.graph.builder.NodeBuilder`) appends, named after ``name``; the
    result has the kept axes' sizes, in order, then a 1. 2-D/3-D data is pooled as
    ``(A, B, K)`` and keeps its shape; 4-D/5-D data as ``(P, 1, 1, K)``, the
    kept sizes taken back from the data by ``reshape_like`` (which MXNet can infer only
    where the data's rank is known)."""
    if rank == 2:       # (A, K) -> (A, 1, K), a 1-D global pooling, (A, 1, 1)
        data = build.add("Reshape", name + "_rows", [data], shape=(0, 1, -1))
    if rank <= 3:       # (A, B, K): a 1-D global pooling over K, (A, B, 1)
        pooled = build.add("Pooling", name + "_pool", [data], global_pool=True,
                           kernel=(1,), pool_type=pool_type)
        return pooled if rank == 3 else \
            build.add("Reshape", name + "_kept", [pooled], shape=(0, 1))
    rows = build.add("Reshape", name + "_rows", [data], shape=(-1, 1, 1, 0), reverse=True)
    pooled = build.add("Pooling", name + "_pool", [rows], global_pool=True, kernel=(1, 1),
                       pool_type=pool_type)
    # the kept axes' sizes from the data (one slice of it, the reduced axis as 1)
    like = build.add("slice_axis", name + "_one", [data], axis=-1, begin=0, end=1)
    return build.add("reshape_like", name + "_kept", [pooled, like])


def _channel_sum(build, node, data, rank, keep):
    """The op, inputs and attributes that make ``node``, a sum or mean over axis 1 of
    ``rank``-D ``data`` (3-D or more), the output of a 1x1 ``Deconvolution`` with one
    filter over the data viewed as ``(N, K, -1, 1)``: its kernel of ones (of ``1/K`` for a
    mean), shaped ``(K, 1, 1, 1)`` from the data, adds the K channels of each position."""
    name = node["name"]
    view = build.add("Reshape", name + "_view", [data], shape=(0, 0, -1, 1))
    # the kernel's size from the data itself: a slice of a reshaped view of a 3-D
    # convolution's blocked output fails in oneDNN's reorder
    row = build.add("slice_axis", name + "_row", [data], axis=0, begin=0, end=1)
    row = build.add("Reshape", name + "_row_view", [row], shape=(0, 0, -1))
    column = build.add("slice_axis", name + "_column", [row], axis=2, begin=0, end=1)
    ones = build.add("ones_like", name + "_ones", [column])
    kernel = build.add("Reshape", name + "_kernel", [ones], shape=(-1, 1, 1, 1))
    if _CHANNEL_SUMS[node["op"]] == "avg":
        count = build.add("sum", name + "_count", [kernel])
        kernel = build.add("broadcast_div", name + "_weights", [kernel, count])
    summed = build.add("Deconvolution", name + "_deconv", [view, kernel], kernel=(1, 1),
                       num_filter=1, no_bias=True, **{FP32_FORM_ATTR: "sum over channels"})
    # (N, 1, Q, 1): the kept sizes from the data (keepdims: the 1 stays)
    if rank == 3:
        return dict(op="Reshape", inputs=[summed], attrs=dict(
            private_attrs(node), shape=str((0, 0, -1) if keep else (0, -1))))
    return dict(op="reshape_like", inputs=[summed, list(data)], attrs=dict(
        private_attrs(node), lhs_begin="2" if keep else "1", rhs_begin="2"))


def axis_reductions(graph, context):
    """Rewrite a mean, max or sum over one axis as a global ``Pooling`` over that axis
    moved last (``transpose``, a ``(P, 1, 1, K)`` view, ``Pooling``, the shape back), or,
    a sum or mean over axis 1 of 3-D or larger data, as a ``Deconvolution`` of ones.

    Runs after :func:`spatial_reductions` (a reduction over every spatial axis is one
    global pooling, without the transpose). Needs the shapes (``context.infer_shapes``);
    only plain reductions over one axis of 2-D to 5-D data (any rank for the
    deconvolution) are rewritten. The node keeps its name (the last node of the form).
    Nodes the user's ``exclude`` names are left.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32 (the deconvolution is marked fp32 by its
        ``FP32_FORM_ATTR``).
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, AXIS_POOL_TYPES, arity=1)
    if not candidates:
        return {}
    # a reduction over parameters alone is folded into one parameter after this pass
    constant = parameter_entries(graph, set(context.param_shapes) |
                                 {r.target for r in context.param_rewrites})
    build = NodeBuilder(graph)
    for node in candidates:
        attrs, data = node.get("attrs") or {}, node["inputs"][0]
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        axes = _axes(attrs.get("axis"), len(shape)) if shape else None
        if not shape or not axes or len(axes) != 1 or not _plain(attrs) or \
                node["name"] in context.excluded or constant[data[0]]:
            continue
        name, rank, axis = node["name"], len(shape), axes[0]
        keep = is_true(attrs.get("keepdims"))
        if axis == 1 and rank >= 3 and node["op"] in _CHANNEL_SUMS:
            context.rewritten[name] = (
                "%s over axis 1 run as a Deconvolution of ones (oneDNN's kernel, 15-60x "
                "faster than MXNet's reduction)" % node["op"])
            node.update(_channel_sum(build, node, data, rank, keep))
            continue
        if not 2 <= rank <= 5:
            continue
        moved = data
        if axis != rank - 1:
            moved = build.add("transpose", name + "_axis_last", [data],
                              axes=tuple(a for a in range(rank) if a != axis) + (axis,))
        out = _pool_last_axis(build, name, moved, rank, AXIS_POOL_TYPES[node["op"]])
        if keep and axis == rank - 1:
            node.update(op="Reshape", inputs=[out], attrs=dict(
                private_attrs(node), shape=str((0,) * (rank - 1) + (1,))))
            continue
        if keep:        # the reduced axis back in its place
            out = build.add("Reshape", name + "_dropped", [out], shape=(0,) * (rank - 1))
            node.update(op="expand_dims", inputs=[out],
                        attrs=dict(private_attrs(node), axis=str(axis)))
        else:
            node.update(op="Reshape", inputs=[out],
                        attrs=dict(private_attrs(node), shape=str((0,) * (rank - 1))))
    build.append()
    if build.nodes:
        _log.debug("Rewrote %d reductions over one axis as global pooling.",
                   sum(n["op"] == "Pooling" for n in build.nodes))
    return {}


def _output_size(text):
    """``(oh, ow)`` of an ``output_size`` attribute, or None when it is not two ints."""
    try:
        values = [int(v) for v in str(text).strip("()[] ").split(",") if v.strip()]
    except ValueError:
        return None
    return tuple(values * 2) if len(values) == 1 else tuple(values) if len(values) == 2 \
        else None


def tiled_adaptive_pools(graph, context):
    """Rewrite an adaptive average pooling whose windows tile its input (input sides
    multiples of the output's) as an average ``Pooling`` with those windows.

    Needs the shapes (``context.infer_shapes``). Global ones (``output_size=1``) are left
    to :func:`~gluon_quant.graph.rewrites.global_adaptive_pools`, which runs first.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, ("_contrib_AdaptiveAvgPooling2D",))
    for node in candidates:
        data = node["inputs"][0]
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        size = _output_size((node.get("attrs") or {}).get("output_size"))
        if shape is None or len(shape) != 4 or size is None or min(size) < 1 \
                or shape[2] % size[0] or shape[3] % size[1]:
            continue
        window = str((shape[2] // size[0], shape[3] // size[1]))
        node["op"] = "Pooling"
        node["attrs"] = dict(private_attrs(node), pool_type="avg", kernel=window,
                             stride=window, pad="(0, 0)", pooling_convention="valid")
        _log.debug("Rewrote %s (%s -> %s) as average pooling over %s windows.",
                   node["name"], shape[2:], size, window)
    return {}


def unsized_global_pools(graph, context):
    """Give a global ``Pooling`` written without a kernel (``F.Pooling(x, global_pool=True,
    pool_type='avg')``) the unit kernel of its input's rank.

    A global pooling ignores its kernel, but MXNet 1.9.1's int8 pooling reads the kernel's
    length as the data's rank: without one it failed at the first run ("QuantizedPoolingOp
    only supports 2D/3D pooling for now, saw0"), and the node was kept fp32 after a
    rebuild. With the kernel it runs in int8 like any global pooling (a 1-D one after
    ``lift_1d_to_2d`` made it 2-D). Needs the shapes (``context.infer_shapes``).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    unsized = [n for n in graph["nodes"] if n["op"] == "Pooling"
               and is_true((n.get("attrs") or {}).get("global_pool"))
               and not str((n.get("attrs") or {}).get("kernel", "")).strip("()[], ")]
    if not unsized:
        return {}
    _, shapes = shaped_nodes(graph, context, ("Pooling",))
    for node in unsized:
        data = node["inputs"][0]
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        if shape is None or len(shape) < 3:
            continue
        node["attrs"]["kernel"] = str((1,) * (len(shape) - 2)).replace(",)", ")")
        _log.debug("Gave the global pooling %s the kernel %s of its %d-D input.",
                   node["name"], node["attrs"]["kernel"], len(shape) - 2)
    return {}
