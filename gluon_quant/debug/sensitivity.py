"""Which layers are worth keeping in fp32: the gain of excluding each one alone.

For each int8 layer, the network is re-quantized with that layer alone added to
``exclude``; the calibration table of the original block is reused, so no new pass over
calibration data is made (a pooling, reshape or concatenation that ran in int8 on its
input's scale takes its input's range when kept fp32: :func:`with_passed_ranges`). The
output of each variant is compared with fp32 on a few batches, and layers are ranked by
how much SQNR (dB) their exclusion recovers.
"""
import functools
import json
import logging
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from .._mxnet import call_net, graph_json, run_block
from .._stage import stage
from ..data import iter_batches
from ..errors import ConfigError, GluonQuantError, GraphError
from ..graph import GraphView, block_scopes, layer_name
from ..graph.inspect import tensor_key
from ..graph.tools import shape_only_nodes
from ..calib.table import CalibrationTable
from ._target import check_target
from .compare import quantized_counterparts
from .metrics import OutputsAccumulator

__all__ = ["LayerSensitivity", "SensitivityReport", "sensitivity", "output_agreement",
           "with_passed_ranges"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerSensitivity:
    """The effect of keeping one layer in fp32.

    Attributes
    ----------
    node : str
        The node of the fused fp32 graph (what ``exclude`` takes).
    sqnr_db : float
        Output SQNR against fp32 with this layer alone in fp32 (dB).
    cosine : float
        Output cosine against fp32 with this layer alone in fp32.
    gain_db : float
        ``sqnr_db`` minus the output SQNR with every layer in int8.
    layer : str
        The Gluon layer the node computes (its block's name, as in ``report()``), or the
        node's name where no block of the net owns it.
    """

    node: str
    sqnr_db: float
    cosine: float
    gain_db: float
    layer: str = ""


class SensitivityReport(tuple):
    """:class:`LayerSensitivity` entries, largest gain first.

    Attributes
    ----------
    baseline_sqnr_db, baseline_cosine : float
        Output agreement of the block as given.
    skipped : tuple of (str, str)
        Layers that could not be tried alone and why.
    """

    def __new__(cls, entries, *, baseline_sqnr_db, baseline_cosine, skipped=()):
        self = super().__new__(cls, sorted(entries, key=lambda e: (-e.gain_db, e.node)))
        self.baseline_sqnr_db = baseline_sqnr_db
        self.baseline_cosine = baseline_cosine
        self.skipped = tuple(skipped)
        return self

    @property
    def nodes(self):
        """Node names, most sensitive first."""
        return [e.node for e in self]

    def to_dict(self):
        """A JSON-safe dict."""
        return {"baseline_sqnr_db": self.baseline_sqnr_db,
                "baseline_cosine": self.baseline_cosine,
                "layers": [asdict(e) for e in self], "skipped": [list(s) for s in self.skipped]}

    def to_json(self, **kwargs):
        """The report as JSON text."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        width = max([32] + [len(e.layer or e.node) for e in self])
        lines = ["sensitivity: all int8 gives output SQNR %.1f dB, cosine %.5f"
                 % (self.baseline_sqnr_db, self.baseline_cosine),
                 "%-*s %9s %9s %9s  %s" % (width, "layer kept in fp32 (best first)", "gain dB",
                                          "SQNR dB", "cosine", "fused node")]
        lines += ["%-*s %9.2f %9.1f %9.5f  %s" % (width, e.layer or e.node, e.gain_db,
                                                  e.sqnr_db, e.cosine, e.node) for e in self]
        lines += ["%-40s skipped: %s" % (node[-40:], why) for node, why in self.skipped]
        return "\n".join(lines)

    def __repr__(self):
        return "<SensitivityReport %d layers>" % len(self)


def output_agreement(qnet, inputs, references):
    """Output SQNR (dB) and cosine of ``qnet`` against reference fp32 outputs.

    Parameters
    ----------
    qnet : QuantizedHybridBlock
    inputs : list of list of NDArray
        Converted batches (``qnet.convert_batch(batch)``).
    references : list of list of numpy.ndarray
        The fp32 net's outputs on each batch (the worst output sets the agreement).

    Returns
    -------
    (float, float)
    """
    acc = OutputsAccumulator()
    for batch_inputs, refs in zip(inputs, references):
        outs = run_block(qnet, batch_inputs, "int8 forward pass")
        acc.add(refs, [out.asnumpy() for out in outs])
    return acc.sqnr, acc.cosine


def reference_outputs(qnet, batches, num_batches):
    """Converted inputs and fp32 outputs (every one) of up to ``num_batches`` batches."""
    inputs = [qnet.convert_batch(b)
              for b in iter_batches(batches, num_batches, what="batches")]
    if not inputs:
        raise ConfigError("The doctor got no batch: pass a non-empty iterable of batches.")
    fp32 = functools.partial(call_net, qnet.net, np_mode=qnet.fused.np_mode)
    refs = [[out.asnumpy() for out in run_block(
        lambda *args: fp32(args), qnet.fused.inputs.regroup(x), "fp32 forward pass")]
            for x in inputs]
    return inputs, refs


#: Operators whose output lies within the range of their inputs (a pooling, a reshape, a
#: concatenation: the union of its inputs' ranges).
RANGE_KEEPING_OPS = frozenset(("Pooling", "Flatten", "Reshape", "transpose", "expand_dims",
                               "squeeze", "slice", "slice_axis", "Concat", "_copy"))


def with_passed_ranges(table, graph):
    """``table`` with a range for each output it lacks of a :data:`RANGE_KEEPING_OPS` node
    whose inputs it has: the union of theirs.

    An int8 max pooling, flatten or concatenation is given no range of its own at
    calibration (its output keeps its input's scale). Kept fp32, it needs one for the
    int8 layer after it, and the table reused for every variant has none: the variant's
    range is then its input's, wider than a calibrated one could be, never narrower.
    """
    ranges, nodes = dict(table.items()), graph["nodes"]
    for node in nodes:
        key = tensor_key(node, 0)
        if node["op"] not in RANGE_KEEPING_OPS or key in ranges or not node["inputs"]:
            continue
        found = [ranges.get(tensor_key(nodes[e[0]], e[1])) for e in node["inputs"]]
        if found and None not in found:
            ranges[key] = (min(r[0] for r in found), max(r[1] for r in found))
    if len(ranges) == len(table):
        return table
    return CalibrationTable(ranges, method=table.method, fingerprint=table.fingerprint,
                            meta=table.meta)


@stage
def sensitivity(qnet, batches, *, num_batches=2, candidates: Optional[Sequence[str]] = None):
    """Rank int8 layers by how much keeping each one alone in fp32 recovers the output.

    Parameters
    ----------
    qnet : QuantizedHybridBlock
        A finalized quantized block; its calibration table is reused (no new data pass).
    batches : iterable of batches
        Batches to measure the output on.
    num_batches : int, default 2
        Use at most this many batches.
    candidates : list of str, optional
        Fused node names to try (default: every int8 layer with a weight or a calibrated
        output).

    Returns
    -------
    SensitivityReport
        Largest SQNR gain first.
    """
    check_target(qnet, "sensitivity")
    table = qnet.calibration_table
    if table is None or qnet.quantized_graph is None:
        raise GraphError("sensitivity() needs a finalized quantized block: call "
                         "gluon_quant.quantize() (or calibrate() and finalize()) first.")
    inputs, refs = reference_outputs(qnet, batches, num_batches)
    base_db, base_cos = output_agreement(qnet, inputs, refs)
    graph = graph_json(qnet.fused_graph)
    if candidates is None:      # not a node whose values nothing reads (only its shape)
        unread = shape_only_nodes(graph)
        candidates = [node for node, (_, quantized) in quantized_counterparts(qnet).items()
                      if quantized and node not in qnet.exclude and node not in unread]
    scopes, fused = block_scopes(qnet.net), GraphView(graph).by_name
    widened = with_passed_ranges(table, graph)
    entries, skipped = [], []
    for node in candidates:
        variant = qnet.clone(exclude=list(qnet.exclude) + [node], progress=False)
        try:
            variant.quantize_graph()
            variant.finalize(widened)
        except GluonQuantError as err:
            skipped.append((node, str(err).splitlines()[0]))
            continue
        db, cos = output_agreement(variant, inputs, refs)
        layer = layer_name(fused[node], scopes) if node in fused else node
        entries.append(LayerSensitivity(node=node, sqnr_db=db, cosine=cos, gain_db=db - base_db,
                                        layer=layer))
        _log.debug("sensitivity: %s in fp32 -> %.2f dB (%+.2f)", node, db, db - base_db)
    return SensitivityReport(entries, baseline_sqnr_db=base_db, baseline_cosine=base_cos,
                             skipped=skipped)
