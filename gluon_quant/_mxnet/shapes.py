"""Shapes of a graph's inner tensors, and the reshapes MXNet's shape inference lets
through with the wrong number of values."""
import re

import mxnet as mx
import numpy as np

from .base import MXNetError, graph_json, load_graph, native_output


def entry_positions(graph, internals):
    """``(node name, output index) -> position`` in ``internals.list_outputs()`` ({} if the
    two do not line up)."""
    # Internals list the nodes in the JSON graph's order (both are MXNet's depth-first
    # order from the heads), each node's outputs together: X_output, X_output_min, ...
    # A name can start with both the next node's name and the current one's, longer
    # (X_pool_min of node X_pool, followed by node X): it is the current node's output.
    nodes = [n["name"] for n in graph["nodes"]]
    position_of, current, position = {}, -1, 0
    for i, name in enumerate(internals.list_outputs()):
        mine = nodes[current] if current >= 0 else ""
        if current + 1 < len(nodes) and name.startswith(nodes[current + 1]) and not (
                len(mine) > len(nodes[current + 1]) and name.startswith(mine + "_")):
            current, position = current + 1, 0
        else:
            position += 1
        position_of[(nodes[max(current, 0)], position)] = i
    return position_of if current == len(nodes) - 1 else {}


def infer_graph_shapes(graph, input_shapes):
    """Shape of every output entry of a JSON graph's nodes, given its input shapes.

    Returns
    -------
    dict
        ``(node name, output index) -> shape`` (None where it is not known); {} when
        MXNet cannot infer the graph's shapes.
    """
    internals = load_graph(graph).get_internals()
    try:
        with native_output([]):
            _, out_shapes, _ = internals.infer_shape_partial(**input_shapes)
    except mx.base.MXNetError:
        return {}
    return {entry: (tuple(out_shapes[i]) if out_shapes[i] and all(d > 0 for d in out_shapes[i])
                    else None)
            for entry, i in entry_positions(graph, internals).items()}


_RESHAPES = frozenset(("Reshape", "reshape", "_np_reshape", "_npx_reshape"))


def fixed_reshapes(graph):
    """The reshape nodes of a JSON graph whose target has no ``-1``, ``-2``, ``-3`` or
    ``-4`` (every dimension given, or copied with 0): MXNet's shape inference gives them
    their target whatever the input's size, so a mismatch shows only when the graph runs
    and reads or writes past the input's memory."""
    fixed = []
    for node in graph["nodes"]:
        attrs = node.get("attrs", {})
        target = attrs.get("shape", attrs.get("newshape"))
        if node["op"] in _RESHAPES and target is not None and not any(
                int(d) < 0 for d in re.findall(r"-?\d+", target)):
            fixed.append(node)
    return fixed


def reshape_size_error(sym, shapes):
    """An MXNetError naming the first reshape to a fixed shape (:func:`fixed_reshapes`)
    that inputs of ``shapes`` ({name: shape}) would give another number of values; None
    when there is none."""
    graph = graph_json(sym)
    reshapes = fixed_reshapes(graph)
    if not reshapes:
        return None
    nodes = graph["nodes"]
    known = infer_graph_shapes(graph, shapes)
    for node in reshapes:
        source, index = node["inputs"][0][:2]
        before = known.get((nodes[source]["name"], index))
        after = known.get((node["name"], 0))
        if before and after and int(np.prod(before)) != int(np.prod(after)):
            return MXNetError(
                "Error in operator %s: Reshape of an input of shape %s (%d values) to shape "
                "%s (%d values): the graph takes other input shapes only"
                % (node["name"], before, int(np.prod(before)), after, int(np.prod(after))))
    return None
