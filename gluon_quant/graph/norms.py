"""Normalizations MXNet runs slowly, run as its fast last-axis kernels.

MXNet 1.9.1 runs ``LayerNorm`` over the last axis with a fast kernel, and over any other
axis, ``InstanceNorm`` and ``GroupNorm`` with slow generic ones. On a 8x48x28x28 tensor
(2 threads): ``LayerNorm(axis=1)`` 11.1 ms, ``InstanceNorm`` 7.3 ms, ``GroupNorm`` 5.7 ms,
where the same normalization as a last-axis ``LayerNorm`` of transposed or reshaped data
takes 1.0-1.4 ms. None has an int8 kernel, so in a ConvNeXt (a channels-first LayerNorm
after its stem and before each downsampling convolution), a style-transfer net
(``InstanceNorm``) or a GroupNorm ResNet they stayed fp32 and were most of the int8 net's
time.

:func:`norms_as_last_axis_layernorm` rewrites them, the normalization node keeping its
name:

- ``LayerNorm(x, axis=a)``, ``a`` not the last axis: ``transpose`` the axis last,
  ``LayerNorm(axis=-1)``, ``transpose`` back; the same for ``softmax`` and
  ``log_softmax`` (a segmenter's class probabilities over axis 1: 38 ms for 8x21x128x128,
  9.4 ms transposed);
- ``InstanceNorm(x, gamma, beta)``: ``LayerNorm`` of ``x`` reshaped to ``(N, C, -1)``
  with unit scale, times ``gamma`` and plus ``beta`` per channel, reshaped back;
- ``GroupNorm(x, gamma, beta, num_groups=G)``: the same over ``(N, G, -1)``, ``gamma`` and
  ``beta`` per group (MXNet 1.9.1's GroupNorm has one of each per group).

The values are the same normalization computed in another order (float32 rounding: on
the tensors above, at most 1e-6 apart). The unit scale is made from the data's own shape
(``ones_like`` of one row), so the rewritten graph runs at any input size, as the net did.
A LayerNorm that also outputs its mean and variance, a node the user's ``exclude`` names
and a node whose input shape is not known are left as they are.

A layer normalization written out, as ConvNeXt's channels-first ``LayerNorm`` is
(``u = x.mean(1, keepdims=True); v = ((x - u) ** 2).mean(1, keepdims=True);
(x - u) / sqrt(v + eps)``), runs eight to ten MXNet operators, five of them broadcasts
over the whole tensor. :func:`written_layernorms` runs it as one ``LayerNorm`` over that
axis (unit scale, zero shift; the ``weight * y + bias`` after it stays as written), which
the rewrite above then runs over the last axis: a 3-stage ConvNeXt (batch 16 at 64 px)
ran its int8 net in 15.8-17.2 ms written out, 11.1-11.5 ms as ``LayerNorm``. Matched:
``x - mean(x)`` (computed once or twice), squared as ``square``, ``** 2`` or a product
with itself, averaged over the same single axis with ``keepdims``, then divided by
``sqrt(v + eps)`` or multiplied by ``rsqrt(v + eps)``; the same in NumPy mode. Up to
float32 rounding (the mean and variance summed in another order).
"""
import logging

from .inspect import is_true
from .builder import NodeBuilder
from .rewrites import attr_ints, private_attrs, redirect, shaped_nodes

__all__ = ["norms_as_last_axis_layernorm", "written_layernorms", "SLOW_NORMS"]

_log = logging.getLogger(__name__)

#: Normalizations over one axis, fast over the last one only (the same operators in
#: NumPy mode's graphs).
OVER_AXIS = frozenset(("LayerNorm", "softmax", "log_softmax"))
#: The normalizations the pass rewrites.
SLOW_NORMS = OVER_AXIS | {"InstanceNorm", "GroupNorm"}


def _rewrite_over_axis(node, index, data, shape, build):
    """Transpose the normalized axis last; return the entry readers now read, or None."""
    attrs, rank = node.get("attrs") or {}, len(shape)
    axis = int(attrs.get("axis", -1))
    if not -rank <= axis < rank or axis % rank == rank - 1 or \
            (node["op"] != "LayerNorm" and (len(node["inputs"]) != 1 or
                                            is_true(attrs.get("use_length", False)))):
        return None
    axis %= rank
    order = tuple(a for a in range(rank) if a != axis) + (axis,)
    back = tuple(order.index(a) for a in range(rank))
    moved = build.add("transpose", node["name"] + "_axis_last", [data], axes=order)
    node["inputs"][0] = moved
    node["attrs"] = dict(attrs, axis="-1")
    return build.add("transpose", node["name"] + "_axis_back",
                     [[index, 0, 0]], axes=back)


