"""Per-channel scales and shifts written after a layer, folded into that layer.

Nets ported from other frameworks apply fixed per-channel affines by hand after their
convolutions and dense layers: detectron-style frozen BatchNorm
(``F.broadcast_add(F.broadcast_mul(x, scale), shift)`` over ``(1, C, 1, 1)`` parameters),
LayerScale (``gamma * x``), a bias added to a layer built without one, a hand-written
linear layer's ``+ b`` (:mod:`gluon_quant.graph.matmul`). MXNet 1.9.1 has no int8 kernel
for ``broadcast_mul``/``broadcast_add``, and oneDNN fuses neither into the layer, so each
split the int8 chain: the layer's output was dequantized, scaled and shifted in fp32, and
quantized again for the next layer, and the ReLU after it could not fuse (a 4-layer CNN
with frozen BatchNorm, batch 16 at 56 px: 2.46x fp32, every affine fp32; 6.6x folded).
Residual scaling by a constant (EDSR's ``res * 0.1``, Inception-ResNet's ``x * 0.17``)
kept the convolution from fusing with the residual sum after it the same way.

:func:`affine_into_layers` folds a ``broadcast_mul`` by (and a ``broadcast_add`` of) a
parameter or parameter expression that varies along the output channels only (axis 1 of
a channels-first convolution, the last axis of a dense layer; size 1 elsewhere, or a
single value) into the weight and bias of the ``Convolution`` or ``FullyConnected`` it
reads, when that layer's output has no other reader: ``W' = W * s``, ``b' = b * s``, then
``b' = b + t``; so are quotients by and differences with such parameters
(a BatchNorm written out, ``(x - mean) / F.sqrt(var + eps) * gamma + beta``), and
products, quotients, sums and differences with a constant (:data:`SCALARS`). Exact up to float rounding. The new weights are computed once on the
pipeline's copies of the parameters (:class:`~gluon_quant.graph.rewrites.ParamRewrite`);
the user's net is not changed. Needs the graph's shapes (``context.infer_shapes``).
"""
import json
import logging

import mxnet as mx

from .. import _mxnet
from .inspect import is_true
from .rewrites import (ParamRewrite, append_nodes, consumers, parameter_entries, prune,
                       reachable, shaped_nodes)

__all__ = ["affine_into_layers", "SCALES", "SHIFTS", "DIVIDES", "SUBTRACTS", "SCALARS"]

_log = logging.getLogger(__name__)

#: Broadcasting products and sums (legacy, and NumPy mode's ``x * s``, ``x + t``).
SCALES = frozenset(("broadcast_mul", "_npi_multiply"))
SHIFTS = frozenset(("broadcast_add", "broadcast_plus", "_npi_add"))
#: Quotients and differences, folded where the layer is the first operand.
DIVIDES = frozenset(("broadcast_div", "_npi_true_divide"))
SUBTRACTS = frozenset(("broadcast_sub", "broadcast_minus", "_npi_subtract"))
#: Operators with a scalar operand: whether they scale or shift, and by what value
#: (EDSR's and Inception-ResNet's residual scaling ``x * 0.1``, ``x / 2``, ``x - 0.5``).
SCALARS = {
    "_mul_scalar": ("scale", lambda v: v), "_npi_multiply_scalar": ("scale", lambda v: v),
    "_div_scalar": ("scale", lambda v: 1.0 / v),
    "_npi_true_divide_scalar": ("scale", lambda v: 1.0 / v),
    "_plus_scalar": ("shift", lambda v: v), "_npi_add_scalar": ("shift", lambda v: v),
    "_minus_scalar": ("shift", lambda v: -v), "_npi_subtract_scalar": ("shift", lambda v: -v),
}
_LAYERS = frozenset(("Convolution", "FullyConnected"))


def _channel_axis(layer, rank):
    """The axis of ``layer``'s output that holds its output channels, or None."""
    attrs = layer.get("attrs") or {}
    if layer["op"] == "FullyConnected":
        return rank - 1
    return 1 if str(attrs.get("layout", "NC")).startswith("NC") else None


