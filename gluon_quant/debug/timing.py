"""How long each fused node takes in int8 and in fp32: where the int8 model gains or loses.

Every node of the fused fp32 graph that runs in int8 is cut out of both graphs with its
inputs as variables, and each piece is timed alone, fed the very tensors it reads when the
whole graph runs on a real batch (in the layouts the operators before it left them in: a
uint8 tensor in plain layout sends MXNet's int8 pooling to a path 500x slower than the
oneDNN-blocked one the graph really uses).  The int8 piece includes the conversions the
node pays for on its own: a ``quantize`` feeding it and a ``dequantize`` reading it (an
int8 node between int8 neighbours has neither).  The whole-graph times of both models on
the same batch are given beside them (fp32: the oneDNN-fused fp32 graph).

Per-node times are measured, not modelled: they vary with the machine's load, and a node
timed alone does not share caches with its neighbours as it does in the full graph.  Use
them to find where int8 loses (ratio below 1), not as exact shares of the total.

>>> print(gluon_quant.debug.layer_timing(qnet, batch))
"""
import logging
import numbers
import statistics
import time
from dataclasses import dataclass
from typing import Optional

from .. import _mxnet
from .._stage import stage
from ..errors import ConfigError, GluonQuantError, GraphError
from ..graph import GraphView, block_scopes, layer_name
from ..graph.passes import tensor_key
from ._target import check_target
from .compare import quantized_counterparts
from .metrics import all_outputs

__all__ = ["LayerTiming", "TimingReport", "layer_timing", "isolate_node"]

_log = logging.getLogger(__name__)

#: Conversions that belong to the int8 node they feed (quantize) or read (dequantize).
_OWN_INPUT_OPS = ("_contrib_quantize_v2", "_contrib_quantize")
_OWN_OUTPUT_OPS = ("_contrib_dequantize",)


@dataclass(frozen=True)
class LayerTiming:
    """Time of one int8 node and of the fp32 node it replaces, each run alone.

    Attributes
    ----------
    layer : str
        The Gluon layer's name (as in :meth:`QuantizedHybridBlock.report`).
    node : str
        The node of the fused fp32 graph.
    op : str
        Its main operator.
    fp32_ms, int8_ms : float or None
        Median milliseconds per call (None where the piece could not be run alone; see
        ``note``).
    note : str
        Why a time is missing (empty when both were measured).
    """

    layer: str
    node: str
    op: str
    fp32_ms: Optional[float]
    int8_ms: Optional[float]
    note: str = ""

    @property
    def speedup(self):
        """fp32 time over int8 time (above 1: int8 is faster); None if either is missing."""
        if not self.fp32_ms or not self.int8_ms:
            return None
        return self.fp32_ms / self.int8_ms


class TimingReport(tuple):
    """A tuple of :class:`LayerTiming` (slowest int8 node first) with the whole-graph times."""

    def __new__(cls, layers, *, fp32_total_ms, int8_total_ms, batch_shapes=()):
        self = super().__new__(cls, layers)
        self.fp32_total_ms = fp32_total_ms
        self.int8_total_ms = int8_total_ms
        self.batch_shapes = tuple(batch_shapes)
        return self

    @property
    def slower(self):
        """Nodes whose int8 piece is slower than their fp32 one."""
        return tuple(t for t in self if t.speedup is not None and t.speedup < 1.0)

    def by_node(self):
        """``{fused node name: LayerTiming}``."""
        return {t.node: t for t in self}

    def to_dict(self):
        """A JSON-safe dict."""
        return {"fp32_total_ms": self.fp32_total_ms, "int8_total_ms": self.int8_total_ms,
                "batch_shapes": [list(s) for s in self.batch_shapes],
                "layers": [dict(layer=t.layer, node=t.node, op=t.op, fp32_ms=t.fp32_ms,
                                int8_ms=t.int8_ms, note=t.note) for t in self]}

    def __str__(self):
        lines = ["int8 vs fp32 time per node, each run alone on inputs of shapes %s; whole "
                 "graph: fp32 %.3f ms, int8 %.3f ms (%.2fx)" % (
                     ", ".join(str(tuple(s)) for s in self.batch_shapes) or "?",
                     self.fp32_total_ms, self.int8_total_ms,
                     self.fp32_total_ms / self.int8_total_ms if self.int8_total_ms else 0.0),
                 "%-44s %-16s %10s %10s %8s" % ("layer", "op", "fp32 ms", "int8 ms", "speedup")]
        for t in self:
            lines.append("%-44s %-16s %10s %10s %8s%s" % (
                t.layer[-44:], t.op[:16], _ms(t.fp32_ms), _ms(t.int8_ms),
                "%.2fx" % t.speedup if t.speedup else "-", "  " + t.note if t.note else ""))
        return "\n".join(lines)

    def __repr__(self):
        return "<TimingReport %d nodes, %d slower in int8>" % (len(self), len(self.slower))


