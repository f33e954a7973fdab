"""ReLU and ReLU6 written with ``maximum``/``minimum``, run as the activations oneDNN fuses.

Code ported from NumPy or other frameworks spells its activations with scalar bounds:
``F.maximum(x, 0)`` for a ReLU, ``F.minimum(F.relu(x), 6)``,
``F.minimum(F.maximum(x, 0), 6)`` or ``F.relu(F.minimum(x, 6))`` for a ReLU6,
``F.clip(F.relu(x), 0, 6)``. oneDNN fuses into a convolution or dense layer only
``Activation(relu)`` and ``clip`` (a bounded ReLU), one of them: each of these spellings
left an fp32 ``_maximum_scalar``/``_minimum_scalar``/``clip`` after the layer, which ended
the int8 region there (a dequantize, the fp32 bound, a quantize for the next layer).

:func:`clamps_as_activations` rewrites, in place and under the last node's name:

- ``_maximum_scalar(x, 0)`` -> ``relu(x)``;
- a ReLU followed by ``_minimum_scalar(., s)`` (``s > 0``), ``_minimum_scalar(x, s)``
  followed by a ReLU, and a ReLU followed by ``clip(., a, b)`` (``a >= 0``) ->
  ``clip(x, max(a, 0), b)`` (one node), where the inner node has no other reader.

The values are equal: a -0.0 input may come out as -0.0 instead of 0.0, and a NaN input
as NaN where oneDNN's ``Activation(relu)`` made it 0 (MXNet's own ``relu``,
``maximum`` and ``clip`` keep NaN).

MobileNetV3's hard sigmoid, as GluonCV and ported code write it, ``clip(x + 3, 0, 6) / 6``
(or ``* (1/6)``), runs three element-wise passes over the activation, the ``clip`` alone
8.8 ms on a 8x64x56x56 tensor (a ReLU: 1.0 ms). :func:`hard_sigmoids` rewrites
``clip(x + b, 0, c) / c`` as MXNet's one-pass ``hard_sigmoid(x, alpha=1/c, beta=b/c)``
(1.35 ms): the same function, rounded once instead of three times (values within 1e-7
of each other on [0, 1]). Inner nodes read by anything else are left as they are. A
hard swish written left to right, ``x * F.clip(x + 3, 0, 6) / 6`` (PyTorch's
``x * F.relu6(x + 3) / 6``), divides the product: it runs as ``x * hard_sigmoid(x)``
(``any_net.py``'s MobileNetV3-style ``mobile_se``, batch 16 at 64 px: int8 16.8 ->
11.7 ms, 1.69x -> 2.38x fp32).
"""
import logging

from .rewrites import consumers, private_attrs, prune

__all__ = ["clamps_as_activations", "hard_sigmoids"]

_log = logging.getLogger(__name__)


def _scalar(node, op):
    """The scalar operand of a ``node`` running ``op``, or None."""
    if node["op"] != op or len(node["inputs"]) != 1:
        return None
    try:
        return float((node.get("attrs") or {}).get("scalar"))
    except (TypeError, ValueError):
        return None


def _is_relu(node):
    attrs = node.get("attrs") or {}
    return len(node["inputs"]) == 1 and (node["op"] in ("relu", "_npx_relu") or (
        node["op"] == "Activation" and attrs.get("act_type") == "relu"))


def _bounds(node):
    """``(low, high)`` of a node that bounds its input from above (``_minimum_scalar``,
    ``clip``), or None."""
    high = _scalar(node, "_minimum_scalar")
    if high is not None:
        return float("-inf"), high
    if node["op"] == "clip" and len(node["inputs"]) == 1:
        attrs = node.get("attrs") or {}
        try:
            return float(attrs.get("a_min")), float(attrs.get("a_max"))
        except (TypeError, ValueError):
            return None
    return None


def _view(graph, context):
    """``(nodes, excluded names, readers of each entry, head entries)`` of ``graph``."""
    excluded = context.excluded if context is not None else frozenset()
    return graph["nodes"], excluded, consumers(graph), {(h[0], h[1]) for h in graph["heads"]}


def _clip(node, source, low, high):
    node.update(op="clip", inputs=[source],
                attrs=dict(private_attrs(node), a_min=repr(low), a_max=repr(high)))


