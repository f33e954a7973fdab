"""Parallel convolutions of one input, summed, merged into one convolution.

RepVGG, ACNet, Diverse Branch Blocks and MobileOne train each layer as several branches
over the same input, summed: a 3x3 convolution with its BatchNorm, a 1x1 convolution with
its BatchNorm (ACNet: 1x3 and 3x1), and a BatchNorm of the input itself (the identity
branch). A net saved in that form runs every branch: in int8 each branch is its own
convolution with its own quantized output, the sum an int8 addition of differently
scaled tensors, the identity's BatchNorm a separate node. A Gluon RepVGG-style net (two
blocks of 64 channels, batch 16 at 64 px): cosine to fp32 0.9974.

A convolution is linear in its weight: ``conv(x, W1) + conv(x, W2) = conv(x, W1 + W2)``
where both kernels are centered on the same pixel (odd kernels padded ``k // 2``, one
stride), a BatchNorm after a convolution scales its filters and shifts its bias, and the
identity is a convolution with a one-hot kernel. :func:`parallel_convolutions` rewrites a
sum (a tree of two-input additions, each read only by the next) whose terms are such
branches of one input, at least one a convolution, as one ``Convolution`` with the
largest kernel, its weight and bias computed from the branches' parameters once
(:class:`~gluon_quant.graph.rewrites.ParamRewrite`, ``kind='evaluate'``): the summed
products are the same, added in another order (fp32 differences of a few ulps). What
reads the sum (RepVGG's ReLU) fuses with the merged convolution as it would with any.
Taken for 2-D convolutions of one stride, group count and filter count, without
dilation, whose parameters are the net's and whose nodes the user does not exclude.
"""
import collections
import logging

import mxnet as mx
import numpy as np

from .builder import NodeBuilder
from .rewrites import ParamRewrite, attr_ints, consumers, prune, shaped_nodes

__all__ = ["parallel_convolutions"]

_log = logging.getLogger(__name__)

_SUMS = frozenset(("elemwise_add", "_plus", "_Plus", "broadcast_add", "broadcast_plus",
                   "_npi_add"))

#: One term of the sum: its convolution (or None: the identity), its BatchNorm (or None),
#: the input entry it reads.
_Branch = collections.namedtuple("_Branch", "conv bn data")


class _Graph:
    """The graph's nodes, readers, heads, parameters and shapes, read once."""

    def __init__(self, graph, context, shapes):
        self.nodes, self.shapes, self.context = graph["nodes"], shapes, context
        self.readers = consumers(graph)
        self.heads = {(h[0], h[1]) for h in graph["heads"]}
        self.params = set(context.param_shapes)

    def only_reader(self, index, reader):
        return self.readers.get((index, 0)) == [reader] and (index, 0) not in self.heads \
            and not any(self.readers.get((index, out)) for out in (1, 2))

    def shape(self, entry):
        return self.shapes.get((self.nodes[entry[0]]["name"], entry[1]))

    def is_param(self, entry):
        node = self.nodes[entry[0]]
        return node["op"] == "null" and node["name"] in self.params

    def terms(self, index):
        """The leaf entries of the tree of sums rooted at ``index``, and its sum nodes."""
        leaves, members, stack = [], [index], [index]
        shape = self.shape([index, 0])
        while stack:
            current = stack.pop()
            for entry in self.nodes[current]["inputs"]:
                node = self.nodes[entry[0]]
                if node["op"] in _SUMS and len(node["inputs"]) == 2 and entry[1] == 0 \
                        and self.only_reader(entry[0], current) \
                        and self.shape(entry) == shape:
                    stack.append(entry[0])
                    members.append(entry[0])
                else:
                    leaves.append(list(entry))
        return leaves, members

    def branch(self, entry, parent):
        """The :class:`_Branch` an entry of the sum is, or None."""
        node = self.nodes[entry[0]]
        bn = None
        if node["op"] == "BatchNorm" and entry[1] == 0 and self.only_reader(entry[0], parent) \
                and int((node.get("attrs") or {}).get("axis", 1)) == 1 \
                and all(self.is_param(e) for e in node["inputs"][1:]):
            bn, entry = entry[0], node["inputs"][0]
            parent, node = bn, self.nodes[entry[0]]
        if node["op"] == "Convolution" and entry[1] == 0 and self.only_reader(entry[0], parent) \
                and all(self.is_param(e) for e in node["inputs"][1:]):
            return _Branch(entry[0], bn, list(node["inputs"][0]))
        return _Branch(None, bn, list(entry))