def _per_channel(shape, out_shape, axis):
    """Whether ``shape`` broadcast against ``out_shape`` varies along ``axis`` only."""
    if shape is None or out_shape is None or len(shape) > len(out_shape):
        return False
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return all(d == 1 or (i == axis and d == out_shape[axis]) for i, d in enumerate(padded))


def _symbol(graph, entry):
    """The parameter expression at ``entry`` of ``graph`` as an MXNet symbol."""
    return mx.sym.load_json(json.dumps(reachable(graph["nodes"], [entry], graph.get("attrs"))))


class _Folder:
    """Folds affines into layers of one graph, keeping readers and heads current."""

    def __init__(self, graph, context):
        self.graph, self.context, self.nodes = graph, context, graph["nodes"]
        self.readers = consumers(graph)
        self.heads = {(h[0], h[1]) for h in graph["heads"]}
        params = set(context.param_shapes) | {r.target for r in context.param_rewrites}
        self.constant = parameter_entries(graph, params)
        self.folded = {}            # layer name -> the affines folded into it, in order

    def describe(self):
        """Say in ``context.rewritten`` what each layer took in."""
        for name, folded in self.folded.items():
            text = "the scale/shift after it folded in (%s)" % ", ".join(folded)
            before = self.context.rewritten.get(name)
            self.context.rewritten[name] = "%s, with %s" % (before, text) if before else text

    def _new_param(self, name, expression):
        """A variable ``name`` computed once from ``expression``; its graph entry."""
        sources = tuple(expression.list_arguments())
        if sources:
            rewrite = ParamRewrite(target=name, kind="evaluate", sources=sources,
                                   graph=expression.tojson())
        else:       # a constant (a layer without bias shifted by one): its values
            value = _mxnet.evaluate_graph(json.loads(expression.tojson()), {}).asnumpy()
            rewrite = ParamRewrite(target=name, kind="constant", sources=(), shape=value.shape,
                                   values=tuple(float(v) for v in value.ravel()))
        self.context.param_rewrites.append(rewrite)
        self.nodes.append({"op": "null", "name": name, "inputs": []})
        self.graph["arg_nodes"].append(len(self.nodes) - 1)
        self.constant.append(True)
        return [len(self.nodes) - 1, 0, 0]

    def fold(self, index, layer_index, value, kind, hidden):
        """Fold node ``index`` (a ``kind`` 'scale' or 'shift' of ``layer_index``'s output
        by ``value``, a symbol over parameters) into the layer."""
        node, layer = self.nodes[index], self.nodes[layer_index]
        attrs = dict(layer.get("attrs") or {})
        has_bias = not is_true(attrs.get("no_bias", "False")) and len(layer["inputs"]) > 2
        bias = _symbol(self.graph, layer["inputs"][2]) if has_bias else None
        tag = "%s_folded%d" % (layer["name"], len(self.context.param_rewrites))
        if kind == "scale":
            weight = _symbol(self.graph, layer["inputs"][1])
            shape = (-1,) + (1,) * (self._weight_rank(layer) - 1)
            layer["inputs"][1] = self._new_param(tag + "_weight", mx.sym.broadcast_mul(
                weight, mx.sym.reshape(value, shape=shape)))
            if has_bias:
                layer["inputs"][2] = self._new_param(tag + "_bias", mx.sym.broadcast_mul(
                    bias, mx.sym.reshape(value, shape=(-1,))))
        else:
            shift = mx.sym.broadcast_to(mx.sym.reshape(value, shape=(-1,)), shape=(hidden,))
            entry = self._new_param(tag + "_bias", mx.sym.broadcast_add(bias, shift)
                                    if has_bias else shift)
            layer["inputs"] = layer["inputs"][:2] + [entry]
            attrs["no_bias"] = "False"
        layer["attrs"] = attrs
        self.folded.setdefault(layer["name"], []).append(node["name"])
        # The affine's readers (and the graph's heads) read the layer instead.
        moved = self.readers.pop((index, 0), [])
        for reader in moved:
            self.nodes[reader]["inputs"] = [[layer_index, 0, 0] if e[:2] == [index, 0] else e
                                            for e in self.nodes[reader]["inputs"]]
        self.readers[(layer_index, 0)] = moved
        if (index, 0) in self.heads:
            self.heads.add((layer_index, 0))
            self.graph["heads"] = [[layer_index, 0, 0] if h[:2] == [index, 0] else h
                                   for h in self.graph["heads"]]

    def _weight_rank(self, layer):
        shape = self.context.param_shapes.get(self.nodes[layer["inputs"][1][0]]["name"])
        if shape:
            return len(shape)
        kernel = str((layer.get("attrs") or {}).get("kernel", "()")).strip("()[] ")
        return 2 + len([k for k in kernel.split(",") if k.strip()])


