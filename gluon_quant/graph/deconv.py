"""Transposed convolutions run as convolutions, so that they can run in int8.

MXNet 1.9.1 has no int8 ``Deconvolution`` kernel: simple_pose's three 4x4 stride-2
deconvolutions (about half its work) stayed fp32, and the net ran only 1.78x faster in
int8 than in fp32. A transposed convolution of stride ``s`` is ``prod(s)`` ordinary
convolutions, one per output phase ``(oy % sy, ox % sx)``, each reading the input with
the taps of the kernel that land on that phase. :func:`deconv_as_conv` rewrites

``Deconvolution(x, W, b) [-> BatchNorm] [-> element-wise activations]``

into

``Convolution(x, W', b') [-> BatchNorm'] [-> activations] -> shuffle [-> slice]``

where ``W'`` has ``C_out * sy * sx`` filters of ``ceil(k / s)`` taps a side (filter
``co * sy * sx + ry * sx + rx`` holds the taps ``W[:, co, ry + sy * t, rx + sx * t']``,
``t`` reversed), the bias and the BatchNorm's parameters are repeated per phase, and the
shuffle is a ``Deconvolution`` with one group per output channel, kernel = stride = ``s``
and one-hot weights: it moves each phase's channel to its pixel (what ``depth_to_space``
does, 3.4x faster: MXNet's ``depth_to_space`` took 83 ms on simple_pose's last
(8, 1024, 33, 25) output, 35 times a copy) and crops with its ``pad`` and ``adj`` what the
transposed convolution's padding removes; a ``slice`` crops only what they cannot.
BatchNorm and element-wise activations move before the shuffle, which only moves data, so
that oneDNN fuses them into the int8 convolution. The rewrite is exact in fp32 (the same
products, summed in another order: largest difference ~6e-6 on values up to ~20).

The convolution computes ``prod(ceil(k/s) * s)`` taps per input pixel where the
transposed convolution computes ``prod(k)`` (no more when ``s`` divides ``k``), over
``H + 2P - T + 1`` rows instead of ``H`` (``P`` its padding, ``T`` its kernel): one row
and column more for simple_pose's ``k=4, s=2, p=1`` (31% more at 8x6, 7% at 32x24).

Which deconvolutions are rewritten is the backend's data (:attr:`gluon_quant.backends.
OpSupport.rewrite` on its ``Deconvolution`` entry and that entry's conditions, among them
the measured ``min_intensity``); the rewritten nodes are listed in ``context.rewritten``
for ``report()``.
"""
import json
import logging
import math

import mxnet as mx
import numpy as np

from .. import _mxnet
from ..backends import why_not_int8
from .rewrites import ParamRewrite, append_nodes, known_shape, reachable

__all__ = ["deconv_as_conv", "conv_geometry", "why_not_rewritten", "intensity_of",
           "REWRITE_NAME", "SHUFFLE_ATTR", "shuffle_weight"]

_log = logging.getLogger(__name__)

#: The pass name a backend's ``OpSupport.rewrite`` names to ask for this rewrite.
REWRITE_NAME = "deconv_as_conv"
#: Attribute marking the Deconvolution that only shuffles channels into pixels, and the
#: suffix of its name.
SHUFFLE_ATTR = "__depth_to_space__"
SHUFFLE_SUFFIX = "_depth_to_space"

_LAYOUTS = {1: "NCW", 2: "NCHW"}
#: Element-wise operators that move with the convolution before the shuffle.
_ELEMENTWISE = frozenset(("Activation", "relu", "sigmoid", "tanh", "clip", "softsign"))
_LEAKY_ELEMENTWISE = frozenset(("leaky", "elu", "selu", "gelu"))


def _ints(attrs, key, rank, fill):
    """An attribute's integers (``(fill,) * rank`` when it is not given)."""
    text = str(attrs.get(key, "") or "").strip("()[] ")
    values = tuple(int(v) for v in text.split(",") if v.strip() not in ("", "None"))
    return values or (fill,) * rank


