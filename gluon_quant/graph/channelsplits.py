"""Channel splits of a convolution's output run as convolutions of the parts.

Res2Net splits a 1x1 convolution's output (after its BatchNorm and ReLU) into four
groups of channels; CSPNet and YOLO's cross-stage blocks split one convolution in two;
a GLU or WaveNet's gated activation splits a convolution into a value half and a gate
half. After :func:`~gluon_quant.graph.permutes.splits_as_slices` each part is a
``slice_axis`` over the channels, which has no int8 kernel: between int8 layers each
part cost a dequantize, a copy and a quantize. Res2Net-style blocks (2 of them, 64
channels in 4 parts, batch 16 at 64 px): 8 fp32 slices.

A slice of output channels ``[b, e)`` of a convolution is the convolution with filters
``b`` to ``e``, and what runs channel by channel after it (``BatchNorm``, activations,
``clip``, scalar arithmetic) commutes with the slice. :func:`channel_split_convolutions`
rewrites a convolution whose output (through such a per-channel chain) is read only by
channel slices that do not overlap into one convolution per slice, each with its rows of
the weight, bias and BatchNorm parameters (:class:`~gluon_quant.graph.rewrites.
ParamRewrite` slices, ``kind='evaluate'``), followed by a copy of the chain: the same
multiply-adds or fewer, exact (each output channel is computed by the same products),
and each part gets its own calibrated range. Taken for ungrouped convolutions whose
weights (and biases, BatchNorm parameters) are parameters of the net, where no node is
excluded by the user, and the channel count (axis 1) is the convolution's at every
input size (the slices' bounds are numbers).
"""
import logging

import mxnet as mx

from .builder import NodeBuilder
from .rewrites import ParamRewrite, attr_ints, consumers, prune, shaped_nodes

__all__ = ["channel_split_convolutions"]

_log = logging.getLogger(__name__)

#: Operators computing each channel from that channel alone (and no parameter).
_PER_CHANNEL = frozenset(("Activation", "relu", "sigmoid", "tanh", "clip", "softsign",
                          "_mul_scalar", "_plus_scalar", "_minus_scalar", "_rminus_scalar",
                          "_div_scalar", "_rdiv_scalar", "_power_scalar", "square", "sqrt",
                          "exp", "erf", "abs", "hard_sigmoid", "Dropout", "_copy",
                          "identity"))
_LEAKY = frozenset(("leaky", "elu", "selu", "gelu"))


def _per_channel(node, nodes, params):
    """Whether ``node`` computes each channel of its first input from it alone: an
    element-wise operator, or a ``BatchNorm`` over axis 1 of parameters."""
    attrs = node.get("attrs") or {}
    if node["op"] == "LeakyReLU":
        return attrs.get("act_type", "leaky") in _LEAKY and len(node["inputs"]) == 1
    if node["op"] == "BatchNorm":
        return int(attrs.get("axis", 1)) == 1 and all(
            nodes[e[0]]["op"] == "null" and nodes[e[0]]["name"] in params
            for e in node["inputs"][1:])
    return node["op"] in _PER_CHANNEL and len(node["inputs"]) == 1


def _chain(index, nodes, readers, heads, params):
    """The per-channel nodes after the convolution ``index`` (each the only reader of the
    one before), the last node's index."""
    chain, current = [], index
    while (current, 0) not in heads:
        users = readers.get((current, 0), [])
        if len(users) != 1 or nodes[users[0]]["inputs"][0][:2] != [current, 0] \
                or any(readers.get((current, out)) for out in (1, 2)) \
                or not _per_channel(nodes[users[0]], nodes, params):
            break
        chain.append(users[0])
        current = users[0]
    return chain, current


def _bounds(node, channels, rank):
    """``(begin, end)`` of a slice over axis 1 only of a ``rank``-D map, else None."""
    attrs = node.get("attrs") or {}
    try:
        if node["op"] == "slice_axis":
            if int(attrs.get("axis", 0)) % rank != 1:
                return None
            begin, end = int(attrs.get("begin", 0)), attrs.get("end", "None")
            end = channels if str(end) == "None" else int(end)
        elif node["op"] == "slice" and not any(v != 1 for v in attr_ints(attrs, "step")):
            begins = str(attrs.get("begin", "()")).strip("()[] ").split(",")
            ends = str(attrs.get("end", "()")).strip("()[] ").split(",")
            if len(begins) < 2 or any(v.strip() not in ("None", "0", "")
                                      for v in begins[:1] + begins[2:]) \
                    or any(v.strip() not in ("None", "") for v in ends[:1] + ends[2:]):
                return None
            begin = 0 if begins[1].strip() == "None" else int(begins[1])
            end = channels if ends[1].strip() == "None" else int(ends[1])
        else:
            return None
    except (TypeError, ValueError):
        return None
    begin, end, _ = slice(begin, end).indices(channels)
    return (begin, end) if end > begin else None


