"""Graph rewrites that fix quantization failures at their root, and graph queries they need.

:func:`prepare` runs on the traced fp32 graph before the backend's fusion and MXNet's
quantization pass. Each rewrite is exact in fp32 (same outputs) and turns an operator
that has no int8 kernel into an equivalent one that has, so that int8 regions are not cut
by quantize/dequantize pairs:

* ``AdaptiveAvgPooling2D(output_size=1)`` (squeeze-excite blocks of SE-ResNet and
  MobileNetV3) becomes a global average ``Pooling``, which has an int8 kernel.

:func:`signed_global_pools` runs on the fused fp32 graph and lists the global average
poolings that must stay fp32. MXNet's int8 pooling gives its output the input's scale, so
the mean of a signed, zero-centred tensor (a BatchNorm output, the squeeze of SE-ResNet)
is rounded onto a grid much coarser than the means themselves: on random-weight
SE-ResNet-50 the pooled vector kept 25 dB SQNR in int8 against 46 dB for the fp32 mean of
the same int8 input. In fp32 the pooled vector gets a calibrated range of its own (one
quantize of a ``(N, C)`` vector); the cost is one fp32 read of the tensor.

:func:`int8_mul_inputs` runs on the quantized graph. MXNet's int8 ``elemwise_mul`` only
accepts int8 inputs, but ``dtype='auto'`` quantizes non-negative tensors (the hard sigmoid
of MobileNetV3's hard-swish, ``x * relu6(x + 3) / 6``) to uint8, which made MobileNetV3
fail at its first forward ("Expected: unsigned char v.s. given char"). The pass makes the
quantize nodes feeding a multiplication emit int8 (one bit of precision for a correct
kernel); a multiplication fed directly by a layer that emits uint8 is reported so that it
can stay in fp32.

:func:`fused_sum_dtypes` runs on the final int8 graph (oneDNN). A convolution fused with a
residual sum writes its result into the sum operand's buffer, in the operand's data type,
whatever the output type its ranges were computed for. Two mixes are wrong in MXNet 1.9.1:

* int8 operand, uint8 output (``relu(conv(x) + signed shortcut)``, the first block of every
  ResNet v1 stage): the kernel scales for 255 levels but saturates at int8's 127, so every
  value above half the calibrated range is clipped. The pass widens the node's range by
  255/127, so that 127 steps cover the calibrated range (one bit less, nothing clipped).
* uint8 operand, int8 output (``conv(x) + relu(y)`` with no activation after the sum):
  negative sums are clipped to 0. The pass re-quantizes the operand to int8 first
  (dequantize, then quantize over ``[-max, max]``).
"""
import collections
import json
import logging

import mxnet as mx
import numpy as np

__all__ = ["prepare", "signed_global_pools", "int8_mul_inputs", "fused_sum_dtypes",
           "insert_fake_quant", "downstream_nodes", "count_ops", "QDQ_OPS"]

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


#: Operators (as GraphView describes them) whose output is never negative.
_UNSIGNED_OUTPUTS = ("Activation(relu)", "Activation(sigmoid)", "Activation(softrelu)",
                     "relu", "sigmoid")
#: Operators that keep the sign of their input.
_SIGN_PRESERVING = ("Pooling", "Flatten", "Reshape", "reshape", "expand_dims", "transpose",
                    "Concat", "Dropout")
#: Why a global average pooling of a signed tensor stays fp32 (shown in ``report()``).
SIGNED_POOL_REASON = ("global average of a signed tensor: int8 pooling keeps the input's "
                      "scale and rounds the near-zero means away")


def _is_true(value):
    """Whether a graph attribute (a string such as ``'True'`` or ``'1'``) is true."""
    return str(value).lower() in ("true", "1")


def _emits_unsigned(view, name, depth=0):
    """Whether the node ``name`` of a GraphView provably never outputs negative values."""
    node = view.by_name.get(name)
    if node is None or depth > 16:  # a graph input, or too far to follow: unknown
        return False
    last_op, description = node.members[-1][1], node.members[-1][2]
    if description in _UNSIGNED_OUTPUTS or last_op in _UNSIGNED_OUTPUTS:
        return True
    if last_op == "clip":
        try:
            return float(description[len("clip("):].split(",")[0]) >= 0.0
        except ValueError:
            return False
    if node.op in _SIGN_PRESERVING and node.inputs:
        sources = node.inputs if node.op == "Concat" else node.inputs[:1]
        return all(_emits_unsigned(view, src, depth + 1) for src in sources)
    return False


def signed_global_pools(view):
    """Global average poolings whose input can be negative, which must stay fp32.

    Parameters
    ----------
    view : GraphView
        The fused fp32 graph.

    Returns
    -------
    dict of str to str
        Node name -> the reason, for ``report()``.
    """
    found = {}
    for node in view:
        if (node.op == "Pooling" and _is_true(node.attr("global_pool", ""))
                and node.attr("pool_type", "max") == "avg"
                and not _emits_unsigned(view, node.inputs[0])):
            found[node.name] = SIGNED_POOL_REASON
    return found


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


