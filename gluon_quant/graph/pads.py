"""Explicit zero padding folded into the convolutions that read it (a ``TRACED`` pass of
:data:`gluon_quant.graph.passes.PASSES`): an exact fp32 rewrite."""
import collections

from .rewrites import attr_ints, prune

__all__ = ["pads_into_convolutions"]


def _symmetric_zero_pad(node):
    """The per-spatial-axis pads of a zero ``Pad`` that pads every spatial axis by the same
    amount on both sides and leaves batch and channel axes alone, else None."""
    attrs = node.get("attrs") or {}
    if node["op"] not in ("Pad", "pad") or attrs.get("mode", "constant") != "constant" \
            or float(attrs.get("constant_value", 0)) != 0.0:
        return None
    widths = attr_ints(attrs, "pad_width")
    if len(widths) not in (8, 10) or any(widths[:4]):
        return None
    pairs = list(zip(widths[4::2], widths[5::2]))
    return [b for b, e in pairs] if all(b == e for b, e in pairs) else None


def pads_into_convolutions(graph, context=None):  # pylint: disable=unused-argument
    """Fold a zero ``Pad`` read only by convolutions into their own padding.

    Nets ported from TensorFlow pad explicitly before a convolution without padding
    (GluonCV's Xception and DeepLab: ``F.pad(x, pad_width=(0, 0, 0, 0, 1, 1, 1, 1))`` then
    a 3x3 convolution). ``Pad`` has no int8 kernel, so each one cost a dequantize and a
    quantize between int8 layers (63 in Xception-65). Exact where the pad is the same on
    both sides of each spatial axis (a convolution pads symmetrically); asymmetric pads
    ("same" padding of a stride-2 convolution) and other modes stay.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    readers = collections.defaultdict(list)
    for index, node in enumerate(nodes):
        for entry in node["inputs"]:
            readers[entry[0]].append((index, entry))
    heads = {h[0] for h in graph["heads"]}
    changed = False
    for index, node in enumerate(nodes):
        pads = _symmetric_zero_pad(node)
        users = readers.get(index, [])
        if pads is None or index in heads or not users or any(
                nodes[r]["op"] != "Convolution" or nodes[r]["inputs"][0] is not entry
                or sum(e[0] == index for e in nodes[r]["inputs"]) != 1
                or (nodes[r].get("attrs") or {}).get("layout", "None") not in (
                    "None", "NCW", "NCHW", "NCDHW")
                or len(attr_ints(nodes[r].get("attrs") or {}, "kernel")) != len(pads)
                for r, entry in users):
            continue
        for reader, _ in users:
            attrs = nodes[reader].setdefault("attrs", {})
            own = attr_ints(attrs, "pad") or [0] * len(pads)
            attrs["pad"] = str(tuple(p + q for p, q in zip(own, pads)))
            nodes[reader]["inputs"][0] = list(node["inputs"][0])
        changed = True
    if changed:
        prune(graph)
    return {}
