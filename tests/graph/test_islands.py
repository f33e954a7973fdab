"""graph.islands: int8 regions too small to be faster than fp32 stay fp32, with the reason.

Measured on this project's machine (EPYC Zen 5; data in backends.ONEDNN): one dense layer
alone in int8 between fp32 layers runs at 0.87-0.98x of fp32 below about 1M multiply-adds
per call and 1.22-2.30x above; chains of dense layers gain sooner; an int8 pooling or flatten
between fp32 layers has nothing to gain.
"""
import mxnet as mx
import numpy as np
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.graph.islands import int8_regions, region_work
from conftest import PAIRS_SATURATE, SIGNED_DENSE_REASON

RS = np.random.RandomState(7)


def _agreement(net, qnet, x):
    a, b = net(x).asnumpy().ravel(), qnet(x).asnumpy().ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _small_net():
    """int8 conv -> fp32 LayerNorm -> int8 pool -> fp32 tanh -> conv, flatten, dense."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, in_channels=3), nn.LayerNorm(axis=1), nn.MaxPool2D(),
            nn.Activation("tanh"), nn.Conv2D(8, 1), nn.Activation("tanh"), nn.Flatten(),
            nn.Dense(10))
    net.initialize(mx.init.Xavier())
    return net


def test_regions_are_found_and_their_work_counted(vnni_plan):
    net = _small_net()
    x = mx.nd.array(RS.rand(4, 3, 16, 16).astype("float32"))
    qnet = gq.quantize(net, [x], progress=False)           # the rule is off: all int8
    graph = _mxnet.graph_json(qnet.plan.symbol)
    names = [[graph["nodes"][i]["name"] for i in region] for region in int8_regions(graph)]
    assert [[n.split("_")[-2] if "mkldnn" in n else n.split("_")[1].rstrip("0123456789") for n in region]
            for region in names] == [["conv"], ["pool"], ["conv"], ["flatten", "connected"]]
    shapes = _mxnet.infer_graph_shapes(graph, {"data": x.shape})
    work = [region_work(graph, r, shapes) for r in int8_regions(graph)]
    # 4 x 8 x 14 x 14 outputs x 27; none; 4 x 8 x 7 x 7 x 8; 4 x 10 x 392
    assert work == [{"Convolution": 169344}, {}, {"Convolution": 12544},
                    {"FullyConnected": 15680}]


def test_small_regions_stay_fp32_with_the_reason_and_the_same_answer(int8_regions):
    net = _small_net()
    x = mx.nd.array(RS.rand(4, 3, 16, 16).astype("float32"))
    qnet = gq.quantize(net, [x], progress=False)
    rows = {r.op: r for r in qnet.report()}      # one layer per operator but convolutions
    assert not rows["Pooling"].quantized
    assert "an int8 region without multiply-adds between fp32 layers" in rows["Pooling"].reason
    for op in ("Flatten", "FullyConnected"):
        assert not rows[op].quantized
        assert ("doing 15680 multiply-adds per call at the calibration batch size"
                in rows[op].reason) or (PAIRS_SATURATE and (
                    SIGNED_DENSE_REASON in rows[op].reason if op == "FullyConnected" else
                    "without multiply-adds" in rows[op].reason)), rows[op].reason
    # convolutions have no measured limit (min_island_macs 0): they stay int8
    assert [r.quantized for r in qnet.report() if r.op == "Convolution"] == [True, True]
    assert _agreement(net, qnet, x) > 0.999
    # the decision rests on the calibration shapes stored with the table: rebuilt from the
    # table alone, the same layers stay fp32
    assert qnet.calibration_table.meta["input_shapes"] == [[4, 3, 16, 16]]
    again = gq.quantize(net, calib_table=qnet.calibration_table, progress=False)
    assert [r.quantized for r in again.report()] == [r.quantized for r in qnet.report()]


def test_a_dense_region_large_enough_runs_int8(int8_regions):
    def mlp(rows, width):
        net = nn.HybridSequential()
        # the ReLU makes the dense layer's input non-negative: int8 on any CPU (saturation)
        net.add(nn.LayerNorm(in_channels=width), nn.Activation("relu"),
                nn.Dense(width, in_units=width), nn.Activation("tanh"))
        net.initialize(mx.init.Xavier())
        return net, mx.nd.array(RS.randn(rows, width).astype("float32"))

    net, x = mlp(8, 64)                   # 8 x 64 x 64 = 32768 multiply-adds: fp32
    dense = [r for r in gq.quantize(net, [x], progress=False).report()
             if r.op == "FullyConnected"]
    assert len(dense) == 1 and not dense[0].quantized
    assert "32768 multiply-adds per call" in dense[0].reason
    net, x = mlp(256, 128)                # 256 x 128 x 128 = 4.2M: int8
    qnet = gq.quantize(net, [x], progress=False)
    assert [r.quantized for r in qnet.report() if r.op == "FullyConnected"] == [True]
    assert _agreement(net, qnet, x) > 0.999
    chain = nn.HybridSequential()         # a chain pays its conversions once: int8
    chain.add(nn.LayerNorm(in_channels=64), nn.Activation("relu"),
              nn.Dense(64, in_units=64, activation="relu"),
              nn.Dense(64, in_units=64), nn.Activation("tanh"))
    chain.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.randn(8, 64).astype("float32"))
    qnet = gq.quantize(chain, [x], progress=False)
    assert [r.quantized for r in qnet.report() if r.op == "FullyConnected"] == [True, True]


def test_a_net_left_all_fp32_still_builds_with_deferred_shapes(int8_regions):
    net = nn.HybridSequential()
    net.add(nn.Dense(16), nn.LayerNorm(), nn.Dense(4))      # deferred: in_units unknown
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.randn(2, 8).astype("float32"))
    qnet = gq.quantize(net, [x], progress=False)
    assert not any(r.quantized for r in qnet.report())
    timed = qnet.report(timing=x)         # nothing int8 to time: the whole-graph times
    assert len(timed.totals) == 2 and "time per call, whole graph" in str(timed)
    np.testing.assert_allclose(qnet(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
