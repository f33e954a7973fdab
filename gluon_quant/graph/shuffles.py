"""Channel shuffles run as one-hot 1x1 convolutions, int8 where the layers around are.

ShuffleNet (v1 and v2) and nets built like it mix the channels of their groups or branches
with a channel shuffle: ``x.reshape((0, -4, g, -1, -2)).swapaxes(1, 2).reshape((0, -3,
-2))``, traced as ``Reshape -> transpose -> Reshape`` (after
:func:`~gluon_quant.graph.permutes.swapaxes_as_transpose`), and ShuffleNet v2 then slices
the result in two halves along the channels. None of these has an int8 kernel: every
shuffle cost a dequantize of the int8 concatenation before it, a 5-D fp32 transpose (a
oneDNN reorder) and a quantize of each half after it. In GluonCV's shufflenet_v2 (batch 8,
160 px) the transposes alone were 41% of the int8 graph's operator time and the
quantize/dequantize nodes around them another 22%.

A channel shuffle is a fixed permutation of the channels, which is a 1x1 convolution with
one-hot weights: output channel ``c`` reads input channel ``(c % g) * (C / g) + c // g``
with weight 1. :func:`channel_shuffles` rewrites each shuffle as such a ``Convolution``
(no bias), and a ``slice_axis`` over the channels of the shuffle's output as its own
convolution with the rows of its channels, so that ShuffleNet v2's halves come out of two
convolutions of ``C / 2`` filters each and nothing is left between the int8 layers. In
int8 the weights are exact (one value per output channel, 1.0 on a per-channel scale) and
each output is an input value requantized onto the convolution's calibrated range; in
fp32 the sums are exact (one product by 1.0, the others by 0.0), but a non-finite input
value would spread through the zeros (``0 * inf``): calibration refuses non-finite
tensors. The weights are constant parameters of the rewritten graph
(:class:`~gluon_quant.graph.rewrites.ParamRewrite`, ``kind='constant'``).

Taken where the shapes are known (``context.infer_shapes``), for data of rank 3 to 5
(1-D to 3-D maps, channels on axis 1), where each intermediate tensor has no other reader,
none of the three nodes is excluded by the user, and axis 1 keeps its size when the
graph's shapes are inferred again with each input axis in turn doubled (a shuffle over the
time steps of ``(N, T, C)`` data is left: its permutation changes with the length).
"""
import logging

import numpy as np

from .builder import NodeBuilder
from .permutes import varied_shapes
from .rewrites import (ParamRewrite, attr_ints, consumers, parameter_entries, private_attrs,
                       prune, shaped_nodes)

__all__ = ["channel_shuffles", "shuffle_permutation", "never_negative"]

_log = logging.getLogger(__name__)

_TRANSPOSES = ("transpose", "_npi_transpose")
_LAYOUTS = {3: "NCW", 4: "NCHW", 5: "NCDHW"}


def shuffle_permutation(channels, groups):
    """The input channel each output channel of a channel shuffle reads.

    Parameters
    ----------
    channels, groups : int
        ``C`` and ``g`` of ``reshape((N, g, C / g, ...)) -> swap axes 1, 2 -> reshape((N,
        C, ...))``.

    Returns
    -------
    numpy.ndarray of int
        ``perm`` with ``out[:, c] = in[:, perm[c]]``.
    """
    per_group = channels // groups
    out = np.arange(channels)
    return (out % groups) * per_group + out // groups


def _shuffle(index, nodes, shapes, readers, heads):
    """``(data entry, channels, groups, rank, names of the three nodes)`` where node
    ``index`` ends a channel shuffle (``Reshape(transpose(Reshape(data)))``), else None."""
    last = nodes[index]
    chain, entry = [index], last["inputs"][0]
    for ops in (_TRANSPOSES, ("Reshape",)):
        node = nodes[entry[0]]
        if node["op"] not in ops or entry[1] != 0 or len(node["inputs"]) != 1 \
                or readers.get((entry[0], 0)) != [chain[-1]] or (entry[0], 0) in heads:
            return None
        chain.append(entry[0])
        entry = node["inputs"][0]
    shape = lambda i: shapes.get((nodes[i]["name"], 0))     # noqa: E731
    data, split, moved, out = (shapes.get((nodes[entry[0]]["name"], entry[1])),
                               shape(chain[2]), shape(chain[1]), shape(index))
    if not data or not split or not moved or out != data or not 3 <= len(data) <= 5:
        return None
    rank = len(data)
    groups, per_group = split[1:3] if len(split) == rank + 1 else (0, 0)
    swap = (0, 2, 1) + tuple(range(3, rank + 1))
    if groups < 2 or per_group < 2 or groups * per_group != data[1] \
            or split[:1] + split[3:] != data[:1] + data[2:] \
            or tuple(a % (rank + 1) for a in attr_ints(nodes[chain[1]].get("attrs") or {},
                                                       "axes")) != swap \
            or moved != tuple(split[i] for i in swap):
        return None
    return entry, data[1], groups, rank, [nodes[i]["name"] for i in chain]


def _channel_slice(node, rank):
    """``(begin, end)`` of a ``slice_axis`` over axis 1 of ``rank``-D data, else None."""
    attrs = node.get("attrs") or {}
    if node["op"] != "slice_axis" or len(node["inputs"]) != 1:
        return None
    try:
        axis = int(attrs.get("axis", 0))
        begin = int(attrs.get("begin", 0))
        end = attrs.get("end", "None")
        end = None if str(end) == "None" else int(end)
    except (TypeError, ValueError):
        return None
    return (begin, end) if axis % rank == 1 else None


