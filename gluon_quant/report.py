"""What was fused, quantized, excluded and why: the per-layer report of a quantized net."""
import json
import re
from dataclasses import dataclass, asdict
from typing import Optional, Tuple

from . import _mxnet
from .graph import GraphView, block_scopes, layer_name
from .graph.inspect import INT8_FORM_ATTR
from .pipeline import BOUNDED_META_KEY

__all__ = ["LayerReport", "QuantReport", "build_report"]


@dataclass(frozen=True)
class LayerReport:
    """One layer (one node of the fused graph) of a quantized network.

    Attributes
    ----------
    layer : str
        The name the user knows from the Gluon net: the innermost block owning the
        layer's main operator where that block is one of Gluon's layers (``cnn_conv0``),
        else the operator's name (``mynet0_convolution0`` for an ``F.*`` call in a block's
        ``hybrid_forward``; also where no block owns it). ``exclude=`` takes it.
    node : str
        Name of the node in the fused graph (``sg_mkldnn_conv_bn_act_0``).
    op : str
        The layer's main operator (``Convolution`` for conv+bn+relu).
    pattern : str
        The fused pattern, ``Convolution+BatchNorm+Activation(relu)``.
    quantized : bool
        Whether the node runs in int8.
    reason : str
        Why it is (or is not) quantized.
    dtype : str or None
        Dtype of the node's output in the final graph (``uint8``, ``int8``, ``float32``).
    threshold : tuple of float or None
        Calibrated ``(min, max)`` range of the node's output.
    fp32_ms, int8_ms : float or None
        Milliseconds per call of the node run alone in fp32 and in int8 (its own
        quantize/dequantize included), when the report was asked for timings
        (``qnet.report(timing=batch)``, see :func:`gluon_quant.debug.layer_timing`).
    """

    layer: str
    node: str
    op: str
    pattern: str
    quantized: bool
    reason: str
    dtype: Optional[str]
    threshold: Optional[Tuple[float, float]]
    fp32_ms: Optional[float] = None
    int8_ms: Optional[float] = None

    @property
    def fused(self):
        """Whether several original operators were fused into this node."""
        return "+" in self.pattern