def _geometry(conv):
    """``(kernel, stride, groups, filters)`` of a centered 2-D convolution, else None."""
    attrs = conv.get("attrs") or {}
    kernel = attr_ints(attrs, "kernel")
    if len(kernel) != 2 or any(k % 2 == 0 for k in kernel) \
            or attrs.get("layout", "None") not in ("None", "NCHW") \
            or any(d != 1 for d in attr_ints(attrs, "dilate")) \
            or (attr_ints(attrs, "pad") or [0, 0]) != [k // 2 for k in kernel]:
        return None
    return (tuple(kernel), tuple(attr_ints(attrs, "stride") or [1, 1]),
            int(attrs.get("num_group", 1)), int(attrs.get("num_filter", 0)))


def _bn_scale(g, bn):
    """Symbols ``(scale, shift)`` of a BatchNorm in inference: ``y = x * scale + shift``."""
    node = g.nodes[bn]
    attrs = node.get("attrs") or {}
    gamma, beta, mean, var = (mx.sym.var(g.nodes[e[0]]["name"]) for e in node["inputs"][1:])
    if str(attrs.get("fix_gamma", "True")).lower() in ("true", "1"):
        gamma = mx.sym.ones_like(gamma)
    scale = gamma / mx.sym.sqrt(var + float(attrs.get("eps", 1e-3)))
    return scale, beta - mean * scale


def _sources(g, branch):
    """The parameters a branch reads (its convolution's and BatchNorm's)."""
    return [g.nodes[e[0]]["name"] for index in (branch.conv, branch.bn) if index is not None
            for e in g.nodes[index]["inputs"][1:]]


def _merge(g, branches, geometry, identity):
    """Symbols of the merged weight and bias (``identity``: the one-hot kernel's name)."""
    kernel = geometry[0]
    weights, biases = [], []
    for branch in branches:
        if branch.conv is None:
            weight, bias = mx.sym.var(identity), None
        else:
            conv = g.nodes[branch.conv]
            inputs = conv["inputs"]
            weight = mx.sym.var(g.nodes[inputs[1][0]]["name"])
            own = attr_ints(conv.get("attrs") or {}, "kernel")
            extra = [(k - o) // 2 for k, o in zip(kernel, own)]
            if any(extra):
                weight = mx.sym.pad(weight, mode="constant", pad_width=(
                    0, 0, 0, 0, extra[0], extra[0], extra[1], extra[1]))
            no_bias = str((conv.get("attrs") or {}).get("no_bias", "False")).lower() in (
                "true", "1")
            bias = None if no_bias or len(inputs) < 3 else mx.sym.var(
                g.nodes[inputs[2][0]]["name"])
        if branch.bn is not None:
            scale, shift = _bn_scale(g, branch.bn)
            weight = mx.sym.broadcast_mul(weight, mx.sym.reshape(scale, shape=(-1, 1, 1, 1)))
            bias = shift if bias is None else bias * scale + shift
        weights.append(weight)
        if bias is not None:
            biases.append(bias)
    merged_bias = mx.sym.add_n(*biases) if len(biases) > 1 else biases[0] if biases else \
        mx.sym.zeros_like(mx.sym.sum(weights[0], axis=(1, 2, 3)))
    return mx.sym.add_n(*weights) if len(weights) > 1 else weights[0], merged_bias


def parallel_convolutions(graph, context):
    """Merge sums of parallel convolution/BatchNorm/identity branches of one input into one
    convolution (see the module docstring).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    if not _maybe(graph["nodes"]):
        return {}       # (no shapes inferred for nets without such sums)
    candidates, shapes = shaped_nodes(graph, context, _SUMS, arity=2)
    if not candidates or not shapes:
        return {}
    g = _Graph(graph, context, shapes)
    position = {id(n): i for i, n in enumerate(g.nodes)}
    taken, done, build = set(), 0, NodeBuilder(graph)
    for node in reversed(candidates):       # (the root of a tree of sums first)
        root = position[id(node)]
        if root in taken:
            continue
        leaves, members = g.terms(root)
        branches = [g.branch(entry, _parent(g, members, entry)) for entry in leaves]
        convs = [b for b in branches if b.conv is not None]
        if len(branches) < 2 or not convs or len({tuple(b.data) for b in branches}) != 1:
            continue
        geometries = {_geometry(g.nodes[b.conv]) for b in convs}
        data_shape = g.shape(branches[0].data)
        if None in geometries or len({(s, gr, f) for _, s, gr, f in geometries}) != 1 \
                or not data_shape or len(data_shape) != 4:
            continue
        _, stride, groups, filters = next(iter(geometries))
        kernel = tuple(max(k[i] for k, _, _, _ in geometries) for i in range(2))
        identities = [b for b in branches if b.conv is None]
        if identities and (filters != data_shape[1] or stride != (1, 1)):
            continue
        names = {g.nodes[i]["name"] for i in members} | {
            g.nodes[i]["name"] for b in branches for i in (b.conv, b.bn) if i is not None}
        if names & set(context.excluded):
            continue
        target = g.nodes[root]["name"]
        identity = "%s_identity_weight" % target
        if identities:
            per_group = data_shape[1] // groups
            one = np.zeros((filters, per_group) + kernel, dtype="float32")
            one[np.arange(filters), np.arange(filters) % per_group,
                kernel[0] // 2, kernel[1] // 2] = 1.0
            context.param_rewrites.append(ParamRewrite(
                target=identity, kind="constant", sources=(), shape=one.shape,
                values=tuple(one.ravel().tolist())))
        weight, bias = _merge(g, branches, (kernel, stride, groups, filters), identity)
        sources = tuple(sorted({s for b in branches for s in _sources(g, b)} |
                               ({identity} if identities else set())))
        for part, expression in (("weight", weight), ("bias", bias)):
            context.param_rewrites.append(ParamRewrite(
                target="%s_merged_%s" % (target, part), kind="evaluate", sources=sources,
                graph=expression.tojson()))
        inputs = [branches[0].data] + [build.add("null", "%s_merged_%s" % (target, part), [])
                                       for part in ("weight", "bias")]
        g.nodes[root].update(op="Convolution", inputs=inputs, attrs={
            "kernel": str(kernel), "stride": str(stride), "dilate": "(1, 1)",
            "pad": str(tuple(k // 2 for k in kernel)), "num_filter": str(filters),
            "num_group": str(groups), "no_bias": "False"})
        taken.update(members)
        done += 1
        context.rewritten[target] = (
            "the sum of %d parallel branches of one input (%s) merged into one %dx%d "
            "convolution (exact: RepVGG's re-parameterization)" % (
                len(branches), ", ".join(_describe(g, b) for b in branches), *kernel))
    if not done:
        return {}
    build.append()
    prune(graph)
    _log.debug("Merged %d sum(s) of parallel convolutions.", done)
    return {}


def _maybe(nodes):
    """Whether a two-input sum adds two terms of one input (each the input, a
    convolution of it, or a BatchNorm of either): the cheap test before shapes."""
    def source(entry):
        node = nodes[entry[0]]
        if node["op"] == "BatchNorm" and entry[1] == 0:
            entry = node["inputs"][0]
            node = nodes[entry[0]]
        return tuple(node["inputs"][0][:2]) if node["op"] == "Convolution" else tuple(
            entry[:2])
    return any(n["op"] in _SUMS and len(n["inputs"]) == 2
               and source(n["inputs"][0]) == source(n["inputs"][1]) for n in nodes)


def _parent(g, members, entry):
    """The sum node of ``members`` that reads ``entry``."""
    return next(m for m in members if list(entry) in [list(e) for e in g.nodes[m]["inputs"]])


def _describe(g, branch):
    if branch.conv is None:
        return "BatchNorm of the input" if branch.bn is not None else "the input"
    kernel = "x".join(str(k) for k in attr_ints(g.nodes[branch.conv]["attrs"], "kernel"))
    return "%s convolution%s" % (kernel, "+BatchNorm" if branch.bn is not None else "")
