"""Shapes of a graph's inner tensors, and the reshapes MXNet's shape inference lets
through with the wrong number of values."""
import re

import mxnet as mx
import numpy as np

from .base import MXNetError, graph_inputs, graph_json, load_graph, native_output


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
    sym = load_graph(graph)
    internals = sym.get_internals()
    try:
        with native_output([]):
            _, out_shapes, _ = internals.infer_shape_partial(
                **graph_inputs(internals, input_shapes))
    except mx.base.MXNetError:
        return {}
    # MXNet's own node order, which the internals follow (a pass may have reordered the
    # nodes of ``graph``: a folded weight placed before its first reader).
    return {entry: (tuple(out_shapes[i]) if out_shapes[i] and all(d > 0 for d in out_shapes[i])
                    else None)
            for entry, i in entry_positions(graph_json(sym), internals).items()}


class GraphShapes:
    """:func:`infer_graph_shapes` at the traced input shapes, or at others.

    Parameters
    ----------
    input_shapes : dict of str to tuple
        The graph inputs' shapes at the calibration batch size (``input_shapes``).
    """

    def __init__(self, input_shapes):
        self.input_shapes = dict(input_shapes)

    def __call__(self, graph, input_shapes=None):
        """Shapes of ``graph``'s entries at ``input_shapes`` (by default the traced ones)."""
        return infer_graph_shapes(graph, self.input_shapes if input_shapes is None
                                  else input_shapes)


_RESHAPES = frozenset(("Reshape", "reshape", "_np_reshape", "_npx_reshape"))


def fixed_reshapes(graph):
    """The reshape nodes of a JSON graph whose target has no ``-1``, ``-2``, ``-3`` or
    ``-4`` (every dimension given, or copied with 0): they take only inputs of the sizes
    the network was written for."""
    return [node for node in reshapes(graph) if not any(
        int(d) < 0 for d in re.findall(r"-?\d+", _target(node)))]


def reshapes(graph):
    """The reshape nodes of a JSON graph. MXNet 1.9.1's shape inference never compares a
    reshape's output size with its input's: ``(0, 8, 256)`` takes any input, ``(-1, 5)``
    turns 24 values into ``(4, 5)``, ``(-3, 0)`` drops a fourth dimension; the graph then
    reads or writes past the input's memory when it runs."""
    return [node for node in graph["nodes"] if node["op"] in _RESHAPES]


def _target(node):
    attrs = node.get("attrs", {})
    return attrs.get("shape", attrs.get("newshape", attrs.get("target_shape", "")))


class ReshapeSizeError(MXNetError):
    """A reshape given inputs of another size than its target's (MXNet never checks it:
    running the graph on them reads or writes past their memory)."""


class ReshapeCheck:
    """The sizes of a graph's reshapes (:func:`reshapes`) for given input shapes: built once
    per graph (its JSON, internals and entry positions), then one shape inference per
    check.

    Parameters
    ----------
    sym : Symbol
        The graph.
    """

    def __init__(self, sym):
        graph = graph_json(sym)
        nodes = reshapes(graph)
        fixed = {node["name"] for node in fixed_reshapes(graph)}
        self._internals = sym.get_internals() if nodes else None
        self._inputs = set(sym.list_inputs()) if nodes else set()
        position = entry_positions(graph, self._internals) if nodes else {}
        names = [node["name"] for node in graph["nodes"]]
        # (name, position of its input entry, of its output, whether its target is fixed)
        self._pairs = [(node["name"], position.get((names[node["inputs"][0][0]],
                                                    node["inputs"][0][1])),
                        position.get((node["name"], 0)), node["name"] in fixed)
                       for node in nodes]

    def __bool__(self):
        return bool(self._pairs)

    def error(self, shapes):
        """A :class:`ReshapeSizeError` naming the first reshape that inputs of ``shapes``
        ({name: shape}) would give another number of values; None when there is none (or
        when MXNet cannot infer the shapes: running the graph then reports that)."""
        if not self._pairs:
            return None
        try:
            with native_output([]):
                _, out_shapes, _ = self._internals.infer_shape_partial(
                    **{n: s for n, s in shapes.items() if n in self._inputs})
        except mx.base.MXNetError:
            return None
        for name, source, target, fixed in self._pairs:
            if source is None or target is None:
                continue
            before, after = out_shapes[source], out_shapes[target]
            if not (before and after and all(d > 0 for d in tuple(before) + tuple(after))):
                continue
            if int(np.prod(before)) != int(np.prod(after)):
                return ReshapeSizeError(
                    "Error in operator %s: Reshape of an input of shape %s (%d values) to "
                    "shape %s (%d values)%s" % (
                        name, tuple(before), int(np.prod(before)), tuple(after),
                        int(np.prod(after)), " (a fixed target: the graph takes other input "
                        "shapes only)" if fixed else ""))
        return None


def reshape_size_error(sym, shapes):
    """A :class:`ReshapeSizeError` naming the first reshape (:func:`reshapes`) that inputs
    of ``shapes`` ({name: shape}) would give another number of values; None when there is
    none."""
    return ReshapeCheck(sym).error(shapes)
