"""Fused convolution + sum nodes whose sum operand and output data types differ (oneDNN).

A convolution fused with a residual sum writes its result into the sum operand's buffer,
in the operand's data type, whatever the output type its ranges were computed for. Two
mixes are wrong in MXNet 1.9.1:

* int8 operand, uint8 output (``relu(conv(x) + signed shortcut)``, the first block of
  every ResNet v1 stage): the kernel scales for 255 levels but saturates at int8's 127:
  values above half the range were clipped. The range is widened by 255/127.
* uint8 operand, int8 output (``conv(x) + relu(y)``): negative sums are clipped to 0. The
  operand is re-quantized to int8 (dequantize, quantize over ``[-max, max]``).

:func:`fused_sum_pass` runs it in the ``FINAL`` stage of
:data:`gluon_quant.graph.passes.PASSES`.
"""
import logging

import numpy as np

from .guards import entry_dtype
from .inspect import is_true
from .rewrites import append_nodes

__all__ = ["fused_sum_dtypes", "fused_sum_pass"]

_log = logging.getLogger(__name__)

#: The fused oneDNN convolution (quantized: its last four inputs are data and sum ranges).
_FUSED_CONV = "_sg_mkldnn_conv"


def fused_sum_dtypes(graph, dtypes):
    """Fix the fused convolution + sum nodes whose sum operand and output types differ.

    Parameters
    ----------
    graph : dict
        The final int8 graph as JSON (modified in place).
    dtypes : dict of str to str
        Inferred dtype name of each internal output (``node_output``, ``node_output1``...).

    Returns
    -------
    widened : list of str
        Nodes whose range was widened by 255/127 (int8 operand, uint8 output).
    converted : list of str
        Nodes whose uint8 sum operand is now re-quantized to int8.
    """
    nodes = graph["nodes"]
    widened, converted, inserted = [], [], []
    for index, node in enumerate(nodes):
        attrs = node.get("attrs") or {}
        if (node["op"] != _FUSED_CONV or not is_true(attrs.get("quantized"))
                or not is_true(attrs.get("with_sum")) or "max_calib_range" not in attrs):
            continue
        out_type = entry_dtype(dtypes, nodes, [index, 0, 0])
        sum_entry, sum_min, sum_max = node["inputs"][-5], node["inputs"][-2], node["inputs"][-1]
        sum_type = entry_dtype(dtypes, nodes, sum_entry)
        if sum_type == "int8" and out_type == "uint8":
            hi = float(attrs["max_calib_range"]) * 255.0 / 127.0
            attrs["max_calib_range"] = repr(float(np.float32(hi)))
            widened.append(node["name"])
        elif sum_type == "uint8" and out_type == "int8":
            base = len(nodes) + 2 * len(inserted)     # two nodes per earlier insertion
            name = node["name"] + "_sum_int8"
            deq = {"op": "_contrib_dequantize", "name": name + "_dequantize",
                   "attrs": {"out_type": "float32"}, "inputs": [sum_entry, sum_min, sum_max]}
            q_attrs = {"out_type": "int8"}
            hi = _operand_max(nodes, sum_entry)
            if hi is not None:
                q_attrs.update(min_calib_range=repr(-hi), max_calib_range=repr(hi))
            quant = {"op": "_contrib_quantize_v2", "name": name, "attrs": q_attrs,
                     "inputs": [[base, 0, 0]]}
            inserted.append((index, [deq, quant]))
            node["inputs"][-5:] = [[base + 1, 0, 0]] + node["inputs"][-4:-2] + [
                [base + 1, 1, 0], [base + 1, 2, 0]]
            converted.append(node["name"])
    if inserted:
        append_nodes(graph, [n for _, pair in inserted for n in pair])
    if widened or converted:
        _log.debug("Fused sums: widened the range of %s; re-quantized the operand of %s.",
                   widened, converted)
    return widened, converted


def fused_sum_pass(graph, context):
    """:func:`fused_sum_dtypes` as a pass of the ``FINAL`` stage (dtypes inferred)."""
    fused_sum_dtypes(graph, context.infer_dtypes(graph))
    return {}


def _operand_max(nodes, entry):
    """The calibrated upper bound of a quantized entry, from its producer's attributes."""
    attrs = nodes[entry[0]].get("attrs") or {}
    try:
        return abs(float(attrs["max_calib_range"]))
    except (KeyError, ValueError):
        return None
