"""Checks of a graph's edges before MXNet loads it (its loader trusts them)."""
import json

from ..errors import GraphError
from .base import load_graph


def check_graph_entries(graph, sym=None):
    """Check that every edge of a graph (JSON dict) names an existing node output.

    MXNet's loader accepts an input entry ``[node, output, version]`` whose output index
    is out of range and then frees invalid memory when the graph runs (the process
    aborts): each entry is checked here, in fused subgraphs too. The graph and all its
    subgraphs are loaded together, as one graph, so that MXNet counts every node's
    outputs in one call; ``sym``, the Symbol already loaded from ``graph``, saves loading
    the main graph again.

    Raises
    ------
    ValueError
        Naming the first bad entry.
    """
    graphs = [graph]
    for sub in graphs:              # grows while walking: subgraphs of subgraphs too
        for node in sub["nodes"]:
            graphs.extend(node.get("subgraphs", []) or [])
    if sym is None:
        counts = _output_counts(graphs)
    else:
        counts = [_symbol_output_counts(sym, graph)] + _output_counts(graphs[1:])
    for number, (sub, sub_counts) in enumerate(zip(graphs, counts)):
        nodes = sub["nodes"]
        for index, node in enumerate(nodes):
            inputs = node.get("inputs", [])
            entries = [*inputs, *sub.get("heads", [])] if index == len(nodes) - 1 else inputs
            for position, entry in enumerate(entries):
                head = position >= len(inputs)
                # type() is int: a bool is not an index (loads at ~1 us a node)
                if type(entry) is not list or len(entry) < 2 \
                        or any(type(v) is not int for v in entry):
                    raise ValueError("%s is %r, not [node, output, version]" % (
                        "graph output" if head else "input of %r" % node.get("name"), entry))
                source, slot = entry[0], entry[1]
                count = sub_counts[source] if 0 <= source < len(nodes) else 0
                if not 0 <= slot < count or (not head and source >= index):
                    raise ValueError("%s %r refers to a node output that does not exist%s" % (
                        "graph output" if head else "input of %r" % node.get("name"), entry,
                        " (in a fused subgraph)" if number else ""))


def _symbol_output_counts(sym, graph):
    """How many outputs each node of ``graph`` has in ``sym`` (loaded from it).

    MXNet names a variable's output after the variable and an operator's ``NODE_SUFFIX``:
    an output named exactly like a variable is that variable's, any other belongs to the
    operator whose name is its longest prefix. Where that is ambiguous (an operator
    ``rnn`` with an output ``rnn_state`` beside a variable ``rnn_state``), the internal
    graph's JSON says which node it is.
    """
    variables = {n.get("name") for n in graph["nodes"] if n.get("op") == "null"}
    operators = {n.get("name") for n in graph["nodes"] if n.get("op") != "null"}
    counts = {}
    for output in sym.get_internals().list_outputs():
        if output in variables:
            if output in counts:
                return _json_output_counts(sym, graph)
            counts[output] = 1
            continue
        owner = next((output[:cut] for cut in _underscores(output)
                      if output[:cut] in operators), None)
        if owner is None:
            return _json_output_counts(sym, graph)
        counts[owner] = counts.get(owner, 0) + 1
    return [counts.get(n.get("name"), 0) for n in graph["nodes"]]


def _underscores(name):
    yield len(name)
    cut = name.rfind("_")
    while cut > 0:
        yield cut
        cut = name.rfind("_", 0, cut)


def _json_output_counts(sym, graph):
    internals = json.loads(sym.get_internals().tojson())
    names = [n["name"] for n in internals["nodes"]]
    counts = {}
    for entry in internals["heads"]:
        counts[names[entry[0]]] = counts.get(names[entry[0]], 0) + 1
    return [counts.get(n.get("name"), 0) for n in graph["nodes"]]


#: Operators found in oneDNN's fused subgraphs that always have one visible output.
_ONE_OUTPUT = frozenset(["Convolution", "FullyConnected", "Activation", "clip",
                         "elemwise_add", "_plus", "elemwise_mul", "_contrib_quantized_act"])


def _known_counts(sub):
    """Output counts of a graph made of variables and ``_ONE_OUTPUT`` operators (and
    BatchNorm without its mean/var outputs), or None."""
    counts = []
    for node in sub["nodes"]:
        op, attrs = node.get("op"), node.get("attrs") or {}
        if op == "null" or op in _ONE_OUTPUT or (op == "BatchNorm" and str(
                attrs.get("output_mean_var", "False")).lower() in ("false", "0")):
            counts.append(1)
        else:
            return None
    return counts


def _output_counts(graphs):
    """How many outputs MXNet gives each node of each graph: one list per graph."""
    known = [_known_counts(sub) for sub in graphs]
    if all(k is not None for k in known):
        return known
    merged, keys = [], []
    for number, sub in enumerate(graphs):
        for node in sub["nodes"]:
            # Unique names, and no inputs: only each node's own outputs are counted.
            copy = {k: v for k, v in node.items() if k != "inputs"}
            copy["name"] = "%d/%s" % (number, node.get("name"))
            copy["inputs"] = []
            keys.append(copy["name"])
            merged.append(copy)
    # Nodes without inputs whose operator needs some cannot be built: count them apart.
    if not merged:
        return []
    simple = {"nodes": merged, "arg_nodes": [], "heads": [[i, 0, 0] for i in range(len(merged))]}
    try:
        flat = _symbol_output_counts(load_graph(simple), simple)
        counts = dict(zip(keys, flat))
    except GraphError:
        counts = None
    result, start = [], 0
    for sub in graphs:
        names = keys[start:start + len(sub["nodes"])]
        start += len(names)
        if counts is None:
            internals = load_graph(sub).get_internals()
            own = {}
            for i in range(len(internals.list_outputs())):
                own[internals[i].name] = own.get(internals[i].name, 0) + 1
            result.append([own.get(n.get("name"), 0) for n in sub["nodes"]])
        else:
            result.append([counts.get(n, 0) for n in names])
    return result
