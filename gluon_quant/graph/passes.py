"""Graph rewrites that fix quantization failures at their root, and graph queries they need.

:func:`prepare` runs on the traced fp32 graph before the backend's fusion and MXNet's
quantization pass. Each rewrite is exact in fp32 (same outputs) and turns an operator
that has no int8 kernel into an equivalent one that has, so that int8 regions are not cut
by quantize/dequantize pairs:

* ``AdaptiveAvgPooling2D(output_size=1)`` (squeeze-excite blocks of SE-ResNet and
  MobileNetV3) becomes a global average ``Pooling``, which runs in int8: the pooled
  vector and the excitation convolutions then stay int8 instead of leaving and
  re-entering int8 around the pooling.

:func:`int8_mul_inputs` runs on the quantized graph. MXNet's int8 ``elemwise_mul`` only
accepts int8 inputs, but ``dtype='auto'`` quantizes non-negative tensors (the hard sigmoid
of MobileNetV3's hard-swish, ``x * relu6(x + 3) / 6``) to uint8, which made MobileNetV3
fail at its first forward ("Expected: unsigned char v.s. given char"). The pass makes the
quantize nodes feeding a multiplication emit int8 (one bit of precision for a correct
kernel); a multiplication fed directly by a layer that emits uint8 is reported so that it
can stay in fp32.
"""
import collections
import json
import logging

import mxnet as mx

__all__ = ["prepare", "int8_mul_inputs", "downstream_nodes", "count_ops", "QDQ_OPS"]

_log = logging.getLogger(__name__)

#: The operators that move tensors in and out of int8.
QDQ_OPS = ("_contrib_quantize_v2", "_contrib_dequantize", "_contrib_requantize")


def _is_global_adaptive_pool(node):
    if node["op"] != "_contrib_AdaptiveAvgPooling2D":
        return False
    size = (node.get("attrs") or {}).get("output_size", "()")
    return size.replace(" ", "") in ("1", "(1,1)", "(1,)", "[1,1]")


def prepare(sym):
    """Rewrite ``sym`` so that more of it can run in int8, with identical fp32 outputs.

    Parameters
    ----------
    sym : mxnet.symbol.Symbol
        The traced fp32 graph.

    Returns
    -------
    mxnet.symbol.Symbol
        The rewritten graph (``sym`` itself when nothing applies). Node names are kept,
        so exclusions and reports still name the user's layers.
    """
    graph = json.loads(sym.tojson())
    rewritten = 0
    for node in graph["nodes"]:
        if _is_global_adaptive_pool(node):
            node["op"] = "Pooling"
            node["attrs"] = {"global_pool": "True", "pool_type": "avg", "kernel": "(1, 1)"}
            rewritten += 1
    if not rewritten:
        return sym
    _log.debug("Rewrote %d AdaptiveAvgPooling2D(1) nodes as global average pooling.", rewritten)
    return mx.sym.load_json(json.dumps(graph))


#: Quantized operators whose int8 kernel takes int8 inputs only.
_INT8_ONLY_OPS = ("_contrib_quantized_elemwise_mul",)
#: Members of a fused node that make its int8 output unsigned.
_UNSIGNED_MEMBERS = ("Activation", "clip", "relu")


def int8_mul_inputs(qsym):
    """Make every quantize node feeding an int8-only operator emit int8.

    Parameters
    ----------
    qsym : mxnet.symbol.Symbol
        The quantized (uncalibrated) graph.

    Returns
    -------
    qsym : mxnet.symbol.Symbol
        The graph with those quantize nodes set to ``out_type='int8'``.
    fp32_nodes : dict of str to str
        Original (fp32 graph) names of int8-only operators fed by a layer that emits
        uint8, which must stay in fp32 -> the reason.
    """
    graph = json.loads(qsym.tojson())
    nodes = graph["nodes"]
    changed, fp32_nodes = 0, {}
    for node in nodes:
        if node["op"] not in _INT8_ONLY_OPS:
            continue
        for src_index, _, _ in node["inputs"][:2]:
            src = nodes[src_index]
            if src["op"] == "_contrib_quantize_v2":
                attrs = src.setdefault("attrs", {})
                if attrs.get("out_type") != "int8":
                    attrs["out_type"] = "int8"
                    changed += 1
            elif any(m["op"] in _UNSIGNED_MEMBERS
                     for sub in src.get("subgraphs", ()) for m in sub["nodes"]):
                name = node["name"][len("quantized_"):] if node["name"].startswith(
                    "quantized_") else node["name"]
                fp32_nodes[name] = ("int8 %s takes int8 inputs only and %s emits uint8"
                                    % (node["op"], src["name"]))
    if changed:
        _log.debug("Set %d quantize node(s) feeding int8-only operators to int8.", changed)
        qsym = mx.sym.load_json(json.dumps(graph))
    return qsym, fp32_nodes


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


def count_ops(sym, ops=QDQ_OPS):
    """How many nodes of each operator in ``ops`` the graph ``sym`` has.

    Parameters
    ----------
    sym : mxnet.symbol.Symbol
    ops : tuple of str

    Returns
    -------
    dict of str to int
        Operator -> count (0 for absent operators).
    """
    counts = collections.Counter(n["op"] for n in json.loads(sym.tojson())["nodes"])
    return {op: counts.get(op, 0) for op in ops}