def _rewrite_grouped(node, index, data, shape, build):
    """InstanceNorm/GroupNorm as a unit LayerNorm over ``(N, groups, -1)``, the scale and
    shift per group; return the entry readers now read, or None."""
    attrs = node.get("attrs") or {}
    if len(shape) < 3 or len(node["inputs"]) != 3:
        return None
    eps = attrs.get("eps", "0.001" if node["op"] == "InstanceNorm" else "1e-05")
    name, (gamma, beta) = node["name"], node["inputs"][1:]
    groups = 0 if node["op"] == "InstanceNorm" else int(attrs.get("num_groups", 1))
    rows = build.add("Reshape", name + "_rows", [data], shape=(0, groups, -1))
    row = build.add("slice", name + "_one_row", [rows], begin=(0, 0, None),
                    end=(1, 1, None))
    row = build.add("Reshape", name + "_row", [row], shape=(-1,))
    node.update(op="LayerNorm", inputs=[rows, build.add("ones_like", name + "_unit", [row]),
                                        build.add("zeros_like", name + "_zero", [row])],
                attrs=dict(private_attrs(node), axis="-1", eps=eps))
    # the count given: no operator infers gamma's and beta's shapes now (a deferred-
    # initialized net traces them as (0,))
    count = shape[1] if not groups else groups
    scale = build.add("Reshape", name + "_gamma_per_group", [gamma], shape=(1, count, 1))
    shift = build.add("Reshape", name + "_beta_per_group", [beta], shape=(1, count, 1))
    out = build.add("broadcast_mul", name + "_scaled", [[index, 0, 0], scale])
    out = build.add("broadcast_add", name + "_shifted", [out, shift])
    return build.add("reshape_like", name + "_shaped", [out, data])


