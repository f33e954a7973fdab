"""Explicit zero padding folded into the convolutions and poolings that read it, and crops
of a convolution's output into its padding (a ``TRACED`` pass of
:data:`gluon_quant.graph.passes.PASSES`): an exact fp32 rewrite.

A symmetric pad becomes the convolution's own padding. An asymmetric one (TensorFlow's
"same" padding of a stride-2 convolution on an even size: one row and column after,
none before) becomes a symmetric padding of the larger side and a kernel with zero taps
on the smaller side: with ``b`` pixels before and ``a > b`` after, the convolution pads
``a`` on both sides and its kernel gets ``a - b`` zero taps first, so that its windows
start where the padded ones did and it has the same number of outputs (and the mirror
image when ``b > a``). Exact (the added taps multiply padding or nothing); the kernel
grows (3x3 -> 4x4), so it is done where the added multiply-adds per input value stay
under :data:`MAX_ADDED_MACS`: depthwise convolutions (1.75 added per value), stems and
narrow convolutions, not wide ones, which are bound by their multiply-adds. A pad of
the network's input stays: it is no int8 layer's output, and an image stem read through
it keeps its own kernel (and :mod:`~gluon_quant.graph.stem`'s measure of its cost).

A crop of a convolution's output (a TCN's causal "chomp": ``Conv1D(padding=(k - 1) *
d)``, then the last ``(k - 1) * d`` steps sliced off) is the padding it keeps: ``p - b``
before and ``p - a`` after, an asymmetric one again as the larger side and zero taps
(``k - 1`` taps after a causal kernel: :data:`MAX_CROP_MACS`).

A pooling takes in a zero pad where the result is the same (see
:func:`pads_into_convolutions`): a ResNet stem ported from Keras (``ZeroPadding2D(1)``
after the ReLU, then a valid 3x3 stride-2 max pooling), batch 16 at 224 px, int8 156 ms
with the fp32 Pad, 105 ms folded (TF's one-sided "same" pad there: 236 -> 105 ms).
"""
import collections

import mxnet as mx

from .rewrites import ParamRewrite, attr_ints, prune
from .stem import reads_input

__all__ = ["pads_into_convolutions", "MAX_ADDED_MACS", "MAX_CROP_MACS"]

#: An asymmetric pad is folded into a convolution only where its larger kernel adds at
#: most this many multiply-adds per input value (``added taps x output channels per
#: group / stride``). A Pad between int8 layers cost a dequantize, MXNet's slow copy and
#: a quantize. Measured, int8 (fp32), a 1x1 convolution, the pad (0, 1, 0, 1), a 3x3
#: stride-2 convolution, batch 16, folded over kept: depthwise 32 channels at 112 px
#: (1.75 added) 4.1x, 96 at 56 px 9.9x; full 16->32 at 112 px (56) 3.2x, 64->128 at 56
#: px (224) 2.0x, 128->256 at 56 px (448) 1.95x (fp32 1.08x), 256->512 at 14 px (896)
#: 1.15x, 512->1024 at 14 px (1792) 0.93x (fp32 0.60x), 1024->2048 at 7 px 0.58x.
MAX_ADDED_MACS = 512
#: A crop of a convolution's output is folded into its padding where its zero taps add at
#: most this many multiply-adds per input value: the slice between int8 layers cost more
#: than a pad. Measured, a 4-block causal TCN (kernel 3, two folds per block), batch 16,
#: int8, folded over kept: 128 channels (256 added) 1.6x, 256 (512 added) 1.7-2.1x, 512
#: channels (1024 added) 1.2-1.4x.
MAX_CROP_MACS = 1024


def _zero_pad_pairs(node):
    """``[(before, after), ...]`` per spatial axis of a constant-zero ``Pad`` that leaves
    the batch and channel axes alone, else None."""
    attrs = node.get("attrs") or {}
    if node["op"] not in ("Pad", "pad") or attrs.get("mode", "constant") != "constant" \
            or float(attrs.get("constant_value", 0)) != 0.0:
        return None
    widths = attr_ints(attrs, "pad_width")
    if len(widths) not in (8, 10) or any(widths[:4]):
        return None
    return list(zip(widths[4::2], widths[5::2]))