def _slice_param(name, begin, end, context, made):
    """The name of a new parameter holding rows ``[begin, end)`` of ``name``."""
    target = "%s_rows%d_%d" % (name, begin, end)
    if target not in made:
        made.add(target)
        context.param_rewrites.append(ParamRewrite(
            target=target, kind="evaluate", sources=(name,),
            graph=mx.sym.slice_axis(mx.sym.var(name), axis=0, begin=begin,
                                    end=end).tojson()))
    return target


def channel_split_convolutions(graph, context):
    """Rewrite convolutions whose (per-channel-transformed) output is read only by
    non-overlapping channel slices as one convolution per slice (see the module
    docstring).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    if not any(n["op"] in ("slice_axis", "slice") for n in nodes):
        return {}       # (no shapes inferred for nets without slices)
    convs, shapes = shaped_nodes(graph, context, ("Convolution",))
    if not convs or not shapes:
        return {}
    params = set(context.param_shapes)
    readers = consumers(graph)
    heads = {(h[0], h[1]) for h in graph["heads"]}
    position = {id(n): i for i, n in enumerate(nodes)}
    build, made, redirect, done = NodeBuilder(graph), set(), {}, 0
    for conv in convs:
        index, attrs = position[id(conv)], conv.get("attrs") or {}
        weights = [nodes[e[0]] for e in conv["inputs"][1:]]
        if int(attrs.get("num_group", 1)) != 1 or any(
                w["op"] != "null" or w["name"] not in params for w in weights) \
                or attrs.get("layout", "None") not in ("None", "NCW", "NCHW", "NCDHW"):
            continue
        chain, last = _chain(index, nodes, readers, heads, params)
        users = readers.get((last, 0), [])
        shape = shapes.get((nodes[last]["name"], 0))
        channels = int(attrs.get("num_filter", 0))
        if not users or (last, 0) in heads or not shape or shape[1] != channels:
            continue
        parts = [_bounds(nodes[u], channels, len(shape)) for u in users]
        names = {nodes[i]["name"] for i in [index] + chain + users}
        ordered = sorted(p for p in parts if p is not None)
        if None in parts or names & set(context.excluded) or any(
                a[1] > b[0] for a, b in zip(ordered, ordered[1:])) or len(users) < 2 \
                and ordered[0][1] - ordered[0][0] == channels:
            continue
        done += 1
        for part, (user, (begin, end)) in enumerate(zip(users, parts)):
            inputs = [list(conv["inputs"][0])] + [
                build.add("null", _slice_param(w["name"], begin, end, context, made), [])
                for w in weights]
            entry = build.add("Convolution", "%s_part%d" % (conv["name"], part), inputs,
                              **dict(attrs, num_filter=end - begin))
            for member in chain:
                node = nodes[member]
                extra = [build.add("null", _slice_param(nodes[e[0]]["name"], begin, end,
                                                        context, made), [])
                         for e in node["inputs"][1:]]
                entry = build.add(node["op"], "%s_part%d" % (node["name"], part),
                                  [entry] + extra, **(node.get("attrs") or {}))
            redirect[user] = entry
        for part, (begin, end) in enumerate(parts):
            context.rewritten["%s_part%d" % (conv["name"], part)] = (
                "channels [%d:%d] of %s, whose output%s was read as %d channel slices: "
                "one convolution per slice (exact), int8 where the layers around are, "
                "instead of fp32 slices" % (
                    begin, end, conv["name"], " (through %s)" % ", ".join(
                        nodes[m]["op"] for m in chain) if chain else "", len(users)))
    if not done:
        return {}
    for node in nodes + build.nodes:
        node["inputs"] = [list(redirect[e[0]]) if e[0] in redirect and e[1] == 0 else e
                          for e in node["inputs"]]
    graph["heads"] = [list(redirect[h[0]]) if h[0] in redirect and h[1] == 0 else h
                      for h in graph["heads"]]
    build.append()
    prune(graph)
    _log.debug("Ran the channel slices of %d convolution(s) as convolutions.", done)
    return {}
