"""Run fp32 and int8 side by side and measure, per layer, how far int8 drifts from fp32.

The fused fp32 graph is run with every layer's output exposed, and the int8 graph with the
same layers' outputs exposed and dequantized; both see the same batches.  For each layer
the signal-to-quantization-noise ratio ``SQNR = 10 log10(sum(x^2) / sum((x - q)^2))`` (dB)
and the cosine of ``x`` and ``q`` are accumulated over all elements of all batches.

The error of a layer includes what reached it from earlier layers; ``added_db`` (the drop
of SQNR from the layer's worst input to its output) tells the error the layer adds itself
(the table says ``all`` where its inputs equal fp32 exactly: the first int8 layers).
Nodes whose values nothing reads, only their shapes (the slice of the data that a kernel of
ones is cut from), are left out: their error does not reach the outputs.

With ``floor=True`` the 8-bit activation floor (:mod:`gluon_quant.debug.floor`) runs beside
them: each layer also gets the SQNR of the fp32 net with every calibrated tensor rounded to
8 bits, and ``floor_gap_added_db``, how much further than the floor the layer falls behind
(its gap minus its inputs' largest gap). A kernel or graph pattern that loses precision
stands out there even when everything after it is also worse.
"""
import json
from dataclasses import asdict, dataclass
from typing import Optional

from .. import _mxnet
from .._stage import stage
from ..data import iter_batches
from ..errors import GraphError
from ..graph import GraphView, block_scopes, layer_name
from ..graph.inspect import POOLED_AS_ATTR
from ..graph.tools import shape_only_nodes
from ._target import check_target
from .floor import fake_quant_graph
from .metrics import EXACT_DB, Accumulator, all_outputs, cosine, sqnr_db

__all__ = ["LayerError", "ComparisonReport", "compare", "quantized_counterparts", "sqnr_db",
           "cosine", "EXACT_DB"]

@dataclass(frozen=True)
class LayerError:
    """fp32 vs int8 agreement of one layer's output.

    Attributes
    ----------
    layer : str
        The user's name of the layer (as in :meth:`QuantizedHybridBlock.report`).
    node : str
        The node of the fused fp32 graph (the key ``exclude`` accepts).
    op : str
        The layer's main operator.
    quantized : bool
        Whether the layer runs in int8.
    sqnr_db : float
        SQNR of the int8 output against fp32, in dB (higher is better; 200 = exact).
    cosine : float
        Cosine of the int8 and fp32 outputs over all batches.
    added_db : float or None
        SQNR lost in this layer: its worst input's SQNR minus its own (None for the
        first layers, whose inputs are the network's).
    floor_sqnr_db : float or None
        SQNR of the 8-bit activation floor at this layer (``compare(..., floor=True)``).
    floor_gap_added_db : float or None
        ``floor_sqnr_db - sqnr_db`` minus the largest such gap of the layer's inputs: the
        precision this layer loses beyond what rounding activations to 8 bits explains.
    """

    layer: str
    node: str
    op: str
    quantized: bool
    sqnr_db: float
    cosine: float
    added_db: Optional[float]
    floor_sqnr_db: Optional[float] = None
    floor_gap_added_db: Optional[float] = None


