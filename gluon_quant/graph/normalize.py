"""Input normalization folded into the first convolutions (``QuantConfig.input_normalization``).

With ``input_normalization=(mean, std)`` the quantized network takes raw inputs (pixel
values, 0..255) and computes ``net((x - mean) / std)`` per channel (axis 1) of its first
input, so that callers skip the normalization on the host (numpy's
``(x - mean) / std`` over a batch of 16 224x224 images costs more than the int8
network's own quantize node of the input, ``benchmarks/op_profile.py``).

The normalization is folded exactly into every convolution that reads the input
(``num_group=1``): ``conv(W, b)((x - m) / s) = conv(W / s, b')(x - m)``, and where the
convolution has no padding ``b' = b - sum(W / s * m)`` absorbs the mean too, so the
convolution reads ``x`` itself. With padding the mean cannot be folded (the padded zeros of
the normalized input are ``m`` in raw units, not 0): one ``broadcast_sub`` of the mean
stays before the convolution and the result is still exact. Readers that are not
such convolutions read an explicit ``(x - m) * (1 / s)``. New weights, biases and
constants are :class:`~gluon_quant.graph.rewrites.ParamRewrite` s applied to the pipeline's
copies of the parameters; the user's net is never changed.
"""
import json
import logging

from ..errors import ConfigError
from .rewrites import ParamRewrite, consumers, append_nodes

__all__ = ["fold_input_normalization", "NORMALIZED_SUFFIX"]

_log = logging.getLogger(__name__)

#: Suffix of the parameters this pass adds (``<conv>_normalized_weight``...).
NORMALIZED_SUFFIX = "_normalized"


def _attr(node, key, default=""):
    return (node.get("attrs") or {}).get(key, default)


def _padded(node):
    pad = _attr(node, "pad", "()").strip("()[] ").replace(" ", "")
    return any(p not in ("", "0") for p in pad.split(","))


def _foldable(node, entry_index, nodes):
    """A convolution reading the input as its data, with a weight variable."""
    if node["op"] != "Convolution" or _attr(node, "num_group", "1") != "1":
        return False
    if node["inputs"][0][0] != entry_index or any(e[0] == entry_index
                                                  for e in node["inputs"][1:]):
        return False
    return nodes[node["inputs"][1][0]]["op"] == "null"


