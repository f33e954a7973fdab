"""Convolutions fused with a residual sum whose operand and output int8 types differ.

MXNet 1.9.1's fused conv + sum writes into the sum operand's buffer in the operand's type:
an int8 operand with a ReLU after the sum (uint8 output) clips everything above half the
calibrated range, and a uint8 operand without an activation after the sum (int8 output)
clips every negative sum to 0. The four residual units below cover the four type mixes;
each must keep the agreement of a plain int8 convolution chain.
"""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.graph.passes import count_ops, fused_sum_dtypes
from gluon_quant.zoo.gluoncv import set_batchnorm_statistics
from conftest import PAIRS_SATURATE, coverage


class ResidualUnit(mx.gluon.HybridBlock):
    """stem conv-bn-relu; shortcut conv-bn[-relu]; body conv-bn-relu, conv-bn; sum[-relu]."""

    def __init__(self, shortcut_relu, sum_relu, **kwargs):
        super().__init__(**kwargs)
        self.sum_relu = sum_relu
        with self.name_scope():
            self.stem = nn.HybridSequential()
            self.stem.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
            self.short = nn.HybridSequential()
            self.short.add(nn.Conv2D(32, 1), nn.BatchNorm())
            if shortcut_relu:
                self.short.add(nn.Activation("relu"))
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                          nn.Conv2D(32, 1), nn.BatchNorm())
            self.head = nn.Conv2D(8, 1)

    def hybrid_forward(self, F, x):
        y = self.stem(x)
        z = self.body(y) + self.short(y)
        if self.sum_relu:
            z = F.Activation(z, act_type="relu")
        return self.head(z)


def sqnr_db(ref, out):
    return float(10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum()))


def _unit(shortcut_relu, sum_relu, cls=None):
    """A residual net (``cls``, default ResidualUnit) with BN statistics and 32 inputs."""
    mx.random.seed(0)
    net = (cls or ResidualUnit)(shortcut_relu, sum_relu)
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).randn(32, 3, 16, 16).astype("float32"))
    set_batchnorm_statistics(net, x)
    return net, x


def _sum_node(qnet):
    nodes = json.loads(qnet.quantized_graph.tojson())["nodes"]
    fused = [n for n in nodes if (n.get("attrs") or {}).get("with_sum") == "true"]
    assert len(fused) == 1
    return fused[0]


# Before the fix: (False, True) gave 21.6 dB, (True, False) 6.3 dB; the others ~32 dB.
@pytest.mark.parametrize("shortcut_relu, sum_relu", [(False, False), (True, False),
                                                      (False, True), (True, True)])
@pytest.mark.parametrize("calibrator", ["minmax", "mse"])
def test_fused_sum_keeps_int8_accuracy(shortcut_relu, sum_relu, calibrator):
    net, x = _unit(shortcut_relu, sum_relu)
    qnet = gq.quantize(net, [x[:16], x[16:]], calibrator=calibrator, progress=False,
                       bias_correction=False)
    assert coverage(qnet.report()) == (5, 5)
    assert sqnr_db(net(x).asnumpy(), qnet(x).asnumpy()) >= 29.0
    node = _sum_node(qnet)
    table = qnet.calibration_table[node["name"][len("quantized_"):] + "_output"]
    hi = float(node["attrs"]["max_calib_range"])
    # int8 operand, uint8 output: 127 steps cover it; so for any uint8 output where int8
    # pairs saturate (the head's input: 7-bit codes)
    if sum_relu and (not shortcut_relu or PAIRS_SATURATE):
        assert hi == pytest.approx(table[1] * 255 / 127, rel=1e-6)
    else:
        assert hi == pytest.approx(table[1], rel=1e-6)
    # Only the uint8-operand, int8-output mix needs the operand re-quantized to int8.
    counts = count_ops(qnet.quantized_graph)
    assert counts["_contrib_quantize_v2"] == (2 if shortcut_relu and not sum_relu else 1)


