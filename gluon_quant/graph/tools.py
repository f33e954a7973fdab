"""Graph helpers for debugging and presets, outside the pipeline's passes: rounding an fp32
graph's tensors onto their 8-bit grids (:func:`insert_fake_quant`, the doctor's activation
floor), the nodes downstream of others, the nodes whose values nothing reads (only their
shapes), operator counts, the operators of an int8 graph."""
import collections
import json

from .rewrites import append_nodes, num_outputs

__all__ = ["insert_fake_quant", "downstream_nodes", "shape_only_nodes", "count_ops",
           "int8_operators", "QDQ_OPS"]

#: The operators that move tensors in and out of int8.
QDQ_OPS = ("_contrib_quantize_v2", "_contrib_dequantize", "_contrib_requantize")


def insert_fake_quant(graph, ranges):
    """Round every tensor of an fp32 graph that has a range onto its finest 8-bit grid.

    Each entry whose table key (``X_output``, ``X_output1``..., or an input's name) is in
    ``ranges`` is followed by a quantize / dequantize pair: uint8 over ``[0, max]`` when
    the range is non-negative, int8 over ``[-m, m]`` (``m`` the larger magnitude)
    otherwise, exactly MXNet's int8 quantization. Everything else stays fp32.

    Parameters
    ----------
    graph : dict
        An fp32 graph as JSON (modified in place).
    ranges : Mapping of str to (float, float)
        Calibrated ranges by table key.

    Returns
    -------
    dict of str to str
        Name of each rounded node (variable or operator, first output) -> name of the node
        that now gives its rounded value.
    """
    nodes = graph["nodes"]
    new, replaced, rounded = [], {}, {}
    for index, node in enumerate(nodes):
        outputs = [(0, node["name"])] if node["op"] == "null" else [
            (k, node["name"] + ("_output" if k == 0 else "_output%d" % k))
            for k in range(num_outputs(node))]
        for out, key in outputs:
            if key not in ranges:
                continue
            lo, hi = (float(v) for v in ranges[key])
            base = len(nodes) + len(new)
            new.append({"op": "_contrib_quantize_v2", "name": "%s_%d_fakequant" % (
                node["name"], out), "inputs": [[index, out, 0]], "attrs": {
                    "out_type": "uint8" if lo >= 0.0 else "int8",
                    "min_calib_range": repr(lo), "max_calib_range": repr(hi)}})
            new.append({"op": "_contrib_dequantize", "name": "%s_%d_fakedequant" % (
                node["name"], out), "inputs": [[base, 0, 0], [base, 1, 0], [base, 2, 0]],
                "attrs": {"out_type": "float32"}})
            replaced[(index, out)] = base + 1
            if out == 0:
                rounded[node["name"]] = new[-1]["name"]
    for node in nodes:
        node["inputs"] = [[replaced[(e[0], e[1])], 0, 0] if (e[0], e[1]) in replaced else e
                          for e in node["inputs"]]
    graph["heads"] = [[replaced[(h[0], h[1])], 0, 0] if (h[0], h[1]) in replaced else h
                      for h in graph["heads"]]
    if new:
        append_nodes(graph, new)
    return rounded


def downstream_nodes(graph, seeds):
    """Names of every node fed, directly or not, by a node in ``seeds`` (seeds excluded).

    Parameters
    ----------
    graph : GraphView
    seeds : iterable of str
        Node names.

    Returns
    -------
    set of str
    """
    consumers = collections.defaultdict(list)
    for node in graph:
        for src in node.inputs:
            consumers[src].append(node.name)
    seeds = set(seeds)
    found, todo = set(), list(seeds)
    while todo:
        for nxt in consumers.get(todo.pop(), ()):
            if nxt not in found and nxt not in seeds:
                found.add(nxt)
                todo.append(nxt)
    return found


#: Operators that read only the shape of some inputs: all of them (None), or those slots.
SHAPE_READERS = {"ones_like": None, "zeros_like": None, "shape_array": None,
                 "size_array": None, "reshape_like": (1,), "broadcast_like": (1,),
                 "slice_like": (1,)}


def shape_only_nodes(graph):
    """Names of the operator nodes whose values reach no output of ``graph``: they feed
    only what reads their shape (``ones_like``, the second input of ``reshape_like``...),
    directly or through other such nodes. The kernel of ones that
    :func:`gluon_quant.graph.pooling.axis_reductions` cuts from a slice of the data is one;
    how well int8 reproduces such a slice says nothing about the network.

    Parameters
    ----------
    graph : dict
        The graph as JSON.

    Returns
    -------
    set of str
    """
    nodes = graph["nodes"]
    read = [False] * len(nodes)
    for head in graph.get("heads", ()):
        read[head[0]] = True
    for i in range(len(nodes) - 1, -1, -1):     # consumers come after their inputs
        if not read[i]:
            continue
        shape_slots = SHAPE_READERS.get(nodes[i]["op"], ())
        for slot, entry in enumerate(nodes[i]["inputs"]):
            if shape_slots is not None and slot not in shape_slots:
                read[entry[0]] = True
    return {n["name"] for n, r in zip(nodes, read) if not r and n["op"] != "null"}


def count_ops(graph, ops=QDQ_OPS):
    """How many nodes of each operator in ``ops`` a graph has.

    Parameters
    ----------
    graph : dict or mxnet.symbol.Symbol
        The graph as JSON dict, or a Symbol.
    ops : tuple of str

    Returns
    -------
    dict of str to int
        Operator -> count (0 for absent operators).
    """
    if hasattr(graph, "tojson"):
        graph = json.loads(graph.tojson())
    counts = collections.Counter(n["op"] for n in graph["nodes"])
    return {op: counts.get(op, 0) for op in ops}


def int8_operators(graph):
    """The operators of ``graph`` (JSON dict) that only an already quantized graph has:
    MXNet's quantize, dequantize and requantize, its ``_contrib_quantized_*`` operators and
    fused oneDNN nodes built quantized. Sorted; empty for an fp32 graph."""
    found = set()
    for node in graph["nodes"]:
        op, attrs = node["op"], node.get("attrs") or {}
        if op in QDQ_OPS or op == "_contrib_quantize" or op.startswith("_contrib_quantized_") \
                or (op.startswith("_sg_") and str(attrs.get("quantized")).lower() in ("true", "1")):
            found.add(op)
    return sorted(found)
