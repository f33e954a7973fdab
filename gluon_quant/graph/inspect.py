"""A read-only view of a symbol graph: its operator nodes, what each fused node contains,
and a fingerprint that identifies the graph's structure."""
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["GraphNode", "GraphView", "calib_key", "describe_op", "is_true", "tensor_key"]

#: Operators that carry the weights of a layer, in the order that names a fused node.
_ANCHOR_OPS = ("Convolution", "FullyConnected", "Deconvolution", "Pooling", "Concat",
               "elemwise_add", "elemwise_mul", "BatchNorm")

#: Attributes that change between calibrations of the same graph, left out of fingerprints.
_VOLATILE_ATTRS = ("min_calib_range", "max_calib_range")
#: Left out of variables' attributes too: a parameter's shape is written into the graph
#: only once Gluon knows it (a deferred-initialization net traced before its first call
#: has none), and the operators' own attributes already tell one architecture from another;
#: how a parameter is initialized (``__init__``) says nothing of the graph, and a Gluon
#: constant's (``params.get_constant``) is named by its ``id()``: another in every process.
_VOLATILE_VARIABLE_ATTRS = ("__shape__", "__init__")
#: What earlier versions left out of variables' attributes: until 2026-12-05 their shapes,
#: before 2026-12-04 nothing (their tables still match their graphs).
_EARLIER_VARIABLE_ATTRS = (("__shape__",), ())


#: Attribute of a node a rewrite made to run in fp32 by design; its value names the
#: backend's ``fp32_ops`` entry that says why (``report()`` shows it).
FP32_FORM_ATTR = "__fp32_form__"
#: Attribute of a final-graph node a pass made int8 where the fused graph kept the node
#: fp32; its value says why (``report()`` shows it).
INT8_FORM_ATTR = "__int8_form__"
#: Attribute of an int8 max pooling moved before a dequantize and functions that never
#: decrease (``graph.maxpools``): the node whose output holds the fp32 pooling's values
#: (the pooling itself now computes those of the functions' input).
POOLED_AS_ATTR = "__pooled_as__"


def is_true(value):
    """Whether a graph attribute (a string such as ``'True'`` or ``'1'``) is true."""
    return str(value).strip().lower() in ("true", "1")


def describe_op(op, attrs):
    """A short readable description of one operator: ``Activation(relu)``, ``clip(0,6)``."""
    attrs = attrs or {}
    if op in ("Activation", "LeakyReLU") and "act_type" in attrs:
        return "%s(%s)" % (op, attrs["act_type"])
    if op == "clip":
        return "clip(%s,%s)" % (_num(attrs.get("a_min")), _num(attrs.get("a_max")))
    if op == "Pooling" and "pool_type" in attrs:
        return "Pooling(%s)" % attrs["pool_type"]
    return op


def _num(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text)
    return ("%g" % value)


@dataclass(frozen=True)
class GraphNode:
    """One operator node of a graph.

    Attributes
    ----------
    name : str
        Node name in this graph (for fused nodes, e.g. ``sg_mkldnn_conv_bn_act_0``).
    op : str
        Operator of the node (``_sg_mkldnn_conv`` for a fused oneDNN convolution).
    members : tuple of (str, str, str)
        ``(original name, operator, description)`` of every original operator the node
        stands for; a plain node has one member, itself.
    inputs : tuple of str
        Names of the nodes (or variables) feeding it.
    attrs : tuple of (str, str)
        The node's attributes, sorted.
    """

    name: str
    op: str
    members: Tuple[Tuple[str, str, str], ...]
    inputs: Tuple[str, ...]
    attrs: Tuple[Tuple[str, str], ...]

    @property
    def fused(self):
        """Whether the node is a fused subgraph of several original operators."""
        return self.op.startswith("_sg_")

    @property
    def main_op(self):
        """The operator that names the layer (the convolution of conv+bn+relu)."""
        ops = [m[1] for m in self.members]
        for anchor in _ANCHOR_OPS:
            if anchor in ops:
                return anchor
        return ops[0] if ops else self.op

    @property
    def pattern(self):
        """The fused pattern, e.g. ``Convolution+BatchNorm+Activation(relu)``."""
        return "+".join(m[2] for m in self.members)

    @property
    def member_ops(self):
        """Set of original operator types in the node."""
        return {m[1] for m in self.members}

    def attr(self, key, default=None):
        """Value of one attribute."""
        return dict(self.attrs).get(key, default)


