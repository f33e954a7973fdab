"""Memory layouts that MXNet 1.9.1's oneDNN operators get wrong, rewritten around.

**Channels-last convolutions** run as channels-first ones between two transposes
(:func:`channels_first_convolutions`). MXNet 1.9.1's oneDNN fusion takes a
``layout='NHWC'`` (or ``'NDHWC'``) convolution into a fused node whose primitive cannot
be created ("could not create a descriptor for a dilated convolution forward propagation
primitive", raised when the graph runs), and its int8 convolution takes NCHW/NCDHW data
only. A Gluon net written channels-last
(``nn.Conv2D(..., layout='NHWC')``) therefore failed to quantize at all. Rewritten as
``transpose`` -> channels-first convolution -> ``transpose``, with the weight transposed
once on the pipeline's copies (:class:`~gluon_quant.graph.rewrites.ParamRewrite`), the
convolution fuses and runs in int8 like any other; the layers around it keep their
channels-last layout.

**Reshaped blocked arrays** are made plain before the readers that misread them
(:func:`plain_reshaped_inputs`). A oneDNN operator (a convolution, fused or not)
leaves its output in a blocked layout (``nCdhw16c``). ``Reshape`` is run in place, so
its output shares that blocked memory; a reader that takes the memory's own description
then sees the producer's rank or channel count instead of the reshaped one. Measured on MXNet 1.9.1's CPU build, a 3-D
convolution's ``(N, C, D, H, W)`` output reshaped to ``(N, C*D, H, W)``, ``(N, C, D*H, W)``
or ``(N, C, D*H*W)`` (a 2-D convolution's output reshaped to any rank was read right):

- ``Pooling``: "dimensions are invalid" (an SE block over a 3-D net, its squeeze written as
  ``AdaptiveAvgPooling2D(x.reshape((0, -3, 0, 0)))``);
- ``BatchNorm``: "Check failed: weight_mem.get_desc().get_size() == channels_ * ...";
- ``transpose``: "could not create a primitive descriptor for a reorder primitive";

while ``Convolution``, ``Deconvolution``, ``FullyConnected``, ``Concat``, additions,
activations, ``softmax`` and ``LRN`` read the same array right. Reshaped twice (a 3-D
convolution's output viewed as ``(N, C, D*H*W)`` by the net, then as ``(N, C, D*H*W,
1)``), it fails in every oneDNN reader tried (``Convolution``, ``Deconvolution``,
``Pooling``: "could not create a primitive descriptor for a reorder primitive"). The error surfaces
asynchronously, and oneDNN's fusion makes it appear where the hybridized fp32 net ran
(a BatchNorm between the convolution and the reshape kept a plain layout there).

:func:`plain_reshaped_inputs` puts a ``clip`` over the whole float range between such a
reshape and such a reader, or another reshape: ``clip`` has no oneDNN kernel, so MXNet
hands it (and its readers) plain memory, and it is the identity on every finite value.
What an operator in :data:`HANDS_PLAIN` produced (a slice, a part of a split, a transpose)
is plain memory already, however blocked its input: its reshapes get no clip.

**Custom operators** read a blocked array as plain memory (:data:`READS_RAW`):
:func:`plain_custom_inputs` gives each of their inputs that may be blocked the same clip.
The hybridized fp32 net (the user's own) misreads it as well; the quantized one does not.
"""
import logging

import mxnet as mx

from .rewrites import ParamRewrite, append_nodes, reachable

__all__ = ["channels_first_convolutions", "plain_reshaped_inputs", "plain_custom_inputs",
           "MISREAD_BY", "RESHAPES", "HANDS_PLAIN", "READS_RAW"]

_log = logging.getLogger(__name__)

#: Channels-last layout -> (channels-first layout, axes to it, axes back).
_CHANNELS_LAST = {
    "NHWC": ("NCHW", (0, 3, 1, 2), (0, 2, 3, 1)),
    "NDHWC": ("NCDHW", (0, 4, 1, 2, 3), (0, 2, 3, 4, 1)),
}


