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
"""
import logging

from .inspect import is_true
from .builder import NodeBuilder
from .rewrites import private_attrs, shaped_nodes

__all__ = ["norms_as_last_axis_layernorm", "SLOW_NORMS"]

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
