"""gluon_quant.debug.compare: per-layer fp32 vs int8 agreement, worst first."""
import json

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant.debug import compare
from gluon_quant.debug.compare import (EXACT_DB, ComparisonReport, LayerError, cosine,
                                       sqnr_db)
from gluon_quant.errors import GraphError
from gluon_quant.graph.tools import shape_only_nodes


def test_sqnr_and_cosine_maths():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == EXACT_DB
    assert cosine([1, 0], [0, 1]) == 0.0
    assert cosine([1, 2], [2, 4]) == pytest.approx(1.0)


def test_fragile_layer_adds_the_most_error(fragile_mlp):
    qnet = gq.quantize(fragile_mlp["net"], fragile_mlp["calib"], calibrator="minmax",
                       progress=False)
    report = compare(qnet, [fragile_mlp["test"]], num_batches=1)
    layers = {r.layer: r for r in report}
    worst_added = report.by_added_error()[0]
    assert worst_added.layer == "mlp_fragile"
    # Seven of eight inputs are rounded to 0: the layer's output is far from fp32.
    assert layers["mlp_fragile"].sqnr_db < 10.0
    assert list(report) == sorted(report, key=lambda r: r.sqnr_db)  # worst first
    assert report.output_cosine < 0.99
    assert report.batches == 1
    assert "mlp_fragile" in str(report)
    assert json.loads(report.to_json())["layers"][0]["node"] == report[0].node


def test_a_layer_whose_inputs_are_exact_added_all_of_its_error():
    """Not 200 dB (the cap of an exact SQNR) minus its SQNR: "added dB" 161.5 showed for the
    first convolution of a net whose input passes an exact (fp32) expand_dims."""
    layers = [LayerError("lift", "expand0", "expand_dims", False, EXACT_DB, 1.0, None),
              LayerError("conv0", "conv0", "Convolution", True, 38.5, 0.9999, EXACT_DB - 38.5),
              LayerError("conv1", "conv1", "Convolution", True, 35.4, 0.9998, 3.1)]
    text = str(ComparisonReport(layers, output_sqnr_db=35.4, output_cosine=0.9998, batches=1))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["conv0"][-1] == "all" and rows["conv1"][-1] == "3.1"
    assert len(rows["lift"]) == 5       # no input tracked: nothing shown


def test_healthy_cnn_agrees_layer_by_layer(trained_cnn):
    qnet = gq.quantize(trained_cnn["net"], trained_cnn["calib"], progress=False)
    report = compare(qnet, trained_cnn["calib"], num_batches=2)
    assert report.output_cosine > 0.995
    assert all(r.cosine > 0.98 for r in report if r.quantized)
    # Every calibrated conv/dense layer is found in both graphs.
    assert sum(r.op in ("Convolution", "FullyConnected") for r in report) == 4
    ref = trained_cnn["net"](mx.nd.array(trained_cnn["calib"][0])).asnumpy()
    out = qnet(mx.nd.array(trained_cnn["calib"][0])).asnumpy()
    assert report.output_cosine == pytest.approx(
        cosine(np.concatenate([ref]), np.concatenate([out])), abs=0.01)


def test_compare_needs_a_finalized_block(tiny_cnn):
    qnet = gq.QuantizedHybridBlock(tiny_cnn)
    with pytest.raises(GraphError, match="not quantized yet"):
        compare(qnet, [np.zeros((1, 1, 28, 28), "float32")])


class _Consensus(mx.gluon.HybridBlock):
    """A video net's segmental consensus, as GluonCV's I3D heads write it: features of
    ``(N, segments, C)`` averaged over the segments (axis 1), then a classifier."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = mx.gluon.nn.Dense(32, activation="relu", flatten=False)
        self.head = mx.gluon.nn.Dense(5)

    def hybrid_forward(self, F, x):
        return self.head(F.mean(self.embed(x), axis=1))


def test_nodes_whose_shape_alone_is_read_are_not_compared():
    """The mean over axis 1 runs as a deconvolution by a kernel of ones cut from a slice of
    the data (``<mean>_row``, ``<mean>_column``): one value, and its rounding changes
    nothing. The doctor ranked that slice first, 18 dB beyond the floor, on GluonCV's
    i3d_inceptionv1_kinetics400."""
    mx.random.seed(3)
    net = _Consensus()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.random.normal(shape=(8, 4, 16)) for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    unread = shape_only_nodes(json.loads(qnet.fused_graph.tojson()))
    mean = [n for n in unread if n.endswith("_column")]
    assert len(mean) == 1 and mean[0].replace("_column", "_row") in unread
    report = compare(qnet, batches, floor=True)
    assert not {r.node for r in report} & unread
    assert {"mean" in r.node for r in report} == {True, False}   # the mean itself stays
    assert report.output_cosine > 0.999


def test_shape_only_nodes_follow_chains_to_shape_readers():
    x = mx.sym.var("x")
    row = mx.sym.slice_axis(x, axis=0, begin=0, end=1, name="row")
    flat = mx.sym.reshape(row, shape=(-1,), name="flat")
    ones = mx.sym.ones_like(flat, name="ones")
    twice = mx.sym.relu(x, name="twice")
    shaped = mx.sym.reshape_like(mx.sym.sum(twice, name="total") + ones.sum(),
                                 mx.sym.slice_axis(x, axis=1, begin=0, end=1, name="like"),
                                 name="out")
    graph = json.loads(shaped.tojson())
    assert shape_only_nodes(graph) == {"row", "flat", "like"}
