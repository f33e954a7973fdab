"""Axis swaps and equal splits run on MXNet's faster kernels.

**Axis swaps** run as oneDNN's ``transpose``.

``x.swapaxes(1, 2)`` (``F.swapaxes``, NumPy mode's ``np.swapaxes``: both trace to
``SwapAxis``) is how hand-written attention splits its heads (``(N, T, H, D)`` to
``(N, H, T, D)``) and how sequence nets move channels first for a ``Conv1D``. MXNet 1.9.1
runs ``SwapAxis`` with its own element-by-element kernel, where ``transpose`` with the
same permutation is a oneDNN reorder (2 threads, float32): ``(8, 128, 12, 64)`` axes 1
and 2: 1.29 ms against 0.16 ms; ``(16, 200, 256)`` axes 1 and 2: 7.1 against 0.86 ms;
``(8, 197, 192)``: 2.3 against 0.12 ms; ``(4, 64, 128, 128)`` axes 2 and 3: 40 against
11.7 ms. Neither has an int8 kernel.

:func:`swapaxes_as_transpose` rewrites the node in place, under its name, as ``transpose``
with the permutation that swaps the two axes (the rank taken from the traced shapes; a
net's rank does not change with its input size). Bit-exact: the same values moved to the
same places.

**Equal splits** run as slices. ``F.split(x, num_outputs=k, axis=a)`` (``SliceChannel``: the
gates of Gluon's ``LSTMCell``/``GRUCell``, a hand-written attention's ``q, k, v`` out of one
projection) copies with MXNet's own kernel, 6-14x slower than ``slice_axis`` taking the same
parts over the last axes: ``(8, 128, 2304)`` in 3 over the last axis: 10.8 ms against
0.94 ms; an LSTM cell's ``(64, 4096)`` gates in 4: 0.97 against 0.07 ms (an unrolled
20-step LSTMCell decoder, batch 32: 5 of its 21 ms in int8). :func:`splits_as_slices` runs
each part as ``slice_axis`` (and a ``Reshape`` dropping the axis for ``squeeze_axis``), the
first under the node's name, the others ``<name>_part<i>``; NumPy mode's ``np.split``
(``_split_v2``, into sections or at indices) the same way. A slice's bounds are numbers,
so only a split whose axis keeps its size at every input size the net takes is rewritten:
the graph's shapes are inferred again with each input axis in turn doubled, and a split
whose axis changes with one (a split over a sequence's time steps) is left. Bit-exact.

**Whole slices** go. GhostNet's module ends ``out[:, :self.oup]`` over a concatenation of
exactly ``oup`` channels (its primary and cheap halves), and ports write such guards
elsewhere. A slice has no int8 kernel: between int8 layers it cost a dequantize, a copy
and a quantize. :func:`whole_slices` passes the input through where the slice keeps every
value at every input size the net takes (its output shape is its input's, with the
parameters' shapes held and each input axis in turn doubled).
"""
import logging

from .builder import NodeBuilder
from .rewrites import known_shape, parameter_entries, private_attrs, prune, shaped_nodes

__all__ = ["swapaxes_as_transpose", "splits_as_slices", "varied_shapes", "whole_slices"]

_log = logging.getLogger(__name__)


def _axes(attrs, rank):
    """The transpose permutation that swaps ``dim1`` and ``dim2`` of ``rank``-D data, or
    None when the attributes do not name two axes of it."""
    try:
        first, second = int(attrs.get("dim1", 0)), int(attrs.get("dim2", 0))
    except (TypeError, ValueError):
        return None
    if not (-rank <= first < rank and -rank <= second < rank):
        return None
    axes = list(range(rank))
    axes[first % rank], axes[second % rank] = second % rank, first % rank
    return tuple(axes)


