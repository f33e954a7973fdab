"""The weight layers of a fused fp32 graph, read as data: which parameters each fused
convolution or dense layer reads, its BatchNorm, its activation and its input.

Cross-layer equalization (:mod:`.equalize`) and AdaRound (:mod:`.adaround`) both work on
these records, never on named nets. Only oneDNN's fused layers (``_sg_mkldnn_conv``,
``_sg_mkldnn_fully_connected``) are described: they are the layers whose fp32 weights the
int8 runtime folds with their BatchNorm and rounds itself (see :mod:`gluon_quant._packing`).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["Layer", "find_layers", "consumers", "input_entry_name", "as_numpy"]

_FUSED = {"_sg_mkldnn_conv": "Convolution", "_sg_mkldnn_fully_connected": "FullyConnected"}


def as_numpy(params, name):
    """``params[name]`` as a numpy array (NDArrays are copied to the host)."""
    value = params[name]
    return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)


def _flag(value, default):
    if value is None:
        return default
    return str(value).strip().lower() in ("true", "1")


def _tuple(text, default):
    if text is None:
        return default
    return tuple(int(v) for v in str(text).strip("()[] ").split(",") if v.strip())


@dataclass(frozen=True)
class Layer:
    """One fused weight layer: ``act(BatchNorm(op(x, weight, bias)))``.

    Attributes
    ----------
    name : str
        Fused node name.
    index : int
        Its index in the graph's node list.
    kind : {'conv', 'dense'}
    weight : str
        Weight parameter, shape ``(C_out, C_in / groups, *kernel)`` or ``(C_out, C_in)``.
    bias : str or None
    gamma, beta, mean, var : str or None
        The fused BatchNorm's parameters (None without one).
    eps : float
    fix_gamma : bool
    groups : int
    act : str or None
        ``'relu'``, ``'relu6'`` (``clip(0, 6)``), another description, or None.
    with_sum : bool
        A residual sum is fused into the layer (its output is not the layer's alone).
    source : tuple of (int, int)
        ``(node index, output index)`` of the layer's data input in the graph.
    conv : tuple of (str, object)
        Convolution attributes: kernel, stride, pad, dilate (empty for dense layers).
    flatten : bool
        A dense layer flattens its input to ``(N, -1)`` (else it reads the last axis).
    """

    name: str
    index: int
    kind: str
    weight: str
    bias: Optional[str]
    gamma: Optional[str]
    beta: Optional[str]
    mean: Optional[str]
    var: Optional[str]
    eps: float
    fix_gamma: bool
    groups: int
    act: Optional[str]
    with_sum: bool
    source: Tuple[int, int]
    conv: Tuple[Tuple[str, tuple], ...] = ()
    flatten: bool = True

    def fold(self, params):
        """``gamma / sqrt(var + eps)`` per output channel (float32; ones without BatchNorm),
        computed as the runtime does it (in double, rounded to float32)."""
        channels = params[self.weight].shape[0]
        if self.gamma is None:
            return np.ones(channels, np.float32)
        var = as_numpy(params, self.var).astype(np.float64)
        gamma = np.ones(channels) if self.fix_gamma else as_numpy(params, self.gamma).astype(np.float64)
        return (gamma / np.sqrt(var + self.eps)).astype(np.float32)

    def folded_bias(self, params):
        """The bias after folding the BatchNorm (float64, shape ``(C_out,)``)."""
        channels = params[self.weight].shape[0]
        bias = np.zeros(channels) if self.bias is None else as_numpy(params, self.bias).astype(np.float64)
        if self.gamma is None:
            return bias
        alpha = self.fold(params).astype(np.float64)
        return alpha * (bias - as_numpy(params, self.mean).astype(np.float64)) \
            + as_numpy(params, self.beta).astype(np.float64)


def _activation(ops):
    for op, attrs in ops:
        if op == "Activation":
            return attrs.get("act_type", "activation")
        if op == "relu":
            return "relu"
        if op == "clip":
            try:
                lo, hi = float(attrs.get("a_min")), float(attrs.get("a_max"))
            except (TypeError, ValueError):
                return "clip"
            return "relu6" if (lo, hi) == (0.0, 6.0) else "clip"
        if op in ("LeakyReLU", "sigmoid", "tanh", "softrelu"):
            return op
    return None


def find_layers(graph):
    """The fused weight layers of a graph, in topological order.

    Parameters
    ----------
    graph : dict
        A fused fp32 graph as JSON (``_mxnet.graph_json``).

    Returns
    -------
    list of Layer
    """
    nodes = graph["nodes"]
    layers = []
    for index, node in enumerate(nodes):
        main = _FUSED.get(node["op"])
        if main is None or not node.get("subgraphs"):
            continue
        attrs = node.get("attrs") or {}
        inner = [(m["op"], m.get("attrs") or {}) for m in node["subgraphs"][0]["nodes"]
                 if m["op"] != "null"]
        ops = dict(inner)
        if main not in ops:
            continue
        names = [nodes[i[0]]["name"] for i in node["inputs"]]
        if len(names) < 2 or nodes[node["inputs"][1][0]]["op"] != "null":
            continue
        no_bias = _flag(ops[main].get("no_bias"), False)
        first = 2 if no_bias else 3
        bn = {}
        if main == "Convolution" and _flag(attrs.get("with_bn"), False) and "BatchNorm" in ops:
            if len(names) < first + 4:
                continue
            bn = dict(zip(("gamma", "beta", "mean", "var"), names[first:first + 4]))
        conv = ()
        if main == "Convolution":
            kernel = _tuple(ops[main].get("kernel"), ())
            conv = (("kernel", kernel),
                    ("stride", _tuple(ops[main].get("stride"), (1,) * len(kernel))),
                    ("pad", _tuple(ops[main].get("pad"), (0,) * len(kernel))),
                    ("dilate", _tuple(ops[main].get("dilate"), (1,) * len(kernel))))
        layers.append(Layer(
            name=node["name"], index=index, kind="conv" if main == "Convolution" else "dense",
            weight=names[1], bias=None if no_bias else names[2],
            gamma=bn.get("gamma"), beta=bn.get("beta"), mean=bn.get("mean"),
            var=bn.get("var"),
            eps=float(ops.get("BatchNorm", {}).get("eps", 1e-3)),
            fix_gamma=_flag(ops.get("BatchNorm", {}).get("fix_gamma"), True),
            groups=int(ops[main].get("num_group", 1)) if main == "Convolution" else 1,
            act=_activation(inner),
            with_sum=_flag(attrs.get("with_sum"), False) or "elemwise_add" in ops
            or "_plus" in ops or "broadcast_add" in ops,
            source=(node["inputs"][0][0], node["inputs"][0][1]), conv=conv,
            flatten=_flag(ops[main].get("flatten"), True)))
    return layers


def consumers(graph):
    """``{(node index, output index): number of readers}``, graph outputs counted."""
    counts = {}
    for node in graph["nodes"]:
        for src, out, _ in node.get("inputs", []):
            counts[(src, out)] = counts.get((src, out), 0) + 1
    for src, out, _ in graph.get("heads", []):
        counts[(src, out)] = counts.get((src, out), 0) + 1
    return counts


def input_entry_name(graph, entry, internal_outputs):
    """The name of a graph entry among ``Symbol.get_internals().list_outputs()`` (a
    variable's own name, else ``node_output`` or ``node_output<i>``); None if absent."""
    node = graph["nodes"][entry[0]]
    if node["op"] == "null":
        return node["name"]
    for name in (node["name"] + "_output", "%s_output%d" % (node["name"], entry[1])):
        if name in internal_outputs:
            return name
    return None