class QuantReport(tuple):
    """A tuple of :class:`LayerReport` with summaries and a readable ``str()``."""

    def __new__(cls, layers, *, backend="onednn", dtype="auto", granularity="channel",
                calibrator=None, notes=(), totals=None):
        self = super().__new__(cls, layers)
        self.backend = backend
        self.dtype = dtype
        self.granularity = granularity
        self.calibrator = calibrator
        self.notes = tuple(notes)     # what MXNet logged while building the int8 graph
        self.totals = totals          # (fp32 ms, int8 ms) of the whole graph, when timed
        return self

    @property
    def quantized(self):
        """Layers that run in int8."""
        return tuple(r for r in self if r.quantized)

    def coverage(self, ops=("Convolution", "FullyConnected")):
        """``(quantized, total)`` counts of layers whose main operator is in ``ops``."""
        sel = [r for r in self if r.op in ops]
        return sum(r.quantized for r in sel), len(sel)

    def to_dict(self):
        """A JSON-safe dict."""
        return {"backend": self.backend, "dtype": self.dtype, "granularity": self.granularity,
                "calibrator": self.calibrator, "layers": [asdict(r) for r in self],
                "notes": list(self.notes),
                "totals_ms": list(self.totals) if self.totals else None}

    @classmethod
    def from_dict(cls, state):
        """The report :meth:`to_dict` wrote.

        Raises
        ------
        ValueError
            ``state`` is not such a dict.
        """
        try:
            layers = [LayerReport(**dict(r, threshold=None if r.get("threshold") is None
                                         else tuple(r["threshold"])))
                      for r in state["layers"]]
            totals = state.get("totals_ms")
            return cls(layers, backend=state["backend"], dtype=state["dtype"],
                       granularity=state["granularity"], calibrator=state["calibrator"],
                       notes=state.get("notes") or (),
                       totals=tuple(totals) if totals else None)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError("not a gluon_quant report (%s: %s)" % (type(err).__name__, err)) \
                from None

    def to_json(self, **kwargs):
        """The report as JSON text."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        timed = self.totals is not None
        head = ("layer", "op", "fused pattern", "int8", "dtype", "range") + (
            ("fp32 ms", "int8 ms") if timed else ()) + ("why",)
        rows = []
        for group in _fp32_runs(self):
            r = group[-1]
            ranged = [g for g in group if g.threshold is not None]
            rng = "[%.4g, %.4g]" % tuple(ranged[-1].threshold) if ranged else ""
            times = tuple("" if any(t is None for t in ts) else "%.4f" % sum(ts)
                          for ts in zip(*((g.fp32_ms, g.int8_ms) for g in group)))
            op, pattern, reason = (r.op, r.pattern, r.reason) if len(group) == 1 else (
                ", ".join(_unique(g.op for g in group)), "%d nodes" % len(group),
                _merged_reasons(group, self.backend))
            rows.append((r.layer, op, pattern, "yes" if r.quantized else "no",
                         r.dtype or "?", rng) + (times if timed else ()) + (reason,))
        widths = [min(max(len(str(row[i])) for row in rows + [head]), 48)
                  for i in range(len(head) - 1)] + [max(len(str(r[-1])) for r in rows + [head])]

        def fmt(row):
            return "  ".join(str(c)[:w].ljust(w) for c, w in zip(row, widths)).rstrip()

        q, total = self.coverage()
        lines = ["gluon_quant report: backend=%s dtype=%s granularity=%s calibrator=%s"
                 % (self.backend, self.dtype, self.granularity, self.calibrator),
                 "%d of %d graph nodes in int8; convolution/dense layers in int8: %d of "
                 "%d; fused nodes: %d" % (len(self.quantized), len(self), q, total,
                                          sum(r.fused for r in self)),
                 fmt(head), fmt(tuple("-" * w for w in widths))]
        if timed:
            lines.insert(2, "time per call, whole graph: fp32 %.3f ms, int8 %.3f ms; per node: "
                         "each int8 node and its fp32 node run alone" % self.totals)
        lines += [fmt(row) for row in rows]
        if self.notes:
            lines.append("MXNet said while building the int8 graph:")
            lines += ["  " + note for note in _grouped_notes(self.notes)]
        return "\n".join(lines)

    def __repr__(self):
        return "<QuantReport %d layers, %d int8>" % (len(self), len(self.quantized))


def _fp32_runs(layers):
    """``layers`` in groups to print as one row each: the fp32 nodes of one layer (a
    GroupNorm or InstanceNorm run as eleven small operators; a ``split`` run as slices, its
    parts interleaved with the reshapes that read them) together, at the first one's place
    among the fp32 nodes between two int8 ones; int8 nodes alone. A stretch of fp32 nodes
    is never merged across an int8 node, so a block called twice stays two rows."""
    runs, stretch = [], {}
    for r in layers:
        if r.quantized:
            runs.append([r])
            stretch = {}
        elif r.layer in stretch:
            stretch[r.layer].append(r)
        else:
            stretch[r.layer] = [r]
            runs.append(stretch[r.layer])
    return runs


def _unique(items):
    return list(dict.fromkeys(items))


_NOTE_TIME = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
_NOTE_NAME = re.compile(r"(?<![\w.:/])[A-Za-z_]\w*\d\w*(?![\w.:/])")
_NOTES_NAMED = 6


def _grouped_notes(notes):
    """MXNet's messages with those that differ only in the node they name as one line.

    An unrolled recurrent net makes MXNet say "exclude <node> which act_type is 1" once per
    gate and time step; the report prints the first and names the others.
    """
    groups = {}
    for note in notes:
        text = _NOTE_TIME.sub("", note)
        names = _NOTE_NAME.findall(text)
        groups.setdefault(_NOTE_NAME.sub("*", text), []).append((note, names))
    lines = []
    for members in groups.values():
        lines.append(members[0][0])
        others = [", ".join(names) for _, names in members[1:]]
        if others:
            shown = others[:_NOTES_NAMED] + (["..."] if len(others) > _NOTES_NAMED else [])
            lines.append("  (and %d more like it, naming %s)" % (len(others), "; ".join(shown)))
    return lines


def _merged_reasons(group, backend):
    """The distinct reasons of a run of fp32 nodes, the "no int8 kernel" ones as one."""
    prefix, suffix = "no int8 kernel for ", " on %s" % backend
    missing, others = [], []
    for r in group:
        op = r.reason[len(prefix):-len(suffix)] if r.reason.startswith(prefix) \
            and r.reason.endswith(suffix) else ""
        if op and " " not in op:
            missing.append(op)
        else:
            others.append(r.reason)
    merged = ["%s%s%s" % (prefix, ", ".join(_unique(missing)), suffix)] if missing else []
    return "; ".join(_unique(others) + merged)


def build_report(model, net, config, calibrator_name, timing=None):
    """The :class:`QuantReport` of a built model.

    Parameters
    ----------
    model : gluon_quant.pipeline.BuiltModel
    net : mxnet.gluon.HybridBlock
        The fp32 net (for the names of its blocks).
    config : QuantConfig
    calibrator_name : str
    timing : gluon_quant.debug.TimingReport, optional
        Per-node times to show beside each layer.

    Returns
    -------
    QuantReport
    """
    fused = model.plan.fused
    final_view = GraphView(_mxnet.graph_json(model.symbol))
    dtypes = _mxnet.infer_output_dtypes(model.symbol, {n: "float32" for n in fused.inputs.names})
    scopes = block_scopes(net)
    fp32_nodes = model.plan.fp32_nodes
    table = model.table
    times = timing.by_node() if timing is not None else {}
    layers = []
    for node in fused.view:
        qname = "quantized_" + node.name
        qnode = final_view.by_name.get(qname)
        if qnode is None and node.name in final_view.by_name:
            cand = final_view.by_name[node.name]
            qnode = cand if str(cand.attr("quantized", "")).lower() == "true" else None
        quantized = qnode is not None
        dropped = (not quantized and node.name not in final_view.by_name
                   and node.pattern == "Activation(relu)" and node.name not in fp32_nodes)
        if dropped:     # graph.guards.unsigned_relus
            quantized, reason = True, ("int8: its input is uint8, which a ReLU leaves as it "
                                       "is, so the int8 graph reads that input instead")
        elif quantized and qnode.attr(INT8_FORM_ATTR):     # graph.maxpools
            reason = qnode.attr(INT8_FORM_ATTR)
        elif node.name in fp32_nodes:
            reason = fp32_nodes[node.name]
        elif quantized:
            reason = "quantized"
        else:
            reason = "no int8 kernel for %s on %s" % (node.op, config.backend.value)
        reason += "".join("; %s: %s" % (m[0], fused.rewritten[m[0]])
                          for m in node.members if m[0] in fused.rewritten)
        out_name = (qname if quantized else node.name) + "_output"
        if quantized and qname + "_requantize" in final_view.by_name:
            out_name = qname + "_requantize_output0"    # graph.guards.grouped_per_tensor
            reason = ("quantized with one weight scale for the tensor (grouped: MXNet's "
                      "per-channel scales are wrong there); int32 out, requantized")
        key = node.name + "_output"
        if key in fused.range_bounds and table is not None and key in table:
            reason += "; " + fused.range_bounds[key][2]
            before = (table.meta.get(BOUNDED_META_KEY) or {}).get(key)
            reason += (" (narrowed from [%.4g, %.4g])" % tuple(before) if before
                       else " (the calibrated range was within it)")
        layers.append(LayerReport(
            layer=layer_name(node, scopes, fused.helpers), node=node.name, op=node.main_op,
            pattern=node.pattern, quantized=quantized, reason=reason,
            dtype="uint8" if dropped else dtypes.get(out_name) or dtypes.get(key),
            threshold=tuple(table[key]) if table is not None and key in table else None,
            fp32_ms=getattr(times.get(node.name), "fp32_ms", None),
            int8_ms=getattr(times.get(node.name), "int8_ms", None)))
    return QuantReport(layers, backend=config.backend.value, dtype=config.dtype.value,
                       granularity=config.granularity.value, calibrator=calibrator_name,
                       notes=model.messages, totals=None if timing is None else (
                           timing.fp32_total_ms, timing.int8_total_ms))