def swapaxes_as_transpose(graph, context):
    """Rewrite each ``SwapAxis`` whose input rank is known as ``transpose`` (see the
    module docstring). Nodes the user's ``exclude`` names are left as they are.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, ("SwapAxis",), arity=1)
    done = 0
    for node in candidates:
        data = node["inputs"][0]
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        axes = _axes(node.get("attrs") or {}, len(shape)) if shape else None
        if axes is None or node["name"] in context.excluded:
            continue
        node.update(op="transpose", attrs=dict(private_attrs(node), axes=str(axes)))
        context.rewritten[node["name"]] = (
            "SwapAxis run as transpose (oneDNN's reorder, 2-19x faster than MXNet's "
            "SwapAxis; bit-exact)")
        done += 1
    if done:
        _log.debug("Ran %d SwapAxis node(s) as transpose.", done)
    return {}


def _int_list(text):
    try:
        return [int(v) for v in str(text).strip("()[] ").split(",") if v.strip()]
    except ValueError:
        return None


def _split(node, shape):
    """``(axis, [(begin, end) of each part], squeeze)`` of a split over data of ``shape``
    (``SliceChannel``; NumPy mode's ``_split_v2`` into sections or at indices), or None."""
    attrs = node.get("attrs") or {}
    try:
        axis = int(attrs.get("axis", 1))
        parts = int(attrs.get("num_outputs" if node["op"] == "SliceChannel" else "sections"))
    except (TypeError, ValueError):
        return None
    squeeze = str(attrs.get("squeeze_axis", "False")).lower() in ("true", "1")
    if not shape or not -len(shape) <= axis < len(shape) or squeeze and len(shape) < 2:
        return None
    axis %= len(shape)
    extent = shape[axis]
    if parts >= 1 and extent % parts == 0:
        starts = list(range(0, extent, extent // parts))
    else:       # _split_v2 at indices (the first is 0)
        starts = _int_list(attrs.get("indices")) if node["op"] == "_split_v2" else None
        if parts != 0 or not starts or starts[0] != 0 or starts != sorted(set(starts)) \
                or starts[-1] >= extent:
            return None
    bounds = list(zip(starts, starts[1:] + [extent]))
    if squeeze and any(end - begin != 1 for begin, end in bounds):
        return None
    return axis, bounds, squeeze


def varied_shapes(graph, infer, fixed=None):
    """The graph's shapes with each input axis in turn doubled, where MXNet infers them
    (a size the net does not take gives none); ``infer`` is an ``_mxnet.GraphShapes``.
    ``fixed`` (name -> shape, such as the parameters') is given at every size."""
    base = infer.input_shapes
    for name, shape in base.items():
        for axis in range(len(shape)):
            shapes = infer(graph, dict(fixed or {}, **dict(base, **{name: tuple(
                2 * d if i == axis else d for i, d in enumerate(shape))})))
            if shapes:
                yield shapes


def splits_as_slices(graph, context):
    """Rewrite each split (``SliceChannel``, ``_split_v2``) whose axis has the same size at
    every input size the net takes as ``slice_axis`` nodes (see the module docstring). Nodes
    the user's ``exclude`` names and splits of parameters are left as they are.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, ("SliceChannel", "_split_v2"), arity=1)
    if not getattr(context.infer_shapes, "input_shapes", None):
        return {}       # no other input size to try: no split's size is known fixed
    constant = parameter_entries(graph, set(context.param_shapes)) if candidates else []
    found = {}
    for node in candidates:
        data = node["inputs"][0]
        key = (nodes[data[0]]["name"], data[1])
        split = _split(node, shapes.get(key))
        if split and node["name"] not in context.excluded and not constant[data[0]]:
            found[node["name"]] = (node, key, split)
    for varied in varied_shapes(graph, context.infer_shapes) if found else ():
        for name, (node, key, (axis, _, _)) in list(found.items()):
            if (varied.get(key) or (None,) * (axis + 1))[axis] != shapes[key][axis]:
                del found[name]
    if not found:
        return {}
    build, moved = NodeBuilder(graph), {}
    index = {id(n): i for i, n in enumerate(nodes)}
    for node, key, (axis, parts, squeeze) in found.values():
        data = node["inputs"][0]
        drop = (0,) * axis + (-3, -2) if axis < len(shapes[key]) - 1 else \
            (0,) * (axis - 1) + (-3,)
        for part, (begin, end) in enumerate(parts):
            bounds = dict(axis=axis, begin=begin, end=end)
            name = node["name"] if part == 0 else "%s_part%d" % (node["name"], part)
            if part == 0 and not squeeze:
                node.update(op="slice_axis", attrs=dict(
                    private_attrs(node), **{k: str(v) for k, v in bounds.items()}))
                continue
            entry = build.add("slice_axis", name + ("_slice" if squeeze else ""), [data],
                              **bounds)
            if squeeze and part == 0:
                node.update(op="Reshape", inputs=[entry],
                            attrs=dict(private_attrs(node), shape=str(drop)))
                continue
            if squeeze:
                entry = build.add("Reshape", name, [entry], shape=drop)
            moved[(index[id(node)], part)] = entry
        context.rewritten[node["name"]] = (
            "split into %d parts run as slices (MXNet's split is 6-14x slower; bit-exact)"
            % len(parts))
    for node in nodes + build.nodes:
        node["inputs"] = [list(moved.get((e[0], e[1]), e)) for e in node["inputs"]]
    graph["heads"] = [list(moved.get((h[0], h[1]), h)) for h in graph["heads"]]
    build.append()
    _log.debug("Ran %d split(s) as slices.", len(found))
    return {}


_SLICES = ("slice_axis", "slice", "_npi_slice")


def whole_slices(graph, context):
    """Pass through the slices (``slice_axis``, ``slice``) that keep every value of their
    input at every input size the net takes (see the module docstring); slices the user's
    ``exclude`` names, and slices of a network input read as an output, stay.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, _SLICES, arity=1)
    if not candidates or not getattr(context.infer_shapes, "input_shapes", None):
        return {}
    heads = {h[0] for h in graph["heads"]}
    index = {id(n): i for i, n in enumerate(nodes)}
    key = lambda entry: (nodes[entry[0]]["name"], entry[1])     # noqa: E731
    found = {}
    for node in candidates:
        data = node["inputs"][0]
        shape = shapes.get(key(data))
        if shape and shapes.get((node["name"], 0)) == shape \
                and node["name"] not in context.excluded \
                and not (nodes[data[0]]["op"] == "null" and index[id(node)] in heads):
            found[index[id(node)]] = data
    fixed = {k: v for k, v in context.param_shapes.items() if known_shape(v)}
    for varied in varied_shapes(graph, context.infer_shapes, fixed) if found else ():
        for position, data in list(found.items()):
            if varied.get((nodes[position]["name"], 0)) != varied.get(key(data)):
                del found[position]
    if not found:
        return {}
    for position in sorted(found):      # (a whole slice of a whole slice: to the first input)
        data = found[position]
        if data[0] in found and data[1] == 0:
            found[position] = found[data[0]]
    for node in nodes:
        node["inputs"] = [list(found[e[0]]) if e[0] in found else e for e in node["inputs"]]
    graph["heads"] = [list(found[h[0]]) if h[0] in found else h for h in graph["heads"]]
    prune(graph)
    _log.debug("Passed %d whole slice(s) through.", len(found))
    return {}
