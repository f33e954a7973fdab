"""How much agreement 8-bit activations allow at best, and how close int8 gets to it.

The *floor* is the fused fp32 network with every calibrated tensor rounded onto its
finest 8-bit grid (uint8 over ``[0, max]`` for non-negative ranges, int8 over
``[-m, m]`` otherwise) and everything else, weights included, kept in fp32. No int8
network with those ranges can agree with fp32 better than that, so:

* int8 close to the floor: the remaining error is the price of 8-bit activations. Better
  ranges (another calibrator, more calibration data) or keeping layers in fp32
  (:func:`~gluon_quant.debug.sensitivity`) are the only levers;
* int8 far below the floor: something else loses precision (a kernel, a graph pattern,
  weight quantization). :func:`~gluon_quant.debug.compare` shows where.

Deep networks amplify small perturbations; random-weight BatchNorm networks do so strongly
(their floor can sit well below 0.99 logit cosine), trained networks much less.
"""
import json
from dataclasses import asdict, dataclass

from .. import _mxnet
from .._stage import stage
from ..data import iter_batches
from ..errors import GraphError
from ..graph.passes import calib_key, insert_fake_quant, tensor_key
from ..graph.saturation import WIDEN
from ._target import check_target
from .metrics import OutputsAccumulator

__all__ = ["FloorReport", "activation_floor", "fake_quant_block", "fake_quant_graph", "CLOSE_DB",
           "CLOSE_FACTOR", "POOR_FLOOR_DB"]

#: int8 within this many dB of the floor's output SQNR counts as at the floor...
CLOSE_DB = 3.0
#: ... if it also loses at most this factor times the floor's ``1 - cosine``.
CLOSE_FACTOR = 1.5
#: A floor under this output SQNR (dB) means the ranges themselves lose the signal.
POOR_FLOOR_DB = 10.0


@dataclass(frozen=True)
class FloorReport:
    """fp32 agreement of the int8 network and of the 8-bit activation floor.

    Attributes
    ----------
    int8_sqnr_db, int8_cosine : float
        The int8 network's outputs against fp32 (SQNR in dB, cosine): the worst output.
    floor_sqnr_db, floor_cosine : float
        The same for the fp32 network with every calibrated activation rounded to 8 bits.
    tensors : int
        Number of activations rounded in the floor network.
    batches : int
        Number of batches compared.
    """

    int8_sqnr_db: float
    int8_cosine: float
    floor_sqnr_db: float
    floor_cosine: float
    tensors: int
    batches: int

    @property
    def gap_db(self):
        """SQNR the int8 network loses beyond the floor (dB; near 0 is as good as it gets)."""
        return self.floor_sqnr_db - self.int8_sqnr_db

    @property
    def close(self):
        """Whether int8 is as close to fp32 as the floor, within measurement noise.

        Within :data:`CLOSE_DB` of the floor's SQNR, and losing at most
        :data:`CLOSE_FACTOR` times the floor's ``1 - cosine`` (plus 0.001).
        """
        return (self.gap_db < CLOSE_DB and
                1.0 - self.int8_cosine <= CLOSE_FACTOR * (1.0 - self.floor_cosine) + 1e-3)

    def verdict(self):
        """What the numbers mean, in one sentence."""
        if self.floor_sqnr_db < POOR_FLOOR_DB:
            return ("even the floor is far from fp32: the calibrated ranges lose the signal "
                    "(an outlier or a poor calibrator: see debug.run_checks and "
                    "plot.plot_calibration), or the network amplifies small errors (a "
                    "log or a division after an int8 layer; debug.sensitivity ranks the "
                    "layers by what keeping each in fp32 recovers)")
        if self.close:
            return ("int8 is close to the best 8-bit activations allow%s" % (
                "; the floor itself is below 0.99 cosine: the network amplifies small "
                "errors, keep its most sensitive layers in fp32 (debug.sensitivity) if "
                "that is too much" if self.floor_cosine < 0.99 else ""))
        return ("int8 loses %.1f dB (cosine %.4f vs %.4f) beyond the floor: look for the "
                "layer that adds it with debug.compare"
                % (self.gap_db, self.int8_cosine, self.floor_cosine))

    def to_dict(self):
        """A JSON-safe dict (``gap_db``, ``close`` and the verdict included)."""
        return dict(asdict(self), gap_db=self.gap_db, close=self.close,
                    verdict=self.verdict())

    def to_json(self, **kwargs):
        """The report as JSON text."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        return ("on %d batch(es), against fp32:\n"
                "  int8 network            SQNR %6.1f dB, cosine %.5f\n"
                "  8-bit activation floor  SQNR %6.1f dB, cosine %.5f (%d tensors rounded)\n"
                "%s" % (self.batches, self.int8_sqnr_db, self.int8_cosine, self.floor_sqnr_db,
                        self.floor_cosine, self.tensors, self.verdict()))


def fake_quant_graph(qnet):
    """The fused fp32 graph of ``qnet`` with every calibrated tensor rounded to 8 bits.

    Returns
    -------
    sym : mxnet.symbol.Symbol
    rounded : dict of str to str
        Each rounded node -> the node that gives its rounded value (see
        :func:`~gluon_quant.graph.passes.insert_fake_quant`).
    """
    table = qnet.calibration_table
    if table is None or qnet.fused_graph is None:
        raise GraphError("The network is not calibrated yet: call calibrate() (or use "
                         "gluon_quant.quantize) before asking for its activation floor.")
    graph = _mxnet.graph_json(qnet.fused_graph)
    ranges = {k: v for k, v in table.items() if k not in _float_outputs(qnet)}
    rounded = insert_fake_quant(graph, _runtime_ranges(qnet, ranges))
    return _mxnet.load_graph(graph), rounded


def _runtime_ranges(qnet, ranges):
    """``ranges`` with the 7-bit codes of the final graph where the CPU's int8 pairs
    saturate (:mod:`gluon_quant.graph.saturation`): a widened range as it is, a tensor a
    layer reads through a 7-bit copy widened by 255/127. Unchanged elsewhere: the floor
    is then the best this CPU's int8 kernels allow."""
    if qnet.quantized_graph is None:
        return ranges
    out = dict(ranges)
    nodes = _mxnet.graph_json(qnet.quantized_graph)["nodes"]
    for node in nodes:
        attrs = node.get("attrs") or {}
        if node["op"] == "_contrib_quantize_v2" and node["name"].endswith("_7bit"):
            source = node["inputs"][0][0]
            if nodes[source]["op"] == "_plus_scalar":
                source = nodes[source]["inputs"][0][0]
            entry = nodes[source]["inputs"][0]          # the dequantize's input
            key = calib_key(nodes[entry[0]], nodes) if "max_calib_range" in (
                nodes[entry[0]].get("attrs") or {}) else tensor_key(nodes[entry[0]], entry[1])
            if key in out:
                lo, hi = out[key]
                out[key] = (lo * WIDEN, hi * WIDEN)
        elif "max_calib_range" in attrs:
            key = calib_key(node, nodes)
            if key in out and float(attrs["max_calib_range"]) > out[key][1] * (1 + 1e-6) > 0:
                out[key] = (out[key][0], float(attrs["max_calib_range"]))
    return out


