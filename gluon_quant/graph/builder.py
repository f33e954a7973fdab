"""Nodes a rewrite appends to a JSON graph, numbered after the graph's own."""
from .rewrites import append_nodes

__all__ = ["NodeBuilder"]


class NodeBuilder:
    """Nodes to append to ``graph``: each :meth:`add` returns the entry of the new node's
    output 0 (its index counts after the graph's nodes), which other new nodes and the
    graph's own nodes may read; :meth:`append` adds them and puts every node back in
    topological order (:func:`~gluon_quant.graph.rewrites.append_nodes`).

    Parameters
    ----------
    graph : dict
        The JSON graph the nodes go to.
    """

    def __init__(self, graph):
        self.graph, self.nodes = graph, []
        self._first = len(graph["nodes"])

    def add(self, op, name, inputs, **attrs):
        """A new node running ``op`` over the ``inputs`` entries; attribute values are
        written as MXNet reads them (``str``). Returns its output-0 entry."""
        self.nodes.append({"op": op, "name": name, "inputs": [list(e) for e in inputs],
                           "attrs": {k: str(v) for k, v in attrs.items()}})
        return [self._first + len(self.nodes) - 1, 0, 0]

    def append(self):
        """Append the new nodes to the graph (nothing when there are none)."""
        if self.nodes:
            append_nodes(self.graph, self.nodes)
