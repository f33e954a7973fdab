"""Pixel shuffles (depth-to-space) and their inverse run as one-hot grouped (de)convolutions.

Super-resolution nets, GluonCV's DUC segmentation heads and AlphaPose's upsampling move
channels into pixels with a pixel shuffle: Gluon's ``contrib.nn.PixelShuffle1D/2D/3D``
(``Reshape -> Reshape -> transpose -> Reshape``), a hand-written chain of reshapes and
transposes, or MXNet's ``depth_to_space``; detectors and some stems do the inverse
(``space_to_depth``, YOLOv2's reorg). None has an int8 kernel, and in fp32 they are slow:
MXNet's transpose of a 6-D array and its ``depth_to_space`` are single-threaded copies
between a dequantize and a quantize.

A depth-to-space with factors ``f`` over ``C`` output channels (``P = prod(f)``) whose
input channel ``c * P + phase`` lands on pixel ``phase`` of each ``f``-sized block of
channel ``c`` (Gluon's order, "CRD") is a ``Deconvolution`` with one group per output
channel, kernel = stride = ``f`` and one-hot weights: what
:mod:`~gluon_quant.graph.deconv`'s shuffle is, oneDNN's kernel (a DUC head at batch 8:
int8 117 -> 71 ms). It runs in fp32 on the dequantized values. Its inverse,
space-to-depth, is a ``Convolution`` of the same weights (kernel = stride = ``f``, one
group per input channel, ``P`` filters each), which runs in int8 with the layers around
it: the weights are exact and each output is an input value requantized. MXNet's own
``depth_to_space`` and ``space_to_depth`` order the phases first ("DCR": channel ``phase
* C + c``); that order is a fixed permutation of the channels, added as a one-hot 1x1
``Convolution`` (int8) before the shuffle or after its inverse. Measured at batch 8 on
96x96 maps (64 to 256 channels), int8 net: Gluon's ``PixelShuffle2D`` 276-322 -> 170-193
ms, ``depth_to_space`` 318 -> 165 ms, ``space_to_depth`` 79-94 -> 47-49 ms. Where the
shuffled values are never negative (after a ReLU), each new convolution gets a ReLU
(exact), so that its int8 output is uint8 and keeps the 8th bit. A space-to-depth
written as reshapes and a transpose in the channel-major order is left: oneDNN's
transpose of it was faster than the grouped convolution (38 against 44 ms).

:func:`pixel_shuffles` recognizes a chain by what it does, not by how it is written: each
maximal chain (or the longest stretch of one) of reshapes, transposes, axis swaps, ``depth_to_space`` and
``space_to_depth`` nodes, legacy or NumPy mode (every intermediate tensor read by the
next node only, none excluded by the user), whose input and output are 3-D to 5-D maps
(channels on axis 1) of the sizes of a pixel shuffle or its inverse is run once on the
numbers ``0, 1, 2, ...`` and rewritten when its output is exactly one of the four
orders. The factors must hold at every input size the net takes (the graph's shapes are
inferred again with each input axis in turn doubled), and the channels (axis 1) must keep
their counts, so that a chain matching at one size only, or moving an axis that takes
the input's size, is left.
"""
import logging

import mxnet as mx
import numpy as np

from .. import _mxnet
from .builder import NodeBuilder
from .deconv import SHUFFLE_ATTR, shuffle_weight
from .shuffles import never_negative
from .permutes import varied_shapes
from .rewrites import (ParamRewrite, consumers, known_shape, parameter_entries, private_attrs,
                       prune)

__all__ = ["pixel_shuffles", "shuffled_order"]

_log = logging.getLogger(__name__)

#: Operators that only move data, and so may make up a pixel shuffle.
_MOVES = frozenset(("Reshape", "reshape", "_np_reshape", "_npx_reshape", "_npi_reshape",
                    "transpose", "_np_transpose", "_npi_transpose", "SwapAxis", "swapaxes",
                    "_npi_swapaxes", "_np_moveaxis", "depth_to_space", "space_to_depth"))
#: Of those, the ones that reorder values (a chain of reshapes alone moves nothing).
_PERMUTING = frozenset(("transpose", "_np_transpose", "_npi_transpose", "SwapAxis",
                        "swapaxes", "_npi_swapaxes", "_np_moveaxis", "depth_to_space",
                        "space_to_depth"))
_LAYOUTS = {3: "NCW", 4: "NCHW", 5: "NCDHW"}
#: The most elements the check runs a chain on (float32 counts exactly to 2 ** 24).
_MAX_CHECKED = 1 << 24