def channels_first_convolutions(graph, context):
    """Rewrite every channels-last ``Convolution`` of ``graph`` (in place) as a
    channels-first one between two transposes; its weight ``(O, *kernel, C)`` becomes a
    new parameter ``<node>_channels_first_weight`` of shape ``(O, C, *kernel)``.

    Returns
    -------
    dict
        Empty: the convolutions are not kept fp32 by it.
    """
    nodes = graph["nodes"]
    back = {}       # convolution index -> the transpose its readers now read
    for index in range(len(nodes)):
        node = nodes[index]
        attrs = node.get("attrs") or {}
        if node["op"] != "Convolution" or attrs.get("layout") not in _CHANNELS_LAST \
                or len(node["inputs"]) < 2:
            continue
        first, to_first, to_last = _CHANNELS_LAST[attrs["layout"]]
        weight = nodes[node["inputs"][1][0]]["name"]
        target = node["name"] + "_channels_first_weight"
        context.param_rewrites.append(ParamRewrite(
            target=target, kind="evaluate", sources=(weight,),
            graph=mx.sym.transpose(mx.sym.var(weight), axes=to_first).tojson()))
        nodes.append({"op": "transpose", "name": node["name"] + "_to_channels_first",
                      "attrs": {"axes": str(to_first)}, "inputs": [list(node["inputs"][0])]})
        nodes.append({"op": "null", "name": target, "inputs": []})
        node["inputs"] = [[len(nodes) - 2, 0, 0], [len(nodes) - 1, 0, 0]] + node["inputs"][2:]
        node["attrs"] = dict(attrs, layout=first)
        nodes.append({"op": "transpose", "name": node["name"] + "_to_channels_last",
                      "attrs": {"axes": str(to_last)}, "inputs": [[index, 0, 0]]})
        back[index] = len(nodes) - 1
    if not back:
        return {}
    readers = set(back.values())
    for number, node in enumerate(nodes):
        if number not in readers:
            node["inputs"] = [[back[e[0]], 0, 0] if e[0] in back and e[1] == 0 else e
                              for e in node["inputs"]]
    heads = [[back[h[0]], 0, 0] if h[0] in back and h[1] == 0 else h for h in graph["heads"]]
    graph.pop("node_row_ptr", None)
    graph.update(reachable(nodes, heads, graph.get("attrs")))
    _log.debug("Ran %d channels-last convolution(s) channels-first.", len(back))
    return {}


#: Readers that misread a reshaped blocked array (measured, see the module docstring).
MISREAD_BY = frozenset(("Pooling", "BatchNorm", "transpose"))
#: Operators that give their input's memory a new shape without copying it.
RESHAPES = frozenset(("Reshape", "reshape_like", "expand_dims", "squeeze", "Flatten",
                      "_npx_reshape"))
#: Operators whose output is plain memory whatever the layout of their input: a 3-D
#: convolution's blocked output passed through one of them, then reshaped twice (rank and
#: channels changed), was read right by ``Pooling``, ``BatchNorm`` and ``transpose``
#: (measured on MXNet 1.9.1; through ``relu``, ``Activation``, ``identity``, ``Cast``, a
#: product with a scalar or ``broadcast_mul``, the blocked layout passes on and they fail).
#: A reshape of their output gets no clip: self-attention written with ``split`` after a
#: transpose (``qkv.reshape(...).transpose(...)``, each part reshaped twice) paid a clip per
#: part, 0.73 of a small ViT's 6.9 ms in int8.
HANDS_PLAIN = frozenset(("slice_axis", "slice", "SliceChannel", "_split_v2", "transpose",
                         "clip"))
#: Operators that read their inputs' memory as plain whatever its layout: MXNet 1.9.1 hands
#: a ``Custom`` operator (a Python ``mx.operator.CustomOp``) a convolution's blocked output
#: as a plain array. A hand-written swish as a ``CustomOp`` after a convolution: the
#: hybridized net's output was off by up to 1e35, or the process died in a segmentation
#: fault; after convolution + BatchNorm, logit cosine 0.80 to the same net with the swish
#: written with MXNet's operators (imperative: 0.80-0.94, from run to run).
READS_RAW = frozenset(("Custom",))
_FLOAT_MAX = "3.4028234e+38"
_PLAIN_CLIP = {"a_min": "-" + _FLOAT_MAX, "a_max": _FLOAT_MAX}


def _changes_layout(before, after):
    """Whether a reshape from ``before`` to ``after`` is one MXNet misreads: of a 5-D (or
    larger) array, changing its rank or channel axis (True where a shape is unknown).
    Reshapes of 4-D arrays were all read right (a convolution's output reshaped to 3-D
    for attention, to 5-D for ShuffleNet's channel shuffle, its batch or spatial axes
    merged or split): they get no clip."""
    if before is None or after is None:
        return True
    return len(before) >= 5 and (len(before) != len(after) or before[1:2] != after[1:2])


def _origin(nodes, node):
    """The first node at or before ``node``, following data inputs back through
    :data:`RESHAPES`, that is not a reshape (a variable ends the walk)."""
    while node["op"] in RESHAPES and node["inputs"]:
        node = nodes[node["inputs"][0][0]]
    return node