class ComparisonReport(tuple):
    """:class:`LayerError` entries ranked worst first (lowest SQNR), with a readable ``str()``.

    Attributes
    ----------
    output_sqnr_db, output_cosine : float
        Agreement of the network's outputs: the worst of them (a detector's class ids agree
        exactly while its boxes may not).
    outputs : tuple of (float, float)
        ``(SQNR dB, cosine)`` of every output, in the order the network returns them.
    batches : int
        Number of batches compared.
    """

    def __new__(cls, layers, *, output_sqnr_db, output_cosine, batches, outputs=()):
        self = super().__new__(cls, sorted(layers, key=lambda r: (r.sqnr_db, r.node)))
        self.output_sqnr_db = output_sqnr_db
        self.output_cosine = output_cosine
        self.outputs = tuple(outputs) or ((output_sqnr_db, output_cosine),)
        self.batches = batches
        return self

    def by_added_error(self):
        """The layers ranked by the error they add themselves (largest first)."""
        return sorted(self, key=lambda r: -(r.added_db if r.added_db is not None
                                            else EXACT_DB - r.sqnr_db))

    def by_floor_gap(self):
        """The layers ranked by the precision they lose beyond the floor (largest first).

        Needs ``compare(..., floor=True)``.
        """
        if any(r.floor_gap_added_db is None for r in self):
            raise GraphError("This report has no floor: run compare(qnet, batches, "
                             "floor=True).")
        return sorted(self, key=lambda r: -r.floor_gap_added_db)

    def to_dict(self):
        """A JSON-safe dict."""
        return {"output_sqnr_db": self.output_sqnr_db, "output_cosine": self.output_cosine,
                "outputs": [{"sqnr_db": db, "cosine": cos} for db, cos in self.outputs],
                "batches": self.batches, "layers": [asdict(r) for r in self]}

    def to_json(self, **kwargs):
        """The report as JSON text."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        floor = bool(self) and self[0].floor_sqnr_db is not None
        lines = ["fp32 vs int8 on %d batch(es): output SQNR %.1f dB, cosine %.5f%s"
                 % (self.batches, self.output_sqnr_db, self.output_cosine,
                    " (worst of %d outputs: %s)" % (len(self.outputs), ", ".join(
                        "#%d %.1f dB %.4f" % (i, db, cos)
                        for i, (db, cos) in enumerate(self.outputs)))
                    if len(self.outputs) > 1 else ""),
                 "%-44s %-14s %-5s %9s %9s %9s" % ("layer (worst first)", "op", "int8",
                                                   "SQNR dB", "cosine", "added dB")
                 + (" %9s %9s" % ("floor dB", "gap+ dB") if floor else "")]
        for r in self:
            added = "" if r.added_db is None else "%.1f" % r.added_db
            if r.added_db is not None and r.sqnr_db + r.added_db >= EXACT_DB:
                added = "all"   # its inputs are exact: all of its error is its own
            lines.append("%-44s %-14s %-5s %9.1f %9.5f %9s" % (
                r.layer[-44:], r.op[:14], "yes" if r.quantized else "no", r.sqnr_db,
                r.cosine, added) + (" %9.1f %9.1f" % (r.floor_sqnr_db, r.floor_gap_added_db)
                                    if floor else ""))
        return "\n".join(lines)

    def __repr__(self):
        return "<ComparisonReport %d layers, output SQNR %.1f dB>" % (len(self),
                                                                      self.output_sqnr_db)


def quantized_counterparts(qnet):
    """Map each node of the fused fp32 graph to its node in the final int8 graph.

    Returns
    -------
    dict
        fp32 node name -> ``(final node name, quantized)``, for the nodes found in both.
    """
    if qnet.quantized_graph is None:
        raise GraphError("The network is not quantized yet: call finalize() (or use "
                         "gluon_quant.quantize) before comparing it with fp32.")
    final = GraphView(_mxnet.graph_json(qnet.quantized_graph)).by_name
    found = {}
    for node in GraphView(_mxnet.graph_json(qnet.fused_graph)):
        qnode = final.get("quantized_" + node.name)
        if qnode is not None:
            found[node.name] = (qnode.name, True)
        elif node.name in final:
            flag = str(final[node.name].attr("quantized", "")).lower() == "true"
            found[node.name] = (node.name, flag)
    return found


@stage
def compare(qnet, batches, *, num_batches=4, floor=False):
    """Per-layer agreement of ``qnet`` with its fp32 net on a few batches.

    Parameters
    ----------
    qnet : QuantizedHybridBlock
        A finalized quantized block (e.g. from :func:`gluon_quant.quantize`).
    batches : iterable of batches
        In any form the calibration accepted (see :mod:`gluon_quant.data`).
    num_batches : int, default 4
        Compare on at most this many batches.
    floor : bool, default False
        Also run the 8-bit activation floor and fill ``floor_sqnr_db`` and
        ``floor_gap_added_db`` (see :meth:`ComparisonReport.by_floor_gap`).

    Returns
    -------
    ComparisonReport
        Layers ranked worst first.

    Examples
    --------
    >>> print(gluon_quant.debug.compare(qnet, calib_batches))
    """
    check_target(qnet, "compare")
    pairs = quantized_counterparts(qnet)
    fused_json = _mxnet.graph_json(qnet.fused_graph)
    # a node only shapes are read from (the slice a kernel of ones is cut from) has no
    # error that matters
    unread = shape_only_nodes(fused_json)
    nodes = [n for n in GraphView(fused_json) if n.name in pairs and n.name not in unread]
    names = qnet.input_names
    fp32_params = qnet.fp32_params or {p.name: _mxnet.as_legacy(p.data(qnet.ctx))
                                       for p in qnet.net.collect_params().values()}
    int8_params = {p.name: p.data(qnet.ctx) for p in qnet.collect_params().values()}
    ref_block = _tapped_block(qnet.fused_graph, [n.name for n in nodes], names, fp32_params,
                              qnet.ctx)
    final = {n["name"]: n for n in _mxnet.graph_json(qnet.quantized_graph)["nodes"]}
    taps = [_tap(pairs[n.name][0], final) for n in nodes]
    q_block = _tapped_block(qnet.quantized_graph, taps, names, int8_params, qnet.ctx)
    floor_block = _floor_block(qnet, nodes, fp32_params) if floor and nodes else None
    acc = {n.name: Accumulator() for n in nodes}
    floor_acc = {n.name: Accumulator() for n in nodes}
    out_acc = []
    seen = 0
    for batch in iter_batches(batches, num_batches, what="batches"):
        inputs = qnet.convert_batch(batch)
        refs = _mxnet.run_block(ref_block, inputs, "fp32 forward pass") if nodes else []
        outs = _mxnet.run_block(q_block, inputs, "int8 forward pass") if nodes else []
        lows = (_mxnet.run_block(floor_block, inputs, "floor forward pass")
                if floor_block is not None else [None] * len(nodes))
        for node, ref, out, low in zip(nodes, refs, outs, lows):
            ref = ref.asnumpy()
            acc[node.name].add(ref, out.asnumpy())
            if low is not None:
                floor_acc[node.name].add(ref, low.asnumpy())
        refs = all_outputs(_mxnet.call_net(qnet.net, qnet.fused.inputs.regroup(inputs),
                                           qnet.fused.np_mode))
        outs = all_outputs(qnet(*inputs))
        out_acc.extend(Accumulator() for _ in range(len(refs) - len(out_acc)))
        for accumulator, ref, out in zip(out_acc, refs, outs):
            accumulator.add(ref.asnumpy(), out.asnumpy())
        seen += 1
    if seen == 0:
        raise GraphError("compare() got no batch: pass a non-empty iterable of batches.")
    scopes = block_scopes(qnet.net)
    gaps = {n.name: floor_acc[n.name].sqnr - acc[n.name].sqnr for n in nodes}
    layers = []
    for node in nodes:
        inputs_db = [acc[i].sqnr for i in node.inputs if i in acc]
        own = acc[node.name].sqnr
        floor_fields = {}
        if floor_block is not None:
            before = max([gaps[i] for i in node.inputs if i in gaps] + [0.0])
            floor_fields = dict(floor_sqnr_db=floor_acc[node.name].sqnr,
                                floor_gap_added_db=gaps[node.name] - before)
        layers.append(LayerError(
            layer=layer_name(node, scopes), node=node.name, op=node.main_op,
            quantized=pairs[node.name][1], sqnr_db=own, cosine=acc[node.name].cosine,
            added_db=(min(inputs_db) - own) if inputs_db else None, **floor_fields))
    return ComparisonReport(layers, output_sqnr_db=min(a.sqnr for a in out_acc),
                            output_cosine=min(a.cosine for a in out_acc),
                            outputs=[(a.sqnr, a.cosine) for a in out_acc],
                            batches=seen)


def _floor_block(qnet, nodes, fp32_params):
    """The floor network, tapped at each node's rounded output (its own output if none)."""
    sym, rounded = fake_quant_graph(qnet)
    return _tapped_block(sym, [rounded.get(n.name, n.name) for n in nodes], qnet.input_names,
                         fp32_params, qnet.ctx)


def _tap(name, final):
    """The final-graph node whose output holds the values of the fp32 node that ``name``
    stands for: a grouped convolution's int32 output is read after its requantize
    (graph.guards.grouped_per_tensor), as the network reads it; a max pooling moved
    before a sigmoid (graph.maxpools) after the sigmoid's copy."""
    if name + "_requantize" in final:
        return name + "_requantize"
    return (final[name].get("attrs") or {}).get(POOLED_AS_ATTR, name)


def _tapped_block(sym, node_names, input_names, params, ctx):
    group = _mxnet.tap_outputs(sym, node_names, input_names)
    block = _mxnet.symbol_block(group, input_names, params, ctx)   # takes what it uses
    block.hybridize(**_mxnet.static_flags(group))
    return block