def _weight_name(nodes, conv, params):
    """The parameter ``conv`` reads as its weight, or None (a weight computed in the graph,
    a cross-correlation's)."""
    if len(conv["inputs"]) < 2:
        return None
    weight = nodes[conv["inputs"][1][0]]
    return weight["name"] if weight["op"] == "null" and weight["name"] in params else None


#: What the folds read besides the graph: the parameter names, the graph's inferred shapes
#: (a function, inferring them once), whether the backend runs a ``full`` int8 pooling.
_Facts = collections.namedtuple("_Facts", "params shapes full")


def _foldable(nodes, reader, entry, index, pairs, facts):
    """Whether the ``Pad`` at ``index`` (``pairs``) can be folded into ``nodes[reader]``,
    which reads it through ``entry``."""
    conv = nodes[reader]
    attrs = conv.get("attrs") or {}
    if conv["op"] == "Pooling" and conv["inputs"][0] is entry:
        return _pool_fold(nodes, conv, nodes[index], pairs, facts) is not None
    if conv["op"] != "Convolution" or conv["inputs"][0] is not entry \
            or sum(e[0] == index for e in conv["inputs"]) != 1 \
            or attrs.get("layout", "None") not in ("None", "NCW", "NCHW", "NCDHW") \
            or len(attr_ints(attrs, "kernel")) != len(pairs):
        return False
    if all(b == a for b, a in pairs):
        return True
    if any(d != 1 for d in attr_ints(attrs, "dilate")) or len(pairs) == 1:
        return False    # zero taps of a dilated kernel are d pixels apart; 3-D weights: no pad
    if _weight_name(nodes, conv, facts.params) is None \
            or reads_input(nodes, nodes[index]["inputs"][0], facts.params):
        return False    # a pad of the network's input is no int8 layer's output
    kernel, stride = attr_ints(attrs, "kernel"), attr_ints(attrs, "stride") or [1] * len(pairs)
    grown = [k + abs(a - b) for k, (b, a) in zip(kernel, pairs)]
    per_group = int(attrs.get("num_filter", 0)) // max(int(attrs.get("num_group", 1)), 1)
    added = (_product(grown) - _product(kernel)) * per_group / _product(stride)
    return 0 < per_group and added <= MAX_ADDED_MACS


#: Producers whose output is never negative: a zero pad of it is a max pooling's own
#: (minus infinity) padding as far as the maximum of any window with a real value goes.
_NON_NEGATIVE = {"relu", "sigmoid", "Activation:relu", "Activation:sigmoid",
                 "Activation:softrelu"}


def _non_negative(node):
    attrs = node.get("attrs") or {}
    if node["op"] == "clip":
        return float(attrs.get("a_min", "-1")) >= 0
    return node["op"] in _NON_NEGATIVE or "%s:%s" % (node["op"], attrs.get(
        "act_type")) in _NON_NEGATIVE