def _float_outputs(qnet):
    """Table keys of tensors the int8 graph never rounds: the outputs of quantized layers
    that emit float (``enable_float_output``, e.g. the logits). Their ranges are in the
    table (the layer's requantization is computed from them) but rounding them in the
    floor would make the floor worse than the int8 network itself."""
    if qnet.quantized_graph is None:
        return set()
    found = set()
    for node in _mxnet.graph_json(qnet.quantized_graph)["nodes"]:
        if str((node.get("attrs") or {}).get("enable_float_output", "")).lower() in (
                "true", "1"):
            name = node["name"]
            found.add((name[len("quantized_"):] if name.startswith("quantized_") else name)
                      + "_output")
    return found


def fake_quant_block(qnet):
    """The fp32 network with every calibrated activation rounded onto its 8-bit grid.

    Parameters
    ----------
    qnet : QuantizedHybridBlock
        A calibrated block.

    Returns
    -------
    block : mxnet.gluon.SymbolBlock
        Takes the same inputs as ``qnet`` (hybridized, fp32 weights).
    tensors : int
        Number of rounded activations.
    """
    check_target(qnet, "fake_quant_block")
    sym, rounded = fake_quant_graph(qnet)
    params = qnet.fp32_params or {p.name: _mxnet.as_legacy(p.data(qnet.ctx))
                                  for p in qnet.net.collect_params().values()}
    block = _mxnet.symbol_block(sym, qnet.input_names, params, qnet.ctx)
    block.hybridize(**_mxnet.static_flags(sym))
    return block, len(rounded)


@stage
def activation_floor(qnet, batches, *, num_batches=4):
    """Compare the int8 network and the 8-bit activation floor with fp32.

    Parameters
    ----------
    qnet : QuantizedHybridBlock
        A finalized quantized block (e.g. from :func:`gluon_quant.quantize`).
    batches : iterable of batches
        In any form the calibration accepted; use data the ranges were not computed on.
    num_batches : int, default 4
        Compare on at most this many batches.

    Returns
    -------
    FloorReport

    Examples
    --------
    >>> print(gluon_quant.debug.activation_floor(qnet, validation_batches))
    """
    check_target(qnet, "activation_floor")
    floor_block, tensors = fake_quant_block(qnet)
    int8_acc, floor_acc = OutputsAccumulator(), OutputsAccumulator()
    seen = 0
    for batch in iter_batches(batches, num_batches, what="batches"):
        inputs = qnet.convert_batch(batch)
        ref, out, low = ([a.asnumpy() for a in _mxnet.run_block(block, args, what)]
                         for block, args, what in (
                             (lambda *args: _mxnet.call_net(qnet.net, args, qnet.fused.np_mode),
                              qnet.fused.inputs.regroup(inputs), "fp32 forward pass"),
                             (qnet, inputs, "int8 forward pass"),
                             (floor_block, inputs, "floor forward pass")))
        int8_acc.add(ref, out)      # every output counts: the worst one is reported
        floor_acc.add(ref, low)
        seen += 1
    if seen == 0:
        raise GraphError("activation_floor() got no batch: pass a non-empty iterable of "
                         "batches.")
    return FloorReport(int8_sqnr_db=int8_acc.sqnr, int8_cosine=int8_acc.cosine,
                       floor_sqnr_db=floor_acc.sqnr, floor_cosine=floor_acc.cosine,
                       tensors=tensors, batches=seen)