#: The fused oneDNN convolution (quantized: its last four inputs are data and sum ranges).
_FUSED_CONV = "_sg_mkldnn_conv"


def _entry_dtype(dtypes, nodes, entry):
    """The inferred dtype of a graph entry ``[node, output, version]`` (or None)."""
    src = nodes[entry[0]]
    if src["op"] == "null":
        return dtypes.get(src["name"])
    base = src["name"] + "_output"
    # One-output nodes name it X_output; several outputs are X_output0, X_output1...
    return dtypes.get(base + str(entry[1])) or (dtypes.get(base) if entry[1] == 0 else None)


def fused_sum_dtypes(graph, dtypes):
    """Fix the fused convolution + sum nodes whose sum operand and output types differ.

    Parameters
    ----------
    graph : dict
        The final int8 graph as JSON (modified in place).
    dtypes : dict of str to str
        Inferred dtype name of each internal output (``node_output``, ``node_output1``...).

    Returns
    -------
    widened : list of str
        Nodes whose range was widened by 255/127 (int8 operand, uint8 output).
    converted : list of str
        Nodes whose uint8 sum operand is now re-quantized to int8.
    """
    nodes = graph["nodes"]
    widened, converted, inserted = [], [], []
    for index, node in enumerate(nodes):
        attrs = node.get("attrs") or {}
        if (node["op"] != _FUSED_CONV or not _is_true(attrs.get("quantized"))
                or not _is_true(attrs.get("with_sum")) or "max_calib_range" not in attrs):
            continue
        out_type = _entry_dtype(dtypes, nodes, [index, 0, 0])
        sum_entry, sum_min, sum_max = node["inputs"][-5], node["inputs"][-2], node["inputs"][-1]
        sum_type = _entry_dtype(dtypes, nodes, sum_entry)
        if sum_type == "int8" and out_type == "uint8":
            hi = float(attrs["max_calib_range"]) * 255.0 / 127.0
            attrs["max_calib_range"] = repr(float(np.float32(hi)))
            widened.append(node["name"])
        elif sum_type == "uint8" and out_type == "int8":
            base = len(nodes) + len(inserted)
            name = node["name"] + "_sum_int8"
            deq = {"op": "_contrib_dequantize", "name": name + "_dequantize",
                   "attrs": {"out_type": "float32"}, "inputs": [sum_entry, sum_min, sum_max]}
            q_attrs = {"out_type": "int8"}
            hi = _operand_max(nodes, sum_entry)
            if hi is not None:
                q_attrs.update(min_calib_range=repr(-hi), max_calib_range=repr(hi))
            quant = {"op": "_contrib_quantize_v2", "name": name, "attrs": q_attrs,
                     "inputs": [[base, 0, 0]]}
            inserted.append((index, [deq, quant]))
            node["inputs"][-5:] = [[base + 1, 0, 0]] + node["inputs"][-4:-2] + [
                [base + 1, 1, 0], [base + 1, 2, 0]]
            converted.append(node["name"])
    if inserted:
        _append_nodes(graph, [n for _, pair in inserted for n in pair])
    if widened or converted:
        _log.debug("Fused sums: widened the range of %s; re-quantized the operand of %s.",
                   widened, converted)
    return widened, converted


def _operand_max(nodes, entry):
    """The calibrated upper bound of a quantized entry, from its producer's attributes."""
    attrs = nodes[entry[0]].get("attrs") or {}
    try:
        return abs(float(attrs["max_calib_range"]))
    except (KeyError, ValueError):
        return None


def _append_nodes(graph, new_nodes):
    """Append nodes to a JSON graph and put every node back in topological order."""
    nodes = graph["nodes"] + new_nodes
    order, state = [], {}

    def visit(i):
        stack = [(i, False)]
        while stack:
            j, done = stack.pop()
            if done:
                order.append(j)
                continue
            if state.get(j):
                continue
            state[j] = True
            stack.append((j, True))
            for src in reversed(nodes[j]["inputs"]):
                if not state.get(src[0]):
                    stack.append((src[0], False))

    for i in range(len(nodes)):
        visit(i)
    position = {old: new for new, old in enumerate(order)}
    for node in nodes:
        node["inputs"] = [[position[e[0]]] + list(e[1:]) for e in node["inputs"]]
    graph["nodes"] = [nodes[i] for i in order]
    graph["arg_nodes"] = [position[i] for i in graph["arg_nodes"]]
    graph["heads"] = [[position[h[0]]] + list(h[1:]) for h in graph["heads"]]
    graph.pop("node_row_ptr", None)


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
            for k in range(_num_outputs(node))]
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
        _append_nodes(graph, new)
    return rounded


def _num_outputs(node):
    """Outputs of an fp32 node (several only for a few operators the floor may meet)."""
    attrs = node.get("attrs") or {}
    if node["op"] in ("SliceChannel", "split"):
        return int(attrs.get("num_outputs", 1))
    return 1


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