def test_fused_sum_pass_on_json():
    """Unit level: the pass reads types from inference and rewires the sum inputs."""
    net, x = _unit(True, False)
    qnet = gq.quantize(net, [x[:16], x[16:]], progress=False, bias_correction=False)
    graph = json.loads(qnet.quantized_graph.tojson())
    node = _sum_node(qnet)
    names = [n["name"] for n in graph["nodes"]]
    conv = graph["nodes"][names.index(node["name"])]
    requant = graph["nodes"][conv["inputs"][-5][0]]
    assert requant["op"] == "_contrib_quantize_v2" and requant["attrs"]["out_type"] == "int8"
    assert conv["inputs"][-2][:2] == [conv["inputs"][-5][0], 1]
    lo, hi = float(requant["attrs"]["min_calib_range"]), float(requant["attrs"]["max_calib_range"])
    assert lo == -hi and hi > 0
    # Run again on the fixed graph: every sum now agrees, nothing left to change.
    from gluon_quant import _mxnet
    dtypes = _mxnet.infer_output_dtypes(qnet.quantized_graph, {n: "float32" for n in
                                                               qnet.input_names})
    assert fused_sum_dtypes(graph, dtypes) == ([], [])


class FedByFP32Op(mx.gluon.HybridBlock):
    """The sum operand comes from an fp32 operator (tanh or sigmoid: no int8 kernel), so it
    enters int8 through a quantize node, whose output MXNet names ``X_output0``."""

    def __init__(self, operand_act, sum_relu, **kwargs):
        super().__init__(**kwargs)
        self.operand_act, self.sum_relu = operand_act, sum_relu
        with self.name_scope():
            self.stem = nn.HybridSequential()
            self.stem.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
            self.short = nn.HybridSequential()
            self.short.add(nn.Conv2D(32, 1), nn.BatchNorm(), nn.Activation(operand_act))
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(32, 1), nn.BatchNorm())
            self.head = nn.Conv2D(8, 1)

    def hybrid_forward(self, F, x):
        y = self.stem(x)
        z = self.body(y) + 3.0 * self.short(y)
        if self.sum_relu:
            z = F.Activation(z, act_type="relu")
        return self.head(z)


@pytest.mark.parametrize("operand_act, sum_relu", [("tanh", True), ("sigmoid", False)])
def test_fused_sum_with_quantized_fp32_operand(operand_act, sum_relu):
    net, x = _unit(operand_act, sum_relu, cls=FedByFP32Op)
    qnet = gq.quantize(net, [x[:16], x[16:]], progress=False, bias_correction=False)
    assert _sum_node(qnet)  # the sum is fused into the body's convolution
    assert sqnr_db(net(x).asnumpy(), qnet(x).asnumpy()) >= 29.0


@pytest.mark.parametrize("relu", [False, True])
def test_signed_global_pool_stays_fp32(relu):
    """A global mean of a signed tensor in int8 keeps the input's scale: 18.9 dB; in fp32
    38.6 dB. After a ReLU the int8 pooling is exact enough (41 dB) and stays int8."""
    from gluon_quant.graph.passes import SIGNED_POOL_REASON
    mx.random.seed(1)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(32, 3, padding=1), nn.BatchNorm())
    if relu:
        net.add(nn.Activation("relu"))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).rand(32, 3, 16, 16).astype("float32"))
    set_batchnorm_statistics(net, x)
    qnet = gq.quantize(net, [x[:16], x[16:]], progress=False)
    pools = [(r.quantized, r.reason) for r in qnet.report() if r.op == "Pooling"]
    assert pools == ([(True, "quantized")] if relu else [(False, SIGNED_POOL_REASON)])
    assert coverage(qnet.report()) == (2, 2)
    assert sqnr_db(net(x).asnumpy(), qnet(x).asnumpy()) >= (30.0 if PAIRS_SATURATE else 36.0)


@pytest.mark.parametrize("shortcut_relu, sum_relu", [(True, False), (False, True)])
def test_fixed_sums_survive_export(tmp_path, shortcut_relu, sum_relu):
    """The widened range and the inserted re-quantization are part of the exported graph."""
    net, x = _unit(shortcut_relu, sum_relu)
    qnet = gq.quantize(net, [x[:16], x[16:]], progress=False)
    qnet.export(str(tmp_path / "unit"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "unit"))
    np.testing.assert_array_equal(qnet(x).asnumpy(), loaded(x).asnumpy())
