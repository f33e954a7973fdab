"""gluon_quant.debug.activation_floor: int8 against the best 8-bit activations allow."""
import json
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.debug import FloorReport, activation_floor, fake_quant_block
from gluon_quant.errors import GraphError
from gluon_quant.graph.passes import count_ops, insert_fake_quant

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "graph"))
from test_fused_sum import _unit  # noqa: E402  (the residual unit with a signed shortcut)


def test_healthy_cnn_is_at_its_floor(trained_cnn):
    qnet = gq.quantize(trained_cnn["net"], trained_cnn["calib"], progress=False)
    report = activation_floor(qnet, trained_cnn["calib"], num_batches=2)
    assert isinstance(report, FloorReport) and report.batches == 2
    # data, two conv+bn+relu outputs, the hidden dense output; not the logits, which the
    # int8 graph emits in float (rounding them made the floor worse than int8 itself)
    assert report.tensors == len(qnet.calibration_table) - 1
    assert report.floor_cosine > 0.999 and report.int8_cosine > 0.995
    assert abs(report.gap_db) < 3.0 and report.close
    assert str(report).endswith("int8 is close to the best 8-bit activations allow")
    state = json.loads(report.to_json())
    assert state["gap_db"] == pytest.approx(report.gap_db) and state["close"] is True


def test_floor_exposes_a_kernel_that_loses_precision(disable_pass):
    """With the fused-sum fix switched off, int8 falls far below its floor."""
    net, x = _unit(True, False)   # uint8 operand, int8 output: negative sums clipped
    batches = [x[:16], x[16:]]
    good = activation_floor(gq.quantize(net, batches, progress=False), [x])
    disable_pass("fused_sum_dtypes")
    broken = activation_floor(gq.quantize(net, batches, progress=False), [x])
    assert good.gap_db < 3.0 and good.close
    assert broken.gap_db > 15.0 and not broken.close
    assert broken.floor_sqnr_db == pytest.approx(good.floor_sqnr_db, abs=1e-6)
    assert "beyond the floor: look for the layer" in str(broken)


def test_poor_floor_blames_the_ranges():
    report = FloorReport(int8_sqnr_db=-4.5, int8_cosine=0.45, floor_sqnr_db=-6.5,
                         floor_cosine=0.87, tensors=4, batches=4)
    assert "even the floor is far from fp32" in report.verdict()
    near = FloorReport(int8_sqnr_db=17.0, int8_cosine=0.986, floor_sqnr_db=18.0,
                       floor_cosine=0.988, tensors=50, batches=1)
    assert near.close and "network amplifies small errors" in near.verdict()


def test_fake_quant_rounds_each_ranged_tensor_to_its_grid():
    data = mx.sym.var("data")
    sym = mx.sym.relu(mx.sym.FullyConnected(data, num_hidden=4, name="fc"), name="act")
    graph = _mxnet.graph_json(sym)
    rounded = insert_fake_quant(graph, {"data": (-2.0, 2.0), "act_output": (0.0, 1.0)})
    assert rounded == {"data": "data_0_fakedequant", "act": "act_0_fakedequant"}
    fq = _mxnet.load_graph(graph)
    assert count_ops(fq) == {"_contrib_quantize_v2": 2, "_contrib_dequantize": 2,
                             "_contrib_requantize": 0}
    x = mx.nd.array(np.linspace(-3, 3, 12).reshape(3, 4))
    w, b = mx.nd.array(np.eye(4)), mx.nd.zeros(4)
    out = fq.eval(data=x, fc_weight=w, fc_bias=b)[0].asnumpy()
    exact = np.clip(x.asnumpy(), 0, 1)     # identity weights: relu, clipped by the range
    error = np.abs(out - exact)
    # within half an int8 step (2/127) of the input plus one uint8 step (1/255) of the output
    assert error.max() <= 1 / 127 + 1 / 255 + 1e-6
    assert error.max() > 1e-4               # and really rounded
    assert out.max() <= 1.0 + 1e-6 and out.min() >= 0.0


def test_floor_needs_a_calibrated_block_and_batches(tiny_cnn, tiny_batches):
    block = gq.QuantizedHybridBlock(tiny_cnn)
    with pytest.raises(GraphError, match="not calibrated"):
        fake_quant_block(block)
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    with pytest.raises(GraphError, match="no batch"):
        activation_floor(qnet, [])


def test_compare_with_floor_points_at_the_layer_that_loses_precision(disable_pass):
    """With the fused-sum fix off, the sum node is where int8 departs from the floor."""
    from gluon_quant.debug import compare
    net, x = _unit(True, False)
    batches = [x[:16], x[16:]]
    disable_pass("fused_sum_dtypes")
    qnet = gq.quantize(net, batches, progress=False)
    report = compare(qnet, [x], num_batches=1, floor=True)
    worst = report.by_floor_gap()[0]
    assert worst.node.startswith("sg_mkldnn_conv_bn_add")  # the fused conv + sum
    assert worst.floor_gap_added_db > 15.0
    others = [r.floor_gap_added_db for r in report if r.node != worst.node]
    assert max(others) < 3.0
    assert "floor dB" in str(report) and "gap+ dB" in str(report)
    plain = compare(qnet, [x], num_batches=1)
    assert plain[0].floor_sqnr_db is None and "floor dB" not in str(plain)
    with pytest.raises(GraphError, match="floor=True"):
        plain.by_floor_gap()