def _operands(node):
    """``(layer entry, parameter operand entry or None)`` pairs to try for ``node``."""
    if node["op"] in SCALARS:
        return [(node["inputs"][0], None)] if len(node["inputs"]) == 1 else []
    if len(node["inputs"]) != 2:
        return []
    if node["op"] in DIVIDES | SUBTRACTS:
        return [tuple(node["inputs"])]
    return [tuple(node["inputs"]), tuple(node["inputs"][::-1])]


def _value(node, graph, operand):
    """``(kind, symbol)``: whether ``node`` scales or shifts, and by what (a symbol over
    parameters); the symbol is None for a scalar it cannot fold (a division by 0)."""
    if node["op"] in DIVIDES:
        return "scale", mx.sym.reciprocal(_symbol(graph, operand))
    if node["op"] in SUBTRACTS:
        return "shift", mx.sym.negative(_symbol(graph, operand))
    if node["op"] not in SCALARS:
        return ("scale" if node["op"] in SCALES else "shift"), _symbol(graph, operand)
    kind, convert = SCALARS[node["op"]]
    try:
        value = convert(float((node.get("attrs") or {})["scalar"]))
    except (KeyError, ValueError, ZeroDivisionError):
        return kind, None
    return kind, mx.sym.ones(shape=(1,)) * value


def affine_into_layers(graph, context):
    """Fold per-channel scales and shifts of parameters into the convolution or dense
    layer before them, in place (see the module docstring).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    candidates, shapes = shaped_nodes(graph, context,
                                      SCALES | SHIFTS | DIVIDES | SUBTRACTS | set(SCALARS))
    if not candidates:
        return {}
    folder = _Folder(graph, context)
    nodes, index_of = graph["nodes"], {n["name"]: i for i, n in enumerate(graph["nodes"])}
    folded = 0
    for node in candidates:
        index = index_of[node["name"]]
        for layer_entry, operand in _operands(node):
            layer = nodes[layer_entry[0]]
            if layer["op"] not in _LAYERS or layer_entry[1] != 0 or \
                    (operand and not folder.constant[operand[0]]) or \
                    folder.constant[layer_entry[0]] or \
                    not folder.constant[layer["inputs"][1][0]] or \
                    (len(layer["inputs"]) > 2 and not folder.constant[layer["inputs"][2][0]]) \
                    or folder.readers.get((layer_entry[0], 0)) != [index] or \
                    (layer_entry[0], 0) in folder.heads or \
                    {node["name"], layer["name"]} & context.excluded:
                continue
            out_shape = shapes.get((layer["name"], 0))
            axis = _channel_axis(layer, len(out_shape or ()))
            if axis is None or shapes.get((node["name"], 0)) != out_shape or (
                    operand and not _per_channel(shapes.get(
                        (nodes[operand[0]]["name"], operand[1])), out_shape, axis)):
                continue
            kind, value = _value(node, graph, operand)
            if value is None:
                continue
            folder.fold(index, layer_entry[0], value, kind, out_shape[axis])
            folded += 1
            break
    if folded:
        folder.describe()
        append_nodes(graph, [])     # the new weights before the layers reading them
        prune(graph)                # the folded affines, read by nothing now
        _log.debug("Folded %d per-channel scale(s)/shift(s) into the layers before them.",
                   folded)
    return {}