def norms_as_last_axis_layernorm(graph, context):
    """Rewrite ``LayerNorm``, ``softmax`` and ``log_softmax`` over an axis that is not
    the last as the same over the last axis of transposed data, ``InstanceNorm`` and
    ``GroupNorm`` as a last-axis ``LayerNorm``, in place. Nodes the user's ``exclude``
    names are left as they are.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    candidates, shapes = shaped_nodes(graph, context, SLOW_NORMS)
    nodes, build, moved = graph["nodes"], NodeBuilder(graph), {}
    wanted = {id(n) for n in candidates}
    for index, node in [(i, n) for i, n in enumerate(nodes) if id(n) in wanted]:
        if node["name"] in context.excluded or not node["inputs"] or \
                is_true((node.get("attrs") or {}).get("output_mean_var", False)):
            continue
        data = list(node["inputs"][0])
        shape = shapes.get((nodes[data[0]]["name"], data[1]))
        if not shape:
            continue
        if data[0] in moved and data[1] == 0:        # a normalization rewritten before it
            data = moved[data[0]]
        rewrite = _rewrite_over_axis if node["op"] in OVER_AXIS else _rewrite_grouped
        out = rewrite(node, index, data, shape, build)
        if out is not None:
            moved[index] = out
            context.rewritten[node["name"]] = (
                "run over the last axis of transposed or reshaped data (MXNet's kernel "
                "for that axis is 4-10x faster)")
    if not moved:
        return {}
    for reader in nodes:
        reader["inputs"] = [moved[e[0]] if e[0] in moved and e[1] == 0 else e
                            for e in reader["inputs"]]
    graph["heads"] = [moved[h[0]] if h[0] in moved and h[1] == 0 else h
                      for h in graph["heads"]]
    build.append()
    _log.debug("Ran %d normalization(s) as last-axis LayerNorms.", len(moved))
    return {}


_MEANS = ("mean", "_npi_mean")
_SUBS = ("broadcast_sub", "elemwise_sub", "_npi_subtract")
_PRODUCTS = ("broadcast_mul", "elemwise_mul", "_npi_multiply")
_EPS = ("_plus_scalar", "_npi_add_scalar")
#: ``d / sqrt(v + eps)`` and ``d * rsqrt(v + eps)``: the root, then the operators applying it.
_ROOTS = {"sqrt": ("broadcast_div", "_npi_true_divide"), "_npi_sqrt": ("broadcast_div",
          "_npi_true_divide"), "rsqrt": _PRODUCTS, "_npi_rsqrt": _PRODUCTS}


def _mean_axis(node):
    """The one axis a ``keepdims`` mean averages over, or None."""
    attrs = node.get("attrs") or {}
    if node["op"] not in _MEANS or not is_true(attrs.get("keepdims", False)) or \
            is_true(attrs.get("exclude", False)):
        return None
    axes = attr_ints(attrs, "axis")
    return axes[0] if len(axes) == 1 else None


def _centred(nodes, entry):
    """``(x, axis)`` where ``entry`` is ``x - mean(x, axis, keepdims=True)``, or None."""
    node = nodes[entry[0]]
    if node["op"] not in _SUBS or entry[1] != 0 or len(node["inputs"]) != 2:
        return None
    data, mean = node["inputs"]
    axis = _mean_axis(nodes[mean[0]])
    if axis is None or nodes[mean[0]]["inputs"][0] != data:
        return None
    return tuple(data), axis


def _squared(nodes, entry):
    """The entry ``entry`` squares (``square``, ``** 2`` already made ``square``, or a
    product of two equal entries), or None."""
    node = nodes[entry[0]]
    if node["op"] in ("square", "_npi_square") and len(node["inputs"]) == 1:
        return node["inputs"][0]
    if node["op"] in _PRODUCTS and len(node["inputs"]) == 2:
        first, second = (_centred(nodes, e) for e in node["inputs"])
        if first is not None and first == second:
            return node["inputs"][0]
    return None


def _written_layernorm(nodes, node):
    """``(x, axis, eps)`` where ``node`` ends a layer normalization written out, or None."""
    if len(node["inputs"]) != 2:
        return None
    # a division's root is its divisor; a product's either factor
    orders = (node["inputs"],) if node["op"] not in _PRODUCTS else \
        (node["inputs"], node["inputs"][::-1])
    for centred, root in orders:
        root_node = nodes[root[0]]
        if node["op"] not in _ROOTS.get(root_node["op"], ()):
            continue
        plus = nodes[root_node["inputs"][0][0]]
        found = _centred(nodes, centred)
        if found is None or plus["op"] not in _EPS:
            continue
        var = nodes[plus["inputs"][0][0]]
        squared = _squared(nodes, var["inputs"][0]) if _mean_axis(var) is not None else None
        if squared is None or _centred(nodes, squared) != found or _mean_axis(var) != found[1]:
            continue
        return list(found[0]), found[1], float((plus.get("attrs") or {}).get("scalar", 0))
    return None


def _affine(nodes, readers, shapes, index, ops, per_channel):
    """``(node index, per-channel entry)`` where node ``index``'s one reader applies
    ``ops`` to it and a per-channel tensor, or None."""
    if len(readers.get(index, ())) != 1:
        return None
    reader = readers[index][0]
    node = nodes[reader] if reader >= 0 else {"op": "output"}
    if node["op"] not in ops or len(node["inputs"]) != 2:
        return None
    for mine, other in (node["inputs"], node["inputs"][::-1]):
        shape = tuple(shapes.get((nodes[other[0]]["name"], other[1])) or ())
        if mine[0] == index and mine[1] == 0 and 0 < len(shape) <= len(per_channel) and \
                (1,) * (len(per_channel) - len(shape)) + shape == per_channel:
            return reader, other        # broadcast like a (1, C, 1, 1) or (C,) tensor
    return None


def written_layernorms(graph, context):
    """Run layer normalizations written out with means, squares and a root as one
    ``LayerNorm`` over their axis, in place, with the per-channel scale and shift written
    after it (``y * weight.reshape(1, -1, 1, 1) + bias...``) as its own (unit scale and
    zero shift where there are none); the node keeps the name of the division that ended
    the normalization. Nodes the user's ``exclude`` names and graphs whose shapes are not
    known are left as they are.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    ends = set(_PRODUCTS) | {op for ops in _ROOTS.values() for op in ops}
    candidates, shapes = shaped_nodes(graph, context, ends, arity=2)
    nodes, build, done, folded = graph["nodes"], NodeBuilder(graph), [], {}
    readers = {}        # output 0's readers; a network output counts as one (-1)
    for index, entries in [(i, n["inputs"]) for i, n in enumerate(nodes)] + \
            [(-1, graph["heads"])]:
        for entry in entries:
            if entry[1] == 0:
                readers.setdefault(entry[0], []).append(index)
    for node in candidates:
        found = None if node["name"] in context.excluded else _written_layernorm(nodes, node)
        shape = found and shapes.get((nodes[found[0][0]]["name"], found[0][1]))
        if not shape or not -len(shape) <= found[1] < len(shape) or found[2] <= 0:
            continue
        data, axis, eps = found[0], found[1] % len(shape), found[2]
        name, index = node["name"], nodes.index(node)
        begin = tuple(None if a == axis else 0 for a in range(len(shape)))
        end = tuple(None if a == axis else 1 for a in range(len(shape)))
        row = build.add("slice", name + "_one_row", [data], begin=begin, end=end)
        row = build.add("Reshape", name + "_row", [row], shape=(-1,))
        params = [build.add("ones_like", name + "_unit", [row]),
                  build.add("zeros_like", name + "_zero", [row])]
        per_channel = tuple(d if a == axis else 1 for a, d in enumerate(shape))
        last = index
        for slot, ops in ((0, _PRODUCTS), (1, ("broadcast_add", "_npi_add"))):
            affine = _affine(nodes, readers, shapes, last, ops, per_channel)
            if affine is None or nodes[affine[0]]["name"] in context.excluded:
                continue
            params[slot] = build.add("Reshape", "%s_%s" % (name, ("gamma", "beta")[slot]),
                                     [affine[1]], shape=(-1,))
            folded[nodes[affine[0]]["name"]] = name
            last = affine[0]
        node.update(op="LayerNorm", inputs=[data] + params,
                    attrs=dict(private_attrs(node), axis=str(axis), eps=repr(eps)))
        done.append(name)
        context.rewritten[name] = ("a layer normalization written out (mean, square, "
                                   "root): run as one LayerNorm over axis %d" % axis)
    if not done:
        return {}
    build.append()
    where = {n["name"]: i for i, n in enumerate(graph["nodes"])}
    redirect(graph, {where[old]: where[new] for old, new in folded.items()})
    _log.debug("Ran %d written-out layer normalization(s) as LayerNorm: %s", len(done), done)
    return {}