def _ms(value):
    return "-" if value is None else "%.4f" % value


def isolate_node(graph, index):
    """Cut node ``index`` (with the conversions it owns) out of a JSON graph.

    Parameters
    ----------
    graph : dict
        A JSON graph (``nodes``, ``heads``).
    index : int
        The node to cut out.

    Returns
    -------
    sub : dict
        A JSON graph whose inputs are variables: the node's parameters keep their names,
        every other input entry becomes a variable named by its tensor key.
    sources : dict
        Variable name -> the entry ``(node, output)`` of ``graph`` it stands for.
    """
    nodes = graph["nodes"]
    readers = {}
    for j, node in enumerate(nodes):
        for entry in node["inputs"]:
            readers.setdefault(entry[0], []).append(j)
    members = {index}
    members.update(e[0] for e in nodes[index]["inputs"]
                   if nodes[e[0]]["op"] in _OWN_INPUT_OPS)
    members.update(j for j in readers.get(index, ()) if nodes[j]["op"] in _OWN_OUTPUT_OPS)
    order = sorted(members)
    new_nodes, sources, var_index, new_index = [], {}, {}, {}
    for i in order:
        for entry in nodes[i]["inputs"]:
            key = (entry[0], entry[1])
            if entry[0] in members or key in var_index:
                continue
            name = tensor_key(nodes[entry[0]], entry[1])
            var_index[key] = len(new_nodes)
            sources[name] = key
            new_nodes.append({"op": "null", "name": name, "inputs": []})
    for i in order:
        inputs = [[new_index[e[0]], e[1], 0] if e[0] in members
                  else [var_index[(e[0], e[1])], 0, 0] for e in nodes[i]["inputs"]]
        new_index[i] = len(new_nodes)
        new_nodes.append(dict(nodes[i], inputs=inputs))
    outside = [e for j, node in enumerate(nodes) if j not in members
               for e in node["inputs"] if e[0] in members] + \
        [h for h in graph["heads"] if h[0] in members]
    heads = []
    for entry in outside:
        head = [new_index[entry[0]], entry[1], 0]
        if head not in heads:
            heads.append(head)
    if not heads:      # a node nothing reads: time its first output
        heads = [[new_index[index], 0, 0]]
    sub = {"nodes": new_nodes, "heads": heads,
           "arg_nodes": [i for i, n in enumerate(new_nodes) if n["op"] == "null"],
           "attrs": graph.get("attrs") or {}}
    return sub, sources


def _time_call(function, repeats, min_seconds=0.02):
    """Median seconds of ``function()`` over at least ``repeats`` calls (after a warm-up)."""
    for _ in range(2):
        function()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds
                                   and len(times) < 50 * repeats):
        begin = time.perf_counter()
        function()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _piece(graph, index, params):
    """Node ``index`` of ``graph`` cut out, and the inner tensors it reads."""
    sub, sources = isolate_node(graph, index)
    feeds = {name: (graph["nodes"][src]["name"], out)
             for name, (src, out) in sources.items() if name not in params}
    return sub, feeds


def _piece_time(piece, params, values, ctx, repeats):
    """Milliseconds per call of a cut-out piece fed the inner tensors it reads (or why not)."""
    sub, feeds = piece
    names = list(feeds)
    arrays = [values[feeds[n]] for n in names]
    try:
        symbol = _mxnet.load_graph(sub)
        block, _ = _mxnet.forward_block(symbol, names, params, ctx, arrays, "The piece")
        block.hybridize(**_mxnet.static_flags(symbol))
        return _time_call(lambda: _wait(block(*arrays)), repeats) * 1e3, ""
    except (GluonQuantError, _mxnet.MXNetError, ValueError) as err:
        return None, "could not run alone: %s" % _mxnet.first_line(err)