def fold_input_normalization(graph, context):
    """Fold ``context.input_normalization`` into the readers of the first input.

    Parameters
    ----------
    graph : dict
        The traced fp32 graph (edited in place).
    context : PassContext
        ``input_normalization`` is ``(mean, std)`` (tuples of floats, one per channel) or
        None (nothing to do); new parameters are appended to ``param_rewrites``.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    norm = getattr(context, "input_normalization", None)
    if not norm:
        return {}
    mean, std = (tuple(float(v) for v in part) for part in norm)
    channels = len(mean)
    nodes = graph["nodes"]
    data = next((i for i, n in enumerate(nodes) if n["op"] == "null"
                 and n["name"] in ("data", "data0")), None)
    if data is None:
        return {}
    readers = consumers(graph).get((data, 0), [])
    new_nodes, start = [], len(nodes)
    prefix = nodes[data]["name"] + NORMALIZED_SUFFIX
    rewritten, made = set(), {}

    def add(node, variable=False):
        new_nodes.append(node)
        if variable:
            graph["arg_nodes"].append(start + len(new_nodes) - 1)
        return start + len(new_nodes) - 1

    def constant(what, values, rank, in_graph=True):
        """``values`` along axis 1 of a ``rank``-D tensor: its name, and its variable node
        when the graph reads it (else None)."""
        name = "%s_%s%s" % (prefix, what, "" if rank == 4 else "_%dd" % rank)
        shape = (1, channels) + (1,) * (rank - 2)
        if name not in rewritten:
            rewritten.add(name)
            context.param_rewrites.append(ParamRewrite(
                target=name, kind="constant", sources=(), shape=shape, values=tuple(values)))
        if in_graph and name not in made:
            made[name] = add({"op": "null", "name": name, "inputs": [],
                              "attrs": {"__shape__": str(shape)}}, variable=True)
        return made.get(name), name

    centred, explicit = {}, None
    folded = 0
    for r in readers:
        node = nodes[r]
        if _foldable(node, data, nodes):
            rank = len(_attr(node, "kernel", "(1, 1)").strip("()[] ").rstrip(",").split(",")) + 2
            mean_var, mean_name = constant("mean", mean, rank, in_graph=_padded(node))
            _, inv_name = constant("inv_std", [1.0 / v for v in std], rank, in_graph=False)
            weight = nodes[node["inputs"][1][0]]["name"]
            known = context.param_shapes.get(weight) or ()
            if len(known) > 1 and known[1] not in (0, channels):
                raise _config_error(weight, known, channels)
            base = node["name"] + NORMALIZED_SUFFIX
            context.param_rewrites.append(ParamRewrite(
                target=base + "_weight", kind="evaluate", sources=(weight, inv_name),
                graph=json.dumps(_expression(
                    [weight, inv_name], [("broadcast_mul", [0, 1], {})]))))
            node["inputs"][1] = [add({"op": "null", "name": base + "_weight", "inputs": []},
                                     variable=True), 0, 0]
            if _padded(node):
                if rank not in centred:
                    centred[rank] = add({"op": "broadcast_sub",
                                         "name": mean_name.replace("_mean", "_centred"),
                                         "inputs": [[data, 0, 0], [mean_var, 0, 0]]})
                node["inputs"][0] = [centred[rank], 0, 0]
            else:
                no_bias = _attr(node, "no_bias", "False") in ("True", "true", "1")
                bias = None if no_bias else nodes[node["inputs"][2][0]]["name"]
                names = [base + "_weight", mean_name] + ([bias] if bias else [])
                v = len(names)
                steps = [("broadcast_mul", [0, 1], {}), ("sum", [v], {"axis": str(tuple(range(1, rank)))}),
                         ("negative", [v + 1], {}) if bias is None
                         else ("elemwise_sub", [2, v + 1], {})]
                context.param_rewrites.append(ParamRewrite(
                    target=base + "_bias", kind="evaluate", sources=tuple(names),
                    graph=json.dumps(_expression(names, steps))))
                entry = [add({"op": "null", "name": base + "_bias", "inputs": []},
                             variable=True), 0, 0]
                if no_bias:
                    node.setdefault("attrs", {})["no_bias"] = "False"
                    node["inputs"].append(entry)
                else:
                    node["inputs"][2] = entry
            folded += 1
            continue
        if explicit is None:
            rank = getattr(context, "input_rank", None) or 4
            mean_var, _ = constant("mean", mean, rank)
            inv_var, _ = constant("inv_std", [1.0 / v for v in std], rank)
            sub = add({"op": "broadcast_sub", "name": prefix + "_centred_input",
                       "inputs": [[data, 0, 0], [mean_var, 0, 0]]})
            explicit = add({"op": "broadcast_mul", "name": prefix + "_input",
                            "inputs": [[sub, 0, 0], [inv_var, 0, 0]]})
        node["inputs"] = [[explicit, 0, 0] if e[0] == data else e for e in node["inputs"]]
    graph["heads"] = [[explicit, 0, 0] if h[0] == data and explicit is not None else h
                      for h in graph["heads"]]
    append_nodes(graph, new_nodes)
    _log.debug("Input normalization folded into %d convolution(s), explicit for %d other "
               "reader(s).", folded, len(readers) - folded)
    return {}


def _expression(names, steps):
    """A JSON graph over variables ``names`` computing ``steps`` in order.

    Each step is ``(op, [input indices], attrs)``; indices count the variables first, then
    the steps; the last step is the output.
    """
    nodes = [{"op": "null", "name": n, "inputs": []} for n in names]
    for k, (op, inputs, attrs) in enumerate(steps):
        node = {"op": op, "name": "step%d" % k, "inputs": [[i, 0, 0] for i in inputs]}
        if attrs:
            node["attrs"] = attrs
        nodes.append(node)
    return {"nodes": nodes, "arg_nodes": list(range(len(names))),
            "heads": [[len(nodes) - 1, 0, 0]]}


def _config_error(weight, shape, channels):
    return ConfigError(
        "input_normalization gives %d channel(s), but the first layer's weight %r has "
        "shape %s (%d input channels). Give one mean and one std per input channel."
        % (channels, weight, shape, shape[1]))