def shuffled_order(shape, factors, to_depth, phases_first):
    """The flat input index each output element of a pixel shuffle reads.

    Parameters
    ----------
    shape : tuple of int
        The input's shape ``(N, C, S1, ...)``.
    factors : tuple of int
        The block size per spatial axis.
    to_depth : bool
        True for space-to-depth (pixels into channels), False for depth-to-space.
    phases_first : bool
        Channel ``phase * C + c`` (MXNet's and TensorFlow's order, "DCR") instead of ``c *
        P + phase`` (Gluon's ``PixelShuffle``, "CRD").

    Returns
    -------
    numpy.ndarray of int
        Of the output's shape.
    """
    n, k = shape[0], len(factors)
    index = np.arange(int(np.prod(shape))).reshape(shape)
    if to_depth:
        spatial = [s // f for s, f in zip(shape[2:], factors)]
        blocks = index.reshape((n, shape[1]) + sum(((s, f) for s, f in zip(
            spatial, factors)), ()))
        order = [3 + 2 * i for i in range(k)] + [2 + 2 * i for i in range(k)]
        order = ([0] + order[:k] + [1] + order[k:]) if phases_first else ([0, 1] + order)
        return blocks.transpose(order).reshape((n, -1) + tuple(spatial))
    channels = shape[1] // int(np.prod(factors))
    split = ((n,) + tuple(factors) + (channels,)) if phases_first else \
        ((n, channels) + tuple(factors))
    blocks = index.reshape(split + tuple(shape[2:]))
    first = 1 if phases_first else 2            # axis of the first factor
    c_axis = 1 + k if phases_first else 1
    order = [0, c_axis] + sum(([2 + k + i, first + i] for i in range(k)), [])
    return blocks.transpose(order).reshape(
        (n, channels) + tuple(s * f for s, f in zip(shape[2:], factors)))


def _factors(data, out):
    """``(to_depth, factors)`` where shapes ``data -> out`` are those of a pixel shuffle
    or its inverse, else None."""
    if not data or not out or len(data) != len(out) or not 3 <= len(data) <= 5 \
            or data[0] != out[0]:
        return None
    to_depth = out[1] > data[1]
    small, big = (out, data) if to_depth else (data, out)
    if any(b % s for s, b in zip(small[2:], big[2:])) or min(small[2:]) < 1:
        return None
    factors = tuple(b // s for s, b in zip(small[2:], big[2:]))
    phases = int(np.prod(factors))
    if phases < 2 or big[1] * phases != small[1]:
        return None
    return to_depth, factors


def _chains(nodes, readers, heads, excluded):
    """Maximal chains (lists of node indices) of data-moving nodes, each intermediate
    tensor read by the next node only."""
    found, taken = [], set()
    for index in range(len(nodes) - 1, -1, -1):
        if index in taken or nodes[index]["op"] not in _MOVES:
            continue
        chain = [index]
        while True:
            entry = nodes[chain[-1]]["inputs"][0]
            node = nodes[entry[0]]
            if node["op"] not in _MOVES or entry[1] != 0 or len(node["inputs"]) != 1 \
                    or readers.get((entry[0], 0)) != [chain[-1]] or (entry[0], 0) in heads:
                break
            chain.append(entry[0])
        chain.reverse()
        taken.update(chain)
        if not any(nodes[i]["name"] in excluded for i in chain) \
                and all(len(nodes[i]["inputs"]) == 1 for i in chain):
            found.append(chain)
    return found


def _order(nodes, chain, data_shape, infer):
    """The flat input index each output element of ``chain`` reads, run on
    ``data_shape`` (a batch of 1 where the chain takes it), or None."""
    first = nodes[chain[0]]
    graph = {"nodes": [{"op": "null", "name": "data", "inputs": []}], "arg_nodes": [0]}
    for position, index in enumerate(chain):
        node = dict(nodes[index], inputs=[[position, 0, 0]])
        graph["nodes"].append(node)
    graph["heads"] = [[len(chain), 0, 0]]
    graph["node_row_ptr"] = list(range(len(chain) + 2))
    small = (1,) + tuple(data_shape[1:])
    shape = small if infer(graph, {"data": small}) else tuple(data_shape)
    if int(np.prod(shape)) > _MAX_CHECKED:
        _log.debug("Not checking the data movement of %s: %s is too large.",
                   first["name"], shape)
        return None, shape
    values = np.arange(int(np.prod(shape)), dtype="float32").reshape(shape)
    try:
        out = _mxnet.evaluate_graph(graph, {"data": mx.nd.array(values)}).asnumpy()
    except _mxnet.MXNetError as err:
        _log.debug("Could not run %s's chain: %s", first["name"], err)
        return None, shape
    return out.astype(np.int64), shape


def _match(order, shape, to_depth, factors):
    """Whether the order is CRD (False), DCR (True) or neither (None)."""
    for phases_first in (False, True):
        expected = shuffled_order(shape, factors, to_depth, phases_first)
        if expected.shape == order.shape and np.array_equal(expected, order):
            return phases_first
    return None


def _permutation(channels, phases, to_depth):
    """One-hot rows moving ``channels * phases`` channels between the phase-major (DCR) and
    channel-major (CRD) orders: for depth-to-space (``to_depth`` False: before the
    shuffle) CRD channel ``c * P + p`` reads DCR channel ``p * C + c``; for space-to-depth
    (after its inverse) DCR channel ``p * C + c`` reads CRD channel ``c * P + p``."""
    total = channels * phases
    out = np.arange(total)
    if to_depth:
        source = (out % channels) * phases + out // channels
    else:
        source = (out % phases) * channels + out // phases
    rows = np.zeros((total, total), dtype="float32")
    rows[out, source] = 1.0
    return rows


def pixel_shuffles(graph, context):
    """Rewrite pixel shuffles and their inverse as one-hot grouped (de)convolutions (see
    the module docstring).

    Returns
    -------
    dict
        Empty: the shuffles' fp32 ``Deconvolution`` nodes get their reason from the
        backend's spec (``depth-to-space shuffle``).
    """
    nodes = graph["nodes"]
    if not any(n["op"] in _PERMUTING for n in nodes) or context.infer_shapes is None \
            or not getattr(context.infer_shapes, "input_shapes", None):
        return {}
    shapes = context.infer_shapes(graph) or {}
    readers = consumers(graph)
    heads = {(h[0], h[1]) for h in graph["heads"]}
    constant = parameter_entries(graph, set(context.param_shapes))
    key = lambda entry: (nodes[entry[0]]["name"], entry[1])     # noqa: E731
    found = {}      # (first, last) of a chain's stretch -> what it would be
    for whole in _chains(nodes, readers, heads, set(context.excluded)):
        # the whole chain, or a stretch of it (a shuffle with a reshape before or after)
        for length in range(len(whole), 1 if len(whole) > 1 else 0, -1):
            for begin in range(len(whole) - length + 1):
                chain = whole[begin:begin + length]
                data = nodes[chain[0]]["inputs"][0]
                data_shape = shapes.get(key(data))
                out_shape = shapes.get(key([chain[-1], 0]))
                kind = _factors(data_shape, out_shape)
                if kind is not None and not constant[data[0]] \
                        and any(nodes[i]["op"] in _PERMUTING for i in chain):
                    found[(chain[0], chain[-1])] = (chain, data, data_shape, out_shape, kind)
    # The weights are of the channels' counts: a chain over an axis that takes the input's
    # size (the time steps of (N, T, C) data) is left.
    for varied in varied_shapes(graph, context.infer_shapes,
                                {k: v for k, v in context.param_shapes.items()
                                 if known_shape(v)}) if found else ():
        for stretch, (chain, data, data_shape, out_shape, kind) in list(found.items()):
            shape, out = varied.get(key(data)), varied.get(key([chain[-1], 0]))
            if _factors(shape, out) != kind or shape[1] != data_shape[1] \
                    or out[1] != out_shape[1]:
                del found[stretch]
    build, done, used = NodeBuilder(graph), 0, set()
    unsigned = never_negative(nodes)
    for (chain, data, data_shape, out_shape, (to_depth, factors)) in sorted(
            found.values(), key=lambda f: -len(f[0])):      # (the longest stretch first)
        if used & set(chain):
            continue
        order, shape = _order(nodes, chain, data_shape, context.infer_shapes)
        phases_first = None if order is None else _match(order, shape, to_depth, factors)
        if phases_first is None or (to_depth and not phases_first):
            continue        # (a channel-major space-to-depth: its transposes were faster)
        last = chain[-1]
        used.update(chain)
        done += 1
        what = "a %s (%s, factors %s, %s order)" % (
            "space-to-depth" if to_depth else "depth-to-space",
            ", ".join(nodes[i]["name"] for i in chain), factors,
            "phase-major" if phases_first else "channel-major")
        _Shuffle(nodes[last], data, (data_shape[1] if to_depth else out_shape[1], factors),
                 data[0] in unsigned, build, context).rewrite(to_depth, phases_first, what)
    if not done:
        return {}
    build.append()
    prune(graph)
    _log.debug("Ran %d pixel shuffle(s) as grouped (de)convolutions.", done)
    return {}


class _Shuffle:
    """The nodes that replace one pixel shuffle whose last node is ``node``: a grouped
    one-hot (de)convolution over ``groups`` channel groups of ``factors``, and for the
    phase-major order a one-hot 1x1 convolution reordering the channels. Where ``data`` is
    never negative, each new convolution is followed by a ReLU (exact), so that oneDNN's
    int8 output is uint8."""

    def __init__(self, node, data, shape, unsigned, build, context):
        self.node, self.data, self.unsigned = node, list(data), unsigned
        self.groups, self.factors = shape
        self.phases = int(np.prod(self.factors))
        self.rank = len(self.factors) + 2
        self.build, self.context = build, context

    def _weight(self, name, values, shape):
        self.context.param_rewrites.append(ParamRewrite(
            target=name, kind="constant", sources=(), shape=shape, values=values))
        return self.build.add("null", name, [])

    def _grouped_weight(self):
        return self._weight("%s_shuffle_weight" % self.node["name"],
                            shuffle_weight(self.factors, self.groups),
                            (self.groups * self.phases, 1) + self.factors)

    def _conv(self, name, source, weight, into=None, **attrs):
        """A Convolution node (and its ReLU where the data are never negative), new or,
        ``into`` given, ending in that node (which its readers read). Returns the entry of
        its output and the convolution's name."""
        attrs = {k: str(v) for k, v in dict(attrs, no_bias=True,
                                            layout=_LAYOUTS[self.rank]).items()}
        if into is not None and not self.unsigned:
            into.update(op="Convolution", inputs=[source, weight],
                        attrs=dict(private_attrs(into), **attrs))
            return None, into["name"]
        out = self.build.add("Convolution", name, [source, weight], **attrs)
        if not self.unsigned:
            return out, name
        if into is not None:
            into.update(op="Activation", inputs=[out], attrs=dict(private_attrs(into),
                                                                  act_type="relu"))
            return None, name
        return self.build.add("Activation", name + "_relu", [out], act_type="relu"), name

    def _reorder(self, source, to_depth, into=None):
        """A one-hot 1x1 convolution moving ``source``'s channels between the orders."""
        rows = _permutation(self.groups, self.phases, to_depth)
        name = self.node["name"] + "_reorder"
        weight = self._weight(name + "_weight", tuple(rows.ravel().tolist()),
                              rows.shape + (1,) * (self.rank - 2))
        out, name = self._conv(name, source, weight, into, kernel=(1,) * (self.rank - 2),
                               num_filter=rows.shape[0])
        self.context.rewritten[name] = (
            "reorders the channels of a phase-major %s as a one-hot 1x1 Convolution, int8 "
            "where the layers around it are" % ("space-to-depth" if to_depth
                                                else "depth-to-space"))
        return out

    def rewrite(self, to_depth, phases_first, what):
        """Edit the graph; ``what`` describes the shuffle for ``report()``."""
        node, factors, zeros = self.node, self.factors, (0,) * len(self.factors)
        attrs = dict(kernel=factors, stride=factors, pad=zeros, num_group=self.groups)
        if to_depth:        # (phase-major: grouped convolution, then the reordering)
            blocks, _ = self._conv(node["name"] + "_blocks", self.data,
                                   self._grouped_weight(),
                                   num_filter=self.groups * self.phases, **attrs)
            self._reorder(blocks, True, into=node)
            self.context.rewritten[node["name"] + "_blocks"] = (
                "%s as a one-hot grouped Convolution (int8 where the layers around it "
                "are) and a channel reordering" % what)
            return
        source = self._reorder(self.data, False) if phases_first else self.data
        attrs.update(num_filter=self.groups, adj=zeros, dilate=(1,) * len(factors),
                     no_bias=True, layout=_LAYOUTS[self.rank], **{SHUFFLE_ATTR: True})
        node.update(op="Deconvolution", inputs=[source, self._grouped_weight()],
                    attrs=dict(private_attrs(node), **{k: str(v) for k, v in attrs.items()}))
        self.context.rewritten[node["name"]] = (
            "%s as a one-hot grouped Deconvolution (oneDNN's kernel)%s" % (
                what, " after a channel reordering" if phases_first else ""))