def _pool_fold(nodes, pool, pad, pairs, facts):
    """The attributes ``pool`` takes in for the zero ``pad`` (``pairs``) before it, or
    None where that is not exact: an average pooling counting the padding takes a
    symmetric pad as its own; a max pooling of non-negative values takes a symmetric pad
    as its own, and a pad after the data only as the ``full`` convention (windows past
    the end, padded with minus infinity), where that gives as many windows as the pad
    and the backend runs that convention in int8 (``full``)."""
    attrs = pool.get("attrs") or {}
    kernel, stride = attr_ints(attrs, "kernel"), attr_ints(attrs, "stride") or [1] * len(pairs)
    own = attr_ints(attrs, "pad") or [0] * len(pairs)
    kind = attrs.get("pool_type", "max")
    if str(attrs.get("global_pool", "False")).lower() in ("true", "1") \
            or attrs.get("layout", "None") not in ("None", "NCW", "NCHW", "NCDHW") \
            or attrs.get("pooling_convention", "valid") != "valid" \
            or len(kernel) != len(pairs) or kind not in ("max", "avg") \
            or (kind == "avg" and str(attrs.get("count_include_pad", "True")).lower()
                not in ("true", "1")) \
            or (kind == "max" and not _non_negative(nodes[pad["inputs"][0][0]])):
        return None
    if all(b == a for b, a in pairs):
        padded = [p + b for p, (b, _) in zip(own, pairs)]
        return {"pad": str(tuple(padded))} if all(
            p < k for p, k in zip(padded, kernel)) else None
    data = facts.shapes().get((nodes[pad["inputs"][0][0]]["name"], pad["inputs"][0][1]))
    if kind != "max" or not facts.full or any(own) or any(b for b, _ in pairs) or not data \
            or len(data) != len(pairs) + 2:
        return None
    for size, k, s, (_, after) in zip(data[2:], kernel, stride, pairs):
        if size < k or -(-(size - k) // s) != (size + after - k) // s:
            return None
    return {"pooling_convention": "full"}


def _product(values):
    out = 1
    for value in values:
        out *= value
    return out


def _fold(graph, context, reader, pad, pairs, facts):
    """Fold the zero ``pad`` (``pairs``) into the convolution or pooling
    ``graph["nodes"][reader]`` (a convolution's weight is one of ``facts.params``)."""
    nodes = graph["nodes"]
    conv = nodes[reader]
    if conv["op"] == "Pooling":
        conv["attrs"] = dict(conv.get("attrs") or {},
                             **_pool_fold(nodes, conv, pad, pairs, facts))
        return
    attrs = conv.setdefault("attrs", {})
    own = attr_ints(attrs, "pad") or [0] * len(pairs)
    sides = [(b + p, a + p) for (b, a), p in zip(pairs, own)]
    attrs["pad"] = str(tuple(max(side) for side in sides))
    if all(b == a for b, a in sides):
        return
    # Zero taps on the side padded less, as many as it was padded less.
    taps = [(a - b if a > b else 0, b - a if b > a else 0) for b, a in sides]
    kernel = attr_ints(attrs, "kernel")
    attrs["kernel"] = str(tuple(k + sum(t) for k, t in zip(kernel, taps)))
    _zero_taps(graph, context, conv, _weight_name(nodes, conv, facts.params), taps,
               "its input's asymmetric zero pad %s folded in" % (tuple(pairs),))


def _zero_taps(graph, context, conv, weight, taps, what):
    """Give ``conv`` (its ``kernel`` attribute already grown) the weight ``weight`` with
    ``taps`` (``(before, after)`` per spatial axis) zero taps added, a new parameter."""
    nodes, attrs = graph["nodes"], conv["attrs"]
    target = conv["name"] + "_same_pad_weight"
    while target in context.param_shapes or any(r.target == target
                                                for r in context.param_rewrites):
        target += "_"       # (a pad folded before, then a crop: a second padding)
    width = (0, 0, 0, 0) + tuple(w for pair in taps for w in pair)
    source = mx.sym.var(weight)
    if len(taps) == 1:      # (a 1-D weight: MXNet pads 4-D and 5-D arrays only)
        source = mx.sym.expand_dims(source, axis=2)
        width = width + (0, 0)
        width = width[:4] + (0, 0) + width[4:6]
    padded = mx.sym.pad(source, mode="constant", pad_width=width)
    if len(taps) == 1:
        padded = mx.sym.reshape(padded, shape=(0, 0, -3))
    context.param_rewrites.append(ParamRewrite(target=target, kind="evaluate",
                                               sources=(weight,), graph=padded.tojson()))
    nodes.append({"op": "null", "name": target, "inputs": []})
    graph["arg_nodes"].append(len(nodes) - 1)
    conv["inputs"][1] = [len(nodes) - 1, 0, 0]
    text = "%s: padded %s on both sides, kernel %s with zero taps (exact)" % (
        what, attrs["pad"], attrs["kernel"])
    before = context.rewritten.get(conv["name"])
    context.rewritten[conv["name"]] = "%s; %s" % (before, text) if before else text


def pads_into_convolutions(graph, context=None):
    """Fold a zero ``Pad`` read only by convolutions into their own padding.

    Nets ported from TensorFlow pad explicitly before a convolution without padding
    (GluonCV's Xception and DeepLab: ``F.pad(x, pad_width=(0, 0, 0, 0, 1, 1, 1, 1))`` then
    a 3x3 convolution; "same" padding of a stride-2 convolution, ``(0, 1, 0, 1)``, before
    EfficientNet-Lite's depthwise ones). ``Pad`` has no int8 kernel, so each one cost a
    dequantize and a quantize between int8 layers (63 in Xception-65). Symmetric pads are
    folded into any convolution; asymmetric ones (see the module doc) into those without
    dilation whose weights are parameters and whose larger kernel adds few multiply-adds
    (:data:`MAX_ADDED_MACS`; ``context`` names the parameters and receives the padded
    weights; without it they stay). A pooling takes a zero pad in where exact
    (:func:`_pool_fold`): an average one counting padding a symmetric pad; a max pooling
    of non-negative values (after a ReLU: Keras ResNet's ``ZeroPadding2D`` before its max
    pooling) a symmetric pad, or one after the data as the ``full`` convention (needs
    ``context.infer_shapes``). Other modes stay. A crop of a convolution's output (its
    only reader, a ``slice`` of spatial axes) becomes its padding where it can
    (:func:`_crops_into_convolutions`; needs ``context.infer_shapes``).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    params = set() if context is None else (
        set(context.param_shapes) | {r.target for r in context.param_rewrites})
    readers = collections.defaultdict(list)
    for index, node in enumerate(nodes):
        for entry in node["inputs"]:
            readers[entry[0]].append((index, entry))
    heads = {h[0] for h in graph["heads"]}
    inferred = []

    def shapes():       # the graph's shapes, inferred once and only where needed
        if not inferred:
            infer = getattr(context, "infer_shapes", None)
            inferred.append((infer(graph) if infer else None) or {})
        return inferred[0]

    if any(nodes[r]["op"] == "Pooling" and _zero_pad_pairs(nodes[i]) is not None
           for i, users in readers.items() for r, _ in users):
        shapes()        # before any fold changes the graph
    support = context.spec.ops.get("Pooling") if context is not None else None
    conventions = dict(support.modes).get("pooling_convention") if support else None
    facts = _Facts(params, shapes, conventions is None or "full" in conventions)
    changed = False
    for index in range(len(nodes)):
        node = nodes[index]
        pairs = _zero_pad_pairs(node)
        users = readers.get(index, [])
        if pairs is None or index in heads or not users or not all(
                _foldable(nodes, r, entry, index, pairs, facts)
                for r, entry in users):
            continue
        for reader, _ in users:
            _fold(graph, context, reader, node, pairs, facts)
            nodes[reader]["inputs"][0] = list(node["inputs"][0])
        changed = True
    if changed:
        prune(graph)
    if context is not None and context.infer_shapes is not None:
        _crops_into_convolutions(graph, context)
    return {}


_CROPS = frozenset(("slice_axis", "slice", "_npi_slice"))


def _bounds(text, rank, fill):
    """A ``slice``'s ``begin``/``end``/``step`` attribute as ``rank`` values (None -> fill)."""
    values = [v.strip() for v in str(text).strip("()[] ").split(",") if v.strip()]
    out = [fill if v == "None" else int(v) for v in values]
    return out + [fill] * (rank - len(out))


def _crop_pairs(node, data, out):
    """``[(removed before, removed after), ...]`` per spatial axis of a unit-step slice of
    an ``(N, C, ...)`` map (shape ``data``, sliced to ``out``) that keeps the batch and
    the channels, else None."""
    attrs, rank = node.get("attrs") or {}, len(data)
    if node["op"] == "slice_axis":
        begins = [0] * rank
        begins[int(attrs.get("axis", 0)) % rank] = _bounds(attrs.get("begin", "0"), 1, 0)[0]
    elif any(step != 1 for step in _bounds(attrs.get("step", "()"), rank, 1)):
        return None
    else:
        begins = _bounds(attrs.get("begin", "()"), rank, 0)
    begins = [b + size if b < 0 else b for b, size in zip(begins, data)]
    if tuple(out[:2]) != tuple(data[:2]):
        return None
    pairs = [(b, size - b - kept) for b, size, kept in zip(begins[2:], data[2:], out[2:])]
    return pairs if all(v >= 0 for pair in pairs for v in pair) else None


def _crop_fold(conv, pairs, weight):
    """``(pad, taps)`` for ``conv`` to give only the outputs its crop ``pairs`` keeps: a
    padding of ``p - removed`` on each side, asymmetric ones as the larger side's and zero
    taps (whole taps of a dilated kernel) on the other; None where that is not possible
    or adds more than :data:`MAX_CROP_MACS` multiply-adds per input value."""
    attrs = conv.get("attrs") or {}
    rank = len(pairs)
    kernel = attr_ints(attrs, "kernel")
    if len(kernel) != rank or attrs.get("layout", "None") not in ("None", "NCW", "NCHW",
                                                                   "NCDHW"):
        return None
    stride = attr_ints(attrs, "stride") or [1] * rank
    dilate = attr_ints(attrs, "dilate") or [1] * rank
    own = attr_ints(attrs, "pad") or [0] * rank
    sides = [(p - b, p - a) for p, (b, a) in zip(own, pairs)]
    if any(min(side) < 0 for side in sides) or any(
            s != 1 for s, pair in zip(stride, pairs) if any(pair)):
        return None
    gaps = [abs(before - after) for before, after in sides]
    if any(gap % d for gap, d in zip(gaps, dilate)) or (any(gaps) and weight is None):
        return None
    taps = [(gap // d if after > before else 0, gap // d if before > after else 0)
            for gap, d, (before, after) in zip(gaps, dilate, sides)]
    grown = [k + sum(t) for k, t in zip(kernel, taps)]
    per_group = int(attrs.get("num_filter", 0)) // max(int(attrs.get("num_group", 1)), 1)
    if (_product(grown) - _product(kernel)) * per_group > MAX_CROP_MACS:
        return None
    return [max(side) for side in sides], taps


def _crops_into_convolutions(graph, context):
    """Fold a crop of a convolution's output (a ``slice`` of its spatial axes, its only
    reader) into its padding: a TCN's causal convolution, ``Conv1D(padding=(k - 1) * d)``
    then ``x[:, :, :-(k - 1) * d]`` (its "chomp"), becomes one padded ``(k - 1) * d`` on
    the left only, run as a symmetric padding with ``k - 1`` zero taps after its kernel.
    The slice had no int8 kernel: between int8 layers it cost a dequantize, MXNet's slice
    of oneDNN's blocked output and a quantize (a 5-block causal TCN, 128 channels, batch
    16 x 1000 steps, int8: 106 ms, against 33 ms for the same net without crops)."""
    nodes = graph["nodes"]
    crops = [i for i, n in enumerate(nodes) if n["op"] in _CROPS and len(n["inputs"]) == 1
             and nodes[n["inputs"][0][0]]["op"] == "Convolution"]
    if not crops:
        return
    shapes = context.infer_shapes(graph) or {}
    readers = collections.Counter(e[0] for n in nodes for e in n["inputs"])
    readers.update(h[0] for h in graph["heads"])
    params = set(context.param_shapes) | {r.target for r in context.param_rewrites}
    redirect = {}
    for index in crops:
        node, (source, out, _) = nodes[index], nodes[index]["inputs"][0]
        conv = nodes[source]
        data = shapes.get((conv["name"], out))
        pairs = readers[source] == 1 and out == 0 and data and shapes.get(
            (node["name"], 0)) and _crop_pairs(node, data, shapes[(node["name"], 0)])
        if not pairs or not any(v for pair in pairs for v in pair) \
                or {node["name"], conv["name"]} & set(context.excluded):
            continue
        weight = _weight_name(nodes, conv, params)
        fold = _crop_fold(conv, pairs, weight)
        if fold is None:
            continue
        pad, taps = fold
        conv["attrs"]["pad"] = str(tuple(pad))
        what = "the crop %s of its output (%s) folded in" % (tuple(pairs), node["name"])
        if any(v for pair in taps for v in pair):
            conv["attrs"]["kernel"] = str(tuple(
                k + sum(t) for k, t in zip(attr_ints(conv["attrs"], "kernel"), taps)))
            _zero_taps(graph, context, conv, weight, taps, what)
        else:
            before = context.rewritten.get(conv["name"])
            text = "%s: padded %s (exact)" % (what, conv["attrs"]["pad"])
            context.rewritten[conv["name"]] = "%s; %s" % (before, text) if before else text
        redirect[index] = source
    if not redirect:
        return
    for node in nodes:
        node["inputs"] = [[redirect[e[0]], 0, 0] if e[0] in redirect else e
                          for e in node["inputs"]]
    graph["heads"] = [[redirect[h[0]], 0, 0] if h[0] in redirect else h
                      for h in graph["heads"]]
    prune(graph)