#: Operators whose output is never negative, by operator (and ``act_type``).
_UNSIGNED = {"Activation": ("relu", "sigmoid", "softrelu"), "relu": None, "sigmoid": None}
#: Operators whose output is never negative where none of their inputs is.
_SIGN_KEEPING = frozenset(("Pooling", "Flatten", "Reshape", "expand_dims", "transpose",
                           "_npi_transpose", "Concat", "_npi_concatenate", "Dropout",
                           "slice_axis", "slice", "squeeze", "_copy", "identity",
                           "elemwise_add", "elemwise_mul", "_npi_add", "_npi_multiply",
                           "broadcast_add", "broadcast_plus", "broadcast_mul"))


def never_negative(nodes):
    """The indices of the nodes of a JSON graph (topologically ordered) whose outputs are
    never negative: a ReLU, sigmoid or softrelu, a ``clip`` from 0 or above, and what only
    moves, combines, adds or multiplies such outputs (concatenations, poolings, slices)."""
    found = set()
    for index, node in enumerate(nodes):
        op, attrs = node["op"], node.get("attrs") or {}
        if op in _UNSIGNED:
            acts = _UNSIGNED[op]
            unsigned = acts is None or attrs.get("act_type") in acts
        elif op == "clip":
            try:
                unsigned = float(attrs.get("a_min")) >= 0.0
            except (TypeError, ValueError):
                unsigned = False
        else:
            unsigned = op in _SIGN_KEEPING and bool(node["inputs"]) and all(
                e[0] in found for e in node["inputs"])
        if unsigned:
            found.add(index)
    return found


def channel_shuffles(graph, context):
    """Rewrite each channel shuffle, and the channel slices of its output, as one-hot 1x1
    convolutions (see the module docstring).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, ("Reshape",), arity=1)
    if not candidates or not getattr(context.infer_shapes, "input_shapes", None):
        return {}       # (no other input size to try: no axis is known to keep its size)
    readers = consumers(graph)
    heads = {(h[0], h[1]) for h in graph["heads"]}
    position = {id(n): i for i, n in enumerate(nodes)}
    constant = parameter_entries(graph, set(context.param_shapes))
    found = {}
    for last in candidates:
        index = position[id(last)]
        shuffle = _shuffle(index, nodes, shapes, readers, heads)
        if shuffle is not None and not constant[shuffle[0][0]] \
                and not set(shuffle[4]) & set(context.excluded):
            found[index] = shuffle
    # The permutation is of the channels' count: a shuffle over an axis that takes the
    # input's size (a sequence's time steps in (N, T, C) data) is left.
    for varied in varied_shapes(graph, context.infer_shapes) if found else ():
        for index, (data, channels, _, _, _) in list(found.items()):
            key = (nodes[data[0]]["name"], data[1])
            if (varied.get(key) or (None, None))[1] != channels:
                del found[index]
    build, done, relus, made = NodeBuilder(graph), 0, {}, set()
    unsigned = never_negative(nodes)
    for index, (data, channels, groups, rank, names) in found.items():
        perm = shuffle_permutation(channels, groups)
        targets = [(index, 0, channels)]        # (node rewritten in place, first row, end)
        users = readers.get((index, 0), [])
        slices = {i: _channel_slice(nodes[i], rank) for i in users}
        if (index, 0) not in heads and users and all(
                bounds is not None and nodes[i]["name"] not in context.excluded
                for i, bounds in slices.items()):
            targets = [(i,) + slice(*bounds).indices(channels)[:2]
                       for i, bounds in slices.items()]
        if any(end <= begin for _, begin, end in targets):
            continue
        done += 1
        for target, begin, end in targets:
            node = nodes[target]
            weight = "%s_shuffle_weight" % node["name"]
            rows = np.zeros((end - begin, channels), dtype="float32")
            rows[np.arange(end - begin), perm[begin:end]] = 1.0
            context.param_rewrites.append(ParamRewrite(
                target=weight, kind="constant", sources=(),
                shape=(end - begin, channels) + (1,) * (rank - 2),
                values=tuple(rows.ravel().tolist())))
            node.update(op="Convolution", inputs=[list(data), build.add("null", weight, [])],
                        attrs=dict(private_attrs(node), kernel=str((1,) * (rank - 2)),
                                   num_filter=str(end - begin), no_bias="True",
                                   layout=_LAYOUTS[rank]))
            if data[0] in unsigned:     # exact, and oneDNN's int8 output is then uint8
                relus[target] = build.add("Activation", node["name"] + "_relu",
                                          [[target, 0, 0]], act_type="relu")
                made.add(id(build.nodes[-1]))
            context.rewritten[node["name"]] = (
                "a channel shuffle (%s) %sas a one-hot 1x1 Convolution (%d of %d channels, "
                "%d groups): int8 where the layers around it are, instead of a dequantize, "
                "an fp32 transpose and a quantize" % (
                    ", ".join(names[::-1]), "and this slice of it " if target != index
                    else "", end - begin, channels, groups))
    if not done:
        return {}
    for node in nodes + build.nodes:
        if id(node) not in made:
            node["inputs"] = [relus[e[0]] if e[0] in relus and e[1] == 0 else e
                              for e in node["inputs"]]
    graph["heads"] = [relus[h[0]] if h[0] in relus and h[1] == 0 else h
                      for h in graph["heads"]]
    build.append()
    prune(graph)
    _log.debug("Ran %d channel shuffle(s) as 1x1 convolutions.", done)
    return {}