def conv_geometry(kernel, stride, pad, adj):
    """The convolution that computes one dimension of a transposed convolution.

    Parameters
    ----------
    kernel, stride, pad, adj : int
        The transposed convolution's ``kernel``, ``stride``, ``pad`` and ``adj`` along one
        spatial dimension (no dilation).

    Returns
    -------
    (int, int, int, int)
        ``(taps, conv_pad, crop_begin, crop_end)``: the convolution's kernel size and
        padding, and how many elements to drop at the start and at the end of
        the phase-interleaved output along that dimension (independent of the input size).
    """
    taps = -(-kernel // stride)
    conv_pad = max(0, math.ceil((stride * (taps - 1) - pad) / stride),
                   math.ceil((kernel + adj - pad - stride) / stride))
    begin = pad - stride * (taps - 1) + stride * conv_pad
    end = stride * (conv_pad + 1) + pad - kernel - adj
    return taps, conv_pad, begin, end


def why_not_rewritten(node, nodes, support, param_shapes):
    """Why :func:`deconv_as_conv` does not rewrite a Deconvolution node, or None.

    Parameters
    ----------
    node : dict
        The node (JSON graph).
    nodes : list of dict
        The graph's nodes (its inputs are looked up there).
    support : OpSupport
        The backend's ``Deconvolution`` entry.
    param_shapes : mapping of str to tuple
        The net's parameters.

    Returns
    -------
    str or None
    """
    attrs = node.get("attrs") or {}
    reason = why_not_int8(support, attrs)
    if reason is not None:
        return reason
    kernel = _ints(attrs, "kernel", 2, 1)
    if len(kernel) not in (1, 2):
        return "%d-D Deconvolution (the rewrite handles 1-D and 2-D)" % len(kernel)
    stride = _ints(attrs, "stride", len(kernel), 1)
    adj = _ints(attrs, "adj", len(kernel), 0)
    if len(stride) != len(kernel) or len(adj) != len(kernel):
        return "stride %s or adj %s does not match kernel %s" % (stride, adj, kernel)
    if any(_ints(attrs, "target_shape", 1, 0)):
        return "target_shape is set (the rewrite needs pad and adj)"
    if any(a >= s for a, s in zip(adj, stride)):
        return "adj %s is not below the stride %s" % (adj, stride)
    params = [nodes[e[0]] for e in node["inputs"][1:]]
    if any(p["op"] != "null" or p["name"] not in param_shapes for p in params):
        return "its weight is computed in the graph, not a parameter"
    if support.min_intensity:
        shape = known_shape(param_shapes.get(params[0]["name"]))
        if shape is None:
            return "its weight's shape is not known (run the net once before quantizing)"
        intensity = intensity_of(shape, stride)
        if intensity < support.min_intensity:
            return ("%.0f multiply-adds per value moved through fp32 (C_in %d, C_out %d, "
                    "kernel %s, stride %s): below %d the int8 convolution was measured "
                    "slower than the fp32 Deconvolution" % (
                        intensity, shape[0], shape[1], kernel, stride,
                        support.min_intensity))
    return None


def intensity_of(weight_shape, stride):
    """Multiply-adds per value a Deconvolution rewritten as an int8 convolution moves
    through fp32: ``C_in * C_out * prod(kernel) / (C_in + prod(stride) * C_out)`` (per
    input pixel: the input quantized, the convolution's output dequantized).

    Parameters
    ----------
    weight_shape : tuple of int
        The Deconvolution's weight, ``(C_in, C_out, *kernel)`` (one group).
    stride : tuple of int

    Returns
    -------
    float
    """
    cin, cout = weight_shape[:2]
    return cin * cout * float(np.prod(weight_shape[2:])) / (cin + np.prod(stride) * cout)


def _weight_expression(name, kernel, stride, taps):
    """JSON graph computing the convolution's weight from the transposed one's: filter
    ``co * sy * sx + ry * sx + rx`` holds the taps ``W[:, co, ry + sy * t, rx + sx * t']``,
    ``t`` and ``t'`` reversed. A 1-D weight is handled as a 2-D one of height 1."""
    weight = mx.sym.var(name)
    one_d = len(kernel) == 1
    if one_d:
        weight = mx.sym.expand_dims(weight, axis=2)
        kernel, stride, taps = (1,) + kernel, (1,) + stride, (1,) + taps
    full = tuple(s * t for s, t in zip(stride, taps))
    if full != kernel:      # taps past the kernel are zeros
        weight = mx.sym.pad(weight, mode="constant", pad_width=(
            0, 0, 0, 0, 0, full[0] - kernel[0], 0, full[1] - kernel[1]))
    weight = mx.sym.reshape(weight, shape=(0, 0, taps[0], stride[0], taps[1], stride[1]))
    weight = mx.sym.reverse(weight, axis=(2, 4))
    weight = mx.sym.transpose(weight, axes=(1, 3, 5, 0, 2, 4))
    weight = mx.sym.reshape(weight, shape=(-3, -2))      # (C_out * sy * sx, C_in, Ty, Tx)
    weight = mx.sym.reshape(weight, shape=(-3, -2))
    if one_d:
        weight = mx.sym.reshape(weight, shape=(0, 0, -3))     # (C_out * s, C_in, T)
    return _mxnet.graph_json(weight)


def _repeat_expression(name, times):
    """JSON graph repeating each value of a per-channel parameter ``times`` times."""
    return _mxnet.graph_json(mx.sym.repeat(mx.sym.var(name), repeats=times, axis=0))


def shuffle_weight(stride, filters):
    """The values of the one-hot weight ``(filters * P, 1) + stride`` of the grouped
    Deconvolution (kernel = stride) that moves channel ``c * P + phase`` (``P =
    prod(stride)``, phases in row-major order) to its pixel of each stride-sized block of
    channel ``c``; as a grouped Convolution's weight, it does the inverse."""
    phases = int(np.prod(stride))
    one = np.eye(phases, dtype="float32").reshape((phases, 1) + tuple(stride))
    return tuple(np.tile(one, (filters,) + (1,) * (len(stride) + 1)).ravel().tolist())


def _shuffle_attrs(stride, filters, geometry):
    """Attributes of the shuffling Deconvolution, and the crop it leaves to a slice.

    Its ``pad`` crops ``pad`` elements at both ends and ``adj`` gives back up to
    ``stride - 1`` at the end: a crop of ``(begin, end)`` is ``pad=begin, adj=begin -
    end`` where ``0 <= begin - end < stride``; the rest is sliced.
    """
    pads, adjs, rest = [], [], []
    for step, (_, _, begin, end) in zip(stride, geometry):
        if 0 <= begin - end < step:
            pads.append(begin)
            adjs.append(begin - end)
            rest.append((0, 0))
        else:
            pads.append(min(begin, end))
            adjs.append(0)
            rest.append((begin - pads[-1], end - pads[-1]))
    attrs = {"kernel": str(tuple(stride)), "stride": str(tuple(stride)),
             "dilate": str((1,) * len(stride)), "pad": str(tuple(pads)),
             "adj": str(tuple(adjs)), "num_filter": str(filters),
             "num_group": str(filters), "no_bias": "True",
             "layout": _LAYOUTS[len(stride)], SHUFFLE_ATTR: "True"}
    return attrs, rest


def _readers(nodes):
    found = {}
    for index, node in enumerate(nodes):
        for entry in node["inputs"]:
            found.setdefault((entry[0], entry[1]), []).append(index)
    return found


def _moves_along(node):
    """Whether ``node`` computes element by element (it may run before the shuffle)."""
    if node["op"] == "LeakyReLU":
        return (node.get("attrs") or {}).get("act_type", "leaky") in _LEAKY_ELEMENTWISE
    return node["op"] in _ELEMENTWISE and len(node["inputs"]) == 1


def _chain(index, nodes, readers, heads):
    """The BatchNorm and element-wise nodes after the deconvolution that move with it."""
    chain, current = [], index
    while True:
        users = readers.get((current, 0), [])
        if len(users) != 1 or (current, 0) in heads:
            return chain
        nxt = nodes[users[0]]
        if nxt["op"] == "BatchNorm" and not chain and nxt["inputs"][0][:2] == [current, 0] \
                and int((nxt.get("attrs") or {}).get("axis", 1)) == 1 \
                and not any(readers.get((users[0], out)) for out in (1, 2)) \
                and all(nodes[e[0]]["op"] == "null" for e in nxt["inputs"][1:]):
            chain.append(users[0])
        elif _moves_along(nxt):
            chain.append(users[0])
        else:
            return chain
        current = users[0]


def deconv_as_conv(graph, context):
    """Rewrite 1-D and 2-D ``Deconvolution`` nodes as ``Convolution`` + a depth-to-space
    shuffle (+ a crop where the shuffle cannot crop).

    Applies where the backend's ``Deconvolution`` entry names this rewrite
    (:attr:`~gluon_quant.backends.OpSupport.rewrite`) and the node meets its conditions
    (NCW/NCHW, one group, no dilation, ``adj`` below the stride, no ``target_shape``, the
    measured ``min_intensity``). A 1-D convolution is lifted to 2-D for its int8 kernel
    afterwards (:func:`~gluon_quant.graph.rewrites.lift_1d_to_2d`). The convolution
    keeps the deconvolution's name; its weight and bias (and a BatchNorm's parameters
    after it) are new parameters computed from the net's (:class:`ParamRewrite`).

    Parameters
    ----------
    graph : dict
        The traced fp32 graph (edited in place).
    context : PassContext

    Returns
    -------
    dict
        Empty: deconvolutions that are not rewritten stay fp32 with the reason that
        :func:`~gluon_quant.graph.passes.backend_eligibility` gives them.
    """
    support = context.spec.ops.get("Deconvolution")
    if support is None or support.rewrite != REWRITE_NAME:
        return {}
    nodes = graph["nodes"]
    readers = _readers(nodes)
    heads = {(h[0], h[1]) for h in graph["heads"]}
    redirect, added, shufflers = {}, {}, set()

    def variable(name):
        if name not in added:
            nodes.append({"op": "null", "name": name, "inputs": []})
            added[name] = len(nodes) - 1
        return [added[name], 0, 0]

    for index in range(len(nodes)):
        node = nodes[index]
        if node["op"] != "Deconvolution" or node["name"] in context.excluded:
            continue
        reason = why_not_rewritten(node, nodes, support, context.param_shapes)
        if reason is not None:
            _log.debug("Deconvolution %s stays as it is: %s", node["name"], reason)
            continue
        attrs = node["attrs"]
        kernel = _ints(attrs, "kernel", 2, 1)
        rank = len(kernel)
        stride = _ints(attrs, "stride", rank, 1)
        geometry = [conv_geometry(k, s, p, a) for k, s, p, a in zip(
            kernel, stride, _ints(attrs, "pad", rank, 0), _ints(attrs, "adj", rank, 0))]
        taps = tuple(g[0] for g in geometry)
        filters = int(attrs["num_filter"])
        phases = int(np.prod(stride))
        weight_name = nodes[node["inputs"][1][0]]["name"]
        target = "%s_as_conv" % node["name"]
        context.param_rewrites.append(ParamRewrite(
            target=target + "_weight", kind="evaluate", sources=(weight_name,),
            graph=json.dumps(_weight_expression(weight_name, kernel, stride, taps))))
        inputs = [node["inputs"][0], variable(target + "_weight")]
        no_bias = str(attrs.get("no_bias", "False")).lower() in ("true", "1")
        if not no_bias and len(node["inputs"]) > 2:
            bias_name = nodes[node["inputs"][2][0]]["name"]
            context.param_rewrites.append(ParamRewrite(
                target=target + "_bias", kind="evaluate", sources=(bias_name,),
                graph=json.dumps(_repeat_expression(bias_name, phases))))
            inputs.append(variable(target + "_bias"))
        node["op"] = "Convolution"
        node["inputs"] = inputs
        node["attrs"] = {"kernel": str(taps), "stride": str((1,) * rank),
                         "dilate": str((1,) * rank),
                         "pad": str(tuple(g[1] for g in geometry)),
                         "num_filter": str(phases * filters), "num_group": "1",
                         "no_bias": str(len(inputs) == 2), "layout": _LAYOUTS[rank]}
        chain = _chain(index, nodes, readers, heads)
        for member in chain:
            if nodes[member]["op"] != "BatchNorm":
                continue
            bn = nodes[member]
            new_inputs = [bn["inputs"][0]]
            for entry in bn["inputs"][1:]:
                source = nodes[entry[0]]["name"]
                repeated = "%s_repeat%d" % (source, phases)
                if repeated not in added:
                    context.param_rewrites.append(ParamRewrite(
                        target=repeated, kind="evaluate", sources=(source,),
                        graph=json.dumps(_repeat_expression(source, phases))))
                new_inputs.append(variable(repeated))
            bn["inputs"] = new_inputs
        last = chain[-1] if chain else index
        out = last
        rest = [(g[2], g[3]) for g in geometry]
        if phases > 1:      # (stride 1: a plain convolution, nothing to shuffle)
            shuffle_attrs, rest = _shuffle_attrs(stride, filters, geometry)
            shuffle = ParamRewrite(target=target + "_shuffle_weight", kind="constant",
                                   sources=(), shape=(filters * phases, 1) + tuple(stride),
                                   values=shuffle_weight(stride, filters))
            context.param_rewrites.append(shuffle)
            nodes.append({"op": "Deconvolution", "name": node["name"] + SHUFFLE_SUFFIX,
                          "attrs": shuffle_attrs, "inputs": [[last, 0, 0], variable(
                              shuffle.target)]})
            out = len(nodes) - 1
            shufflers.add(out)
        if any(r != (0, 0) for r in rest):
            nodes.append({"op": "slice", "name": node["name"] + "_crop", "inputs": [
                [out, 0, 0]], "attrs": {
                    "begin": str((None, None) + tuple(r[0] for r in rest)),
                    "end": str((None, None) + tuple(-r[1] if r[1] else None
                                                    for r in rest))}})
            shufflers.add(len(nodes) - 1)
            out = len(nodes) - 1
        if out != last:
            redirect[last] = out
        context.rewritten[node["name"]] = (
            "Deconvolution (kernel %s, stride %s) run as Convolution (kernel %s, %d "
            "filters) + a depth-to-space shuffle" % (kernel, stride, taps, phases * filters))
    if not added:       # (every rewrite adds a weight)
        return {}
    for position, node in enumerate(nodes):
        if position in shufflers:
            continue
        node["inputs"] = [[redirect[e[0]], 0, 0] if e[0] in redirect and e[1] == 0 else e
                          for e in node["inputs"]]
    graph["heads"] = [[redirect[h[0]], 0, 0] if h[0] in redirect and h[1] == 0 else h
                      for h in graph["heads"]]
    append_nodes(graph, [])
    graph.update(reachable(graph["nodes"], graph["heads"], graph.get("attrs")))
    graph.pop("node_row_ptr", None)
    _log.debug("Rewrote %d Deconvolution node(s) as convolutions.", len(context.rewritten))
    return {}

