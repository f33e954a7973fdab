"""The int8 graph that MXNet 1.9.1's GPU builds (``mxnet-cu102``, ``mxnet-cu11x``) run.

MXNet's own quantization pass decides which operators to quantize by asking whether
the quantized operator has a kernel on the *target* device; on a CPU-only build no
GPU kernel is registered, so asked for a GPU graph it excludes everything and returns
fp32. This module rewrites the symbol JSON in pure Python instead, producing the graph
that pass produces on a GPU build, so that it can be built (and its structure tested)
anywhere.

What the GPU build can run (MXNet 1.9.1 registers ``FCompute<gpu>`` for these
quantized operators only; everything else stays fp32):

* ``Convolution`` -> ``_contrib_quantized_conv`` (cuDNN, int32 output, then
  ``_contrib_requantize`` to int8). cuDNN's int8 convolution takes int8 data (uint8
  is refused: "uint8 quantization is only supported by CPU"), NHWC internally, 2-D
  kernels, one group, no dilation (the kernel ignores it) and channel counts that are
  multiples of 4; other convolutions stay fp32.
* ``FullyConnected`` -> ``_contrib_quantized_fully_connected`` (cuBLAS int8 GEMM,
  then requantize); the GEMM needs input and output sizes that are multiples of 4.
* ``Pooling`` (max/avg, 2-D) and ``Flatten`` -> their int8 versions, which pass the
  input's range through. They are kept int8 only when their input already is int8:
  quantizing *after* a pooling moves fewer bytes than quantizing before it.

Choices, documented here because they differ from the oneDNN backend:

* Activations are int8 everywhere (``dtype='auto'`` means int8 here); ``'uint8'`` is
  refused by the caller.
* BatchNorm, activations, ``elemwise_add`` and ``Concat`` have no GPU int8 kernel and
  MXNet has no GPU fusion pass for quantized graphs, so they run in fp32 between a
  ``_contrib_dequantize`` and the next ``_contrib_quantize_v2``, as on a GPU build.
  BatchNorm is not folded into the convolution weights.
* Weights and biases are quantized offline: the graph reads ``<param>_quantize``
  (int8) with ``<param>_quantize_min`` / ``_max``, the names MXNet's pass gives them.
* Node names follow MXNet's pass: ``quantized_X``, ``requantize_X``,
  ``<src>_quantize``, ``X_dequantize``; calibrated ranges are keyed by the fp32
  tensor names (``data``, ``X_output``), the tensors calibration collects.
"""
import logging
from typing import Dict, List, Tuple

from ..backends import CUDNN, why_not_int8
from .passes import RANGED_OPS, tensor_key
from .rewrites import known_shape, reachable

__all__ = ["quantize_graph", "RANGED_OPS"]

_log = logging.getLogger(__name__)


class _Builder:
    """Accumulates the nodes of the new graph and the int8/fp32 copies of tensors."""

    def __init__(self, old_nodes):
        self.old = old_nodes
        self.nodes: List[dict] = []
        self.fp32: Dict[Tuple[int, int], int] = {}     # old entry -> new node (fp32)
        self.int8: Dict[Tuple[int, int], int] = {}     # old entry -> new node (int8, min, max)
        self.calib: List[str] = []
        self._vars: Dict[str, int] = {}

    def add(self, op, name, inputs, attrs=None):
        node = {"op": op, "name": name, "inputs": [[i, k, 0] for i, k in inputs]}
        if attrs:
            node["attrs"] = dict(attrs)
        self.nodes.append(node)
        return len(self.nodes) - 1

    def var(self, name, attrs=None):
        if name not in self._vars:
            self._vars[name] = self.add("null", name, [], attrs)
        return self._vars[name]

    def fp32_of(self, entry):
        """The new-graph entry holding the fp32 value of an old entry (dequantizing once)."""
        if entry in self.fp32:
            return self.fp32[entry], entry[1]
        src = self.int8[entry]
        name = self.old[entry[0]]["name"] + "_dequantize"
        self.fp32[entry] = self.add("_contrib_dequantize", name,
                                    [(src, 0), (src, 1), (src, 2)], {"out_type": "float32"})
        return self.fp32[entry], 0

    def int8_of(self, entry):
        """The new node whose outputs (0, 1, 2) are the int8 value and range of an old entry."""
        if entry not in self.int8:
            node = self.old[entry[0]]
            suffix = "_quantize" if entry[1] == 0 else "_quantize%d" % entry[1]
            self.int8[entry] = self.add("_contrib_quantize_v2", node["name"] + suffix,
                                        [self.fp32_of(entry)], {"out_type": "int8"})
            self.calib.append(tensor_key(node, entry[1]))
        return self.int8[entry]

    def offline(self, var_node):
        """``<param>_quantize`` (int8) and its ``_min`` / ``_max``, as MXNet names them."""
        name = var_node["name"] + "_quantize"
        shape = (var_node.get("attrs") or {}).get("__shape__")
        data = self.var(name, {"__shape__": shape} if shape else None)
        return data, self.var(name + "_min"), self.var(name + "_max")