def plain_reshaped_inputs(graph, context):
    """Insert a full-range ``clip`` between a reshape and a reader in :data:`MISREAD_BY`
    or another reshape, unless what is reshaped comes from an operator that
    :data:`HANDS_PLAIN` memory.

    Parameters
    ----------
    graph : dict
        The traced graph (edited in place).
    context : PassContext
        ``infer_shapes`` (when a calibration batch gave shapes) limits the clip to
        reshapes of 5-D arrays that change the rank or the channel count; without it every
        reshape before such a reader gets one.

    Returns
    -------
    dict
        Nothing is kept fp32 by this pass: ``{}``.
    """
    nodes = graph["nodes"]
    pairs = [(node, slot) for node in nodes if node["op"] in MISREAD_BY or
             node["op"] in RESHAPES
             for slot, entry in enumerate(node["inputs"][:1])
             if nodes[entry[0]]["op"] in RESHAPES]
    if not pairs:
        return {}
    shapes = (context.infer_shapes(graph) or {}) if context.infer_shapes else {}
    found = []      # all decided on the graph as traced, before a clip goes in
    for node, slot in pairs:
        entry = node["inputs"][slot]
        reshape = nodes[entry[0]]
        if _origin(nodes, reshape)["op"] in HANDS_PLAIN:
            continue
        source = reshape["inputs"][0] if reshape["inputs"] else None
        before = shapes.get((nodes[source[0]]["name"], source[1])) if source else None
        after = shapes.get((reshape["name"], entry[1]))
        # a reshape of the reshape: every reader after it fails (known shapes only)
        if _changes_layout(before, after) and (node["op"] not in RESHAPES or (
                before is not None and after is not None and
                nodes[source[0]]["op"] not in RESHAPES)):
            found.append((node, slot, before, after))
    clips = {}
    for node, slot, before, after in found:
        reshape = nodes[node["inputs"][slot][0]]
        _read_through_clip(nodes, node, slot, clips, context, "MXNet 1.9.1's oneDNN %s the "
                           "reshaped blocked array, clip hands it plain memory" % (
                               "operators misread a reshape of" if node["op"] in RESHAPES
                               else node["op"] + " misreads"))
        _log.debug("%s reads reshape %s (%s -> %s) through a plain-layout clip",
                   node["name"], reshape["name"], before, after)
    if clips:
        append_nodes(graph, [])     # back into topological order
    return {}


def plain_custom_inputs(graph, context):
    """Insert a full-range ``clip`` before every input of a :data:`READS_RAW` operator
    (a Python ``CustomOp``) that may be blocked memory: anything but a variable or what an
    operator of :data:`HANDS_PLAIN` produced (followed back through reshapes).

    Parameters
    ----------
    graph : dict
        The traced graph (edited in place).
    context : PassContext
        Its ``rewritten`` map records each clip and why; ``infer_dtypes``, where given,
        leaves inputs of other types than float32 (indices, masks) without one.

    Returns
    -------
    dict
        Nothing is kept fp32 by this pass: ``{}``.
    """
    nodes = graph["nodes"]
    found = [(node, slot) for node in nodes if node["op"] in READS_RAW
             for slot, entry in enumerate(node["inputs"])
             if _origin(nodes, nodes[entry[0]])["op"] not in HANDS_PLAIN | {"null"}]
    if found and context.infer_dtypes:      # oneDNN blocks float32 arrays only
        dtypes = context.infer_dtypes(graph) or {}
        found = [(node, slot) for node, slot in found
                 if _dtype(dtypes, nodes, node["inputs"][slot]) in ("float32", None)]
    if not found:
        return {}
    clips = {tuple(n["inputs"][0][:2]): i for i, n in enumerate(nodes)    # reshapes' clips
             if n["op"] == "clip" and n.get("attrs") == _PLAIN_CLIP}
    for node, slot in found:
        _read_through_clip(nodes, node, slot, clips, context, "MXNet 1.9.1 hands a Custom "
                           "operator a oneDNN-blocked array as if it were plain (garbage or "
                           "a crash), clip hands it plain memory")
        _log.debug("Custom operator %s reads input %d through a plain-layout clip",
                   node["name"], slot)
    append_nodes(graph, [])     # back into topological order
    return {}


def _dtype(dtypes, nodes, entry):
    """The inferred dtype of the graph entry ``entry`` (None when unknown)."""
    name = nodes[entry[0]]["name"]
    return dtypes.get("%s_output%d" % (name, entry[1])) or (
        dtypes.get(name + "_output") if entry[1] == 0 else None)


def _read_through_clip(nodes, node, slot, clips, context, why):
    """Make ``node`` read its input ``slot`` through a full-range ``clip`` (one per read
    entry, shared through ``clips``: ``{(node index, output): clip index}``), recorded
    in ``context.rewritten`` with ``why``."""
    entry = node["inputs"][slot]
    key = tuple(entry[:2])
    if key not in clips:
        source = nodes[entry[0]]
        name = source["name"] + ("_plain" if entry[1] == 0 else "_plain%d" % entry[1])
        nodes.append({"op": "clip", "name": name, "attrs": dict(_PLAIN_CLIP),
                      "inputs": [list(entry)]})
        clips[key] = len(nodes) - 1
        context.rewritten[name] = "inserted (identity) before %s: %s" % (node["name"], why)
    node["inputs"][slot] = [clips[key], 0, 0]