def clamps_as_activations(graph, context):
    """Rewrite ReLU and ReLU6 spelled with scalar bounds as ``relu`` and ``clip``, in
    place. Nodes the user's ``exclude`` names are left as they are.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes, excluded, readers, heads = _view(graph, context)
    count = 0
    for node in nodes:      # topological order: an inner node is rewritten before its reader
        if node["name"] in excluded:
            continue
        if _scalar(node, "_maximum_scalar") == 0.0:
            node.update(op="relu", attrs=private_attrs(node))
            count += 1
            continue
        if not node["inputs"]:
            continue
        source = node["inputs"][0]
        inner = nodes[source[0]]
        entry = (source[0], source[1])
        if len(readers[entry]) != 1 or entry in heads or inner["name"] in excluded or \
                not inner["inputs"]:
            continue
        bounds, below = _bounds(node), _bounds(inner)
        if bounds is not None and _is_relu(inner) and bounds[1] > max(bounds[0], 0.0):
            _clip(node, inner["inputs"][0], max(bounds[0], 0.0), bounds[1])    # relu, then
        elif _is_relu(node) and below is not None and below[0] == float("-inf") \
                and below[1] > 0:                                               # min, relu
            _clip(node, inner["inputs"][0], 0.0, below[1])
        else:
            continue
        count += 1
    if count:
        prune(graph)
        _log.debug("Ran %d ReLU/ReLU6 spelled with bounds as relu or clip.", count)
    return {}


def _sole_reader_of(entry, nodes, readers, heads, excluded):
    """The node making ``entry`` (its output 0), where one node reads it and it is no
    output of the graph; else None."""
    entry = (entry[0], entry[1])
    inner = nodes[entry[0]]
    if entry[1] != 0 or len(readers[entry]) != 1 or entry in heads or \
            inner["name"] in excluded:
        return None
    return inner


def _single_source(node, nodes, readers, heads, excluded):
    """The node a ``node`` reads, where ``node`` is its only reader; else None."""
    if len(node["inputs"]) != 1:
        return None
    return _sole_reader_of(node["inputs"][0], nodes, readers, heads, excluded)


#: The products ``(y * clip(x + b, 0, c)) / c`` (a hard swish written left to right) is.
_PRODUCTS = frozenset(("elemwise_mul", "broadcast_mul", "_npi_multiply", "_mul"))


def hard_sigmoids(graph, context):
    """Rewrite ``clip(x + b, 0, c) / c`` (or ``* (1/c)``) as ``hard_sigmoid(x, 1/c, b/c)``,
    in place, under the division's name; ``(y * clip(x + b, 0, c)) / c`` as
    ``y * hard_sigmoid(x, 1/c, b/c)`` (the clip's node becomes the hard sigmoid, the
    division's the product). Nodes the user's ``exclude`` names are left.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes, excluded, readers, heads = _view(graph, context)
    count = 0
    for node in nodes:
        divisor = _scalar(node, "_div_scalar")
        factor = _scalar(node, "_mul_scalar")
        scale = 1.0 / divisor if divisor else factor
        if not scale or scale <= 0 or node["name"] in excluded:
            continue
        clip = _single_source(node, nodes, readers, heads, excluded)
        product, slot = clip, None      # the hard swish (y * clip(x + b, 0, c)) / c
        if product is not None and product["op"] in _PRODUCTS and \
                len(product["inputs"]) == 2:
            operands = [_sole_reader_of(e, nodes, readers, heads, excluded)
                        for e in product["inputs"]]
            slot = next((i for i, inner in enumerate(operands)
                         if inner is not None and inner["op"] == "clip"), None)
            if slot is None:
                continue
            clip = operands[slot]
        bounds = _bounds(clip) if clip is not None and clip["op"] == "clip" else None
        if bounds is None or bounds[0] != 0.0 or abs(bounds[1] * scale - 1.0) > 1e-6:
            continue
        shift = _single_source(clip, nodes, readers, heads, excluded)
        offset = _scalar(shift, "_plus_scalar") if shift is not None else None
        if offset is None:
            continue
        target = node if slot is None else clip     # ... as y * hard_sigmoid(x)
        target.update(op="hard_sigmoid", inputs=[list(shift["inputs"][0])],
                      attrs=dict(private_attrs(target), alpha=repr(scale),
                                 beta=repr(offset * scale)))
        if slot is not None:
            node.update(op=product["op"], inputs=[list(e) for e in product["inputs"]],
                        attrs=dict(private_attrs(node), **{
                            k: v for k, v in (product.get("attrs") or {}).items()
                            if not k.startswith("__")}))
        count += 1
    if count:
        prune(graph)
        _log.debug("Ran %d clip(x + b, 0, c) / c as hard_sigmoid.", count)
    return {}