class GraphView:
    """Operator nodes of a symbol graph, in topological order.

    Parameters
    ----------
    graph : dict
        The graph as parsed from ``Symbol.tojson()``.
    """

    def __init__(self, graph):
        self._graph = graph
        nodes = graph["nodes"]
        self.variables = [n["name"] for n in nodes if n["op"] == "null"]
        self.nodes = []
        for node in nodes:
            if node["op"] == "null":
                continue
            attrs = node.get("attrs", {}) or {}
            if node.get("subgraphs") and node["op"].startswith("_sg_"):  # not control flow
                members = tuple(
                    (m["name"], m["op"], describe_op(m["op"], m.get("attrs")))
                    for sub in node["subgraphs"] for m in sub["nodes"] if m["op"] != "null")
            else:
                members = ((node["name"], node["op"], describe_op(node["op"], attrs)),)
            self.nodes.append(GraphNode(
                name=node["name"], op=node["op"], members=members,
                inputs=tuple(nodes[i[0]]["name"] for i in node["inputs"]),
                attrs=tuple(sorted((k, str(v)) for k, v in attrs.items()))))
        self.by_name: Dict[str, GraphNode] = {n.name: n for n in self.nodes}
        #: Names of the nodes whose outputs are the graph's outputs.
        self.outputs = tuple(nodes[h[0]]["name"] for h in graph.get("heads", ()))

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    def fingerprint(self, variable_attrs=_VOLATILE_VARIABLE_ATTRS):
        """A sha256 of the graph's structure: operators, attributes, wiring and variable names.

        Calibrated ranges are left out, so a graph and its calibrated copy share a
        fingerprint; weights' values, parameters' shapes and initializers are not part of it
        either (``variable_attrs``: the variables' attributes left out).
        """
        canon = []
        for node in self._graph["nodes"]:
            volatile = _VOLATILE_ATTRS + (variable_attrs if node["op"] == "null" else ())
            attrs = {k: v for k, v in (node.get("attrs") or {}).items() if k not in volatile}
            subs = [[(m["op"], m["name"]) for m in sub["nodes"]]
                    for sub in node.get("subgraphs", [])]
            canon.append([node["op"], node["name"], sorted(attrs.items()),
                          [i[:2] for i in node["inputs"]], subs])
        canon.append([h[:2] for h in self._graph.get("heads", [])])
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def renamed(self, prefixes):
        """This graph with each prefix of ``prefixes`` (a dict) replaced by its value at the
        start of every name (operators, variables, fused subgraphs' members), all at once."""
        pattern = re.compile('"(%s)' % "|".join(re.escape(p) for p in prefixes))
        text = pattern.sub(lambda m: '"' + prefixes[m.group(1)], json.dumps(self._graph))
        return GraphView(json.loads(text))

    def earlier_fingerprints(self):
        """The fingerprints earlier versions of gluon_quant wrote for this graph (newest
        first): tables saved then still match it."""
        return tuple(self.fingerprint(attrs) for attrs in _EARLIER_VARIABLE_ATTRS)


def tensor_key(node, index):
    """The name calibration knows a tensor by: a variable's name, ``X_output``, ``X_outputK``."""
    if node["op"] == "null":
        return node["name"]
    return node["name"] + ("_output" if index == 0 else "_output%d" % index)


def calib_key(node, nodes):
    """The calibration-table key a node with a calibrated range reads it from.

    ``requantize_X`` and the fused ``quantized_X`` (after post-quantization fusion) take
    the range of ``X``'s output; a quantize node takes its input's.
    """
    name = node["name"]
    if node["op"] == "_contrib_requantize" and name.startswith("requantize_"):
        return name[len("requantize_"):] + "_output"
    if node["op"] == "_contrib_quantize_v2":
        src = nodes[node["inputs"][0][0]]
        return tensor_key(src, node["inputs"][0][1])
    if name.startswith("quantized_"):
        return name[len("quantized_"):] + "_output"
    return name + "_output"