def _why_fp32(node, nodes, support, excluded, param_shapes, int8_inputs):
    """Why ``node`` stays fp32 on the GPU (None when it can be quantized)."""
    if node["name"] in excluded:
        return "excluded"
    attrs = node.get("attrs") or {}
    if support.weights:
        params = [nodes[i[0]] for i in node["inputs"][1:1 + support.weights]]
        if not all(p["op"] == "null" and p["name"] in param_shapes
                   and p["name"].endswith(("weight", "bias")) for p in params):
            return "weights are computed in the graph, not parameters"
        return why_not_int8(support, attrs, known_shape(param_shapes[params[0]["name"]]), "cudnn")
    reason = why_not_int8(support, attrs, None, "cudnn")
    if reason is None and support.int8_input_only \
            and tuple(node["inputs"][0][:2]) not in int8_inputs:
        reason = "input is fp32 (quantizing after it is cheaper)"
    return reason


def quantize_graph(graph, *, param_shapes, excluded=()):
    """Rewrite an fp32 graph into MXNet 1.9.1's GPU int8 graph (ranges not yet set).

    Parameters
    ----------
    graph : dict
        The fp32 graph, as parsed from ``Symbol.tojson()``.
    excluded : iterable of str
        Node names that stay fp32.
    param_shapes : dict of str to tuple of int
        Shape of every parameter (variables that are not graph inputs); weights and biases
        read by quantized operators are quantized offline. A zero in a shape means it is
        not known yet: such layers stay fp32, since cuDNN's constraints cannot be checked.

    Returns
    -------
    new_graph : dict
        The int8 graph in the same JSON form (``mx.sym.load_json`` loads it).
    calib_names : list of str
        The fp32 tensors whose ranges must be calibrated, in topological order: the input
        of every ``_contrib_quantize_v2`` and the output of every requantized layer.
    kept_fp32 : dict
        Name of every node with a GPU int8 operator that stays fp32 -> the reason.
    """
    nodes = graph["nodes"]
    excluded = set(excluded)
    out = _Builder(nodes)
    kept_fp32 = {}
    entries = {}        # old node id -> number of its output entries read by other nodes
    for n in nodes:
        for i in n["inputs"]:
            entries[i[0]] = max(entries.get(i[0], 1), i[1] + 1)
    for h in graph["heads"]:
        entries[h[0]] = max(entries.get(h[0], 1), h[1] + 1)
    for old_id, node in enumerate(nodes):
        rule = CUDNN.ops.get(node["op"])
        reason = None
        if rule is not None:
            reason = _why_fp32(node, nodes, rule, excluded, param_shapes, out.int8)
        if rule is None or reason is not None:
            if reason is not None:
                kept_fp32[node["name"]] = reason
            if node["op"] == "null":
                new_id = out.var(node["name"], node.get("attrs"))
            else:
                copy = {k: v for k, v in node.items() if k != "inputs"}
                copy["inputs"] = [list(out.fp32_of((i[0], i[1]))) + [0] for i in node["inputs"]]
                out.nodes.append(copy)
                new_id = len(out.nodes) - 1
            for index in range(entries.get(old_id, 1)):
                out.fp32[(old_id, index)] = new_id
            continue
        data = out.int8_of(tuple(node["inputs"][0][:2]))
        params = [out.offline(nodes[i[0]]) for i in node["inputs"][1:1 + rule.weights]]
        inputs = [(data, 0)] + [(p[0], 0) for p in params] + [(data, 1), (data, 2)]
        for p in params:
            inputs += [(p[1], 0), (p[2], 0)]
        qnode = out.add(rule.quantized_op, "quantized_" + node["name"], inputs, node.get("attrs"))
        if rule.requantize:
            qnode = out.add("_contrib_requantize", "requantize_" + node["name"],
                            [(qnode, 0), (qnode, 1), (qnode, 2)], {"out_type": "int8"})
            out.calib.append(tensor_key(node, 0))
        out.int8[(old_id, 0)] = qnode
    heads = [list(out.fp32_of((h[0], h[1]))) + [0] for h in graph["heads"]]
    new_graph = reachable(out.nodes, heads, graph.get("attrs"))   # int8 weights replace fp32
    for name, reason in kept_fp32.items():
        _log.info("cuDNN int8: %s stays fp32: %s.", name, reason)
    unknown = [n for n, r in kept_fp32.items() if r.startswith("weight shape unknown")]
    if unknown:
        _log.warning("%d layer(s) stay fp32 because their weight shapes are not known yet "
                     "(deferred initialization): %s. Run the net once on a batch before "
                     "quantizing.", len(unknown), unknown[:5])
    return new_graph, list(dict.fromkeys(out.calib)), kept_fp32