def _wait(out):
    for array in all_outputs(out):
        array.wait_to_read()


def _pieces(graph, names, params, inputs, ctx):
    """The pieces of the named nodes and the inner tensors they read, computed once."""
    index = {n["name"]: i for i, n in enumerate(graph["nodes"])}
    pieces = {name: _piece(graph, index[name], params) for name in names}
    entries = sorted({e for _, feeds in pieces.values() for e in feeds.values()})
    return pieces, _mxnet.internal_outputs(graph, entries, inputs, params, ctx)


@stage
def layer_timing(qnet, batch, *, repeats=10):
    """Time every int8 node of ``qnet`` and the fp32 node it replaces, each alone.

    Parameters
    ----------
    qnet : QuantizedHybridBlock
        A finalized quantized block.
    batch : object
        One batch in any form calibration accepted; its shapes are the ones timed.
    repeats : int, default 10
        Timed calls per piece (the median is kept).

    Returns
    -------
    TimingReport
        Slowest int8 node (lowest fp32/int8 ratio) first.
    """
    check_target(qnet, "layer_timing")
    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
        raise ConfigError("layer_timing(repeats=%r): pass a positive int." % (repeats,))
    pairs = quantized_counterparts(qnet)
    inputs = qnet.convert_batch(batch)
    by_name = dict(zip(qnet.input_names, inputs))
    fp32_params = qnet.fp32_params or {p.name: _mxnet.as_legacy(p.data(qnet.ctx))
                                       for p in qnet.net.collect_params().values()}
    int8_params = {p.name: p.data(qnet.ctx) for p in qnet.collect_params().values()}
    fp32_graph = _mxnet.graph_json(qnet.fused_graph)
    int8_graph = _mxnet.graph_json(qnet.quantized_graph)
    int8_names = {n["name"] for n in int8_graph["nodes"]}
    timed = [node for node in GraphView(fp32_graph)
             if pairs.get(node.name, (None, False))[1] and pairs[node.name][0] in int8_names]
    fp32_pieces, fp32_values = _pieces(fp32_graph, [n.name for n in timed], fp32_params,
                                       by_name, qnet.ctx)
    int8_pieces, int8_values = _pieces(int8_graph, [pairs[n.name][0] for n in timed],
                                       int8_params, by_name, qnet.ctx)
    scopes = block_scopes(qnet.net)
    layers = []
    for node in timed:
        fp32_ms, why_fp32 = _piece_time(fp32_pieces[node.name], fp32_params, fp32_values,
                                        qnet.ctx, repeats)
        int8_ms, why_int8 = _piece_time(int8_pieces[pairs[node.name][0]], int8_params,
                                        int8_values, qnet.ctx, repeats)
        note = "; ".join(w for w in (why_fp32 and "fp32 " + why_fp32,
                                     why_int8 and "int8 " + why_int8) if w)
        layers.append(LayerTiming(layer=layer_name(node, scopes), node=node.name,
                                  op=node.main_op, fp32_ms=fp32_ms, int8_ms=int8_ms,
                                  note=note))
    del fp32_values, int8_values
    reference = _mxnet.symbol_block(qnet.fused_graph, qnet.input_names, fp32_params,
                                    qnet.ctx, dtypes=[a.dtype for a in inputs])
    # as the int8 graph runs: without static memory where the first run found it fails
    reference.hybridize(**(_mxnet.static_flags(qnet.quantized_graph)
                           and _mxnet.static_flags(qnet.fused_graph)))
    fp32_total = _whole(lambda: reference(*inputs), repeats)
    int8_total = _whole(lambda: qnet(*inputs), repeats)
    layers.sort(key=lambda t: (t.speedup is None, t.speedup or 0.0))
    _log.info("Timed %d int8 nodes: %d slower than fp32", len(layers),
              sum(1 for t in layers if t.speedup is not None and t.speedup < 1.0))
    return TimingReport(layers, fp32_total_ms=fp32_total, int8_total_ms=int8_total,
                        batch_shapes=[a.shape for a in inputs])


def _whole(call, repeats):
    try:
        return _time_call(lambda: _wait(call()), repeats) * 1e3
    except _mxnet.MXNetError as err:
        raise GraphError("Timing the whole network failed inside MXNet: %s"
                         % _mxnet.first_line(err)) from err
