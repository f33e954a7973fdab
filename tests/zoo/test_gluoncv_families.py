"""Every GluonCV task family in one call: detection (SSD, YOLOv3, Faster R-CNN, CenterNet),
segmentation (FCN, PSPNet, DeepLab), pose (simple_pose) and video (R(2+1)D, I3D).

Networks have random weights with BatchNorm statistics set from crops of the offline
sample photos (SymbolBlock feature extractors included), small inputs to keep the tests
fast; detectors are compared row by row with NMS off (see
``test_gluoncv_models.detection_agreement``).
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.graph.passes import COMPARED_POOL_REASON
from gluon_quant.zoo.gluoncv import set_batchnorm_statistics

gluoncv_zoo = pytest.importorskip("gluoncv.model_zoo")


def _conv_bn_net(prefix):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
    return net


def test_batchnorm_statistics_reach_inside_symbol_blocks():
    """A SymbolBlock gets exactly the statistics its Gluon twin gets from forward hooks."""
    x = mx.nd.array(np.random.RandomState(0).randn(6, 3, 10, 10).astype("float32"))
    mx.random.seed(0)
    plain = _conv_bn_net("twin_")
    plain.initialize(mx.init.Xavier())
    plain(x)
    data = mx.sym.var("data")
    graph = nn.SymbolBlock(plain(data), data, params=plain.collect_params())
    outer = nn.HybridSequential()   # a Gluon net holding a SymbolBlock, as GluonCV's SSD
    outer.add(graph, nn.Conv2D(4, 1), nn.BatchNorm())
    outer[1:].initialize(mx.init.Xavier())
    reference = {k: v.data().copy() for k, v in plain.collect_params().items()}
    assert set_batchnorm_statistics(outer, x) == 3
    from_graph = {k: v.data().copy() for k, v in graph.collect_params().items()}
    for bn in (plain[1], plain[4]):     # reset, then the plain net's own hooks
        bn.running_mean.set_data(mx.nd.zeros(8))
        bn.running_var.set_data(mx.nd.ones(8))
    assert set_batchnorm_statistics(plain, x) == 2
    for name, value in plain.collect_params().items():
        if "running" in name:
            assert not np.allclose(value.data().asnumpy(), reference[name].asnumpy())
            np.testing.assert_allclose(from_graph[name].asnumpy(), value.data().asnumpy(),
                                       rtol=1e-5, atol=1e-6)
    # The outer BatchNorm saw the SymbolBlock's output with the new statistics.
    y = outer[1](graph(x))
    np.testing.assert_allclose(outer[2].running_mean.data().asnumpy(),
                               y.mean(axis=(0, 2, 3)).asnumpy(), rtol=1e-4, atol=1e-5)


class _PeakPicker(mx.gluon.HybridBlock):
    """A heatmap head and CenterNet's peak picking: keep = maxpool(h) == h."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(8, 3, padding=1), nn.Activation("relu"), nn.Conv2D(4, 1))
            self.nms = nn.MaxPool2D(3, 1, 1)

    def hybrid_forward(self, F, x):
        heat = F.sigmoid(self.body(x))
        return F.broadcast_equal(self.nms(heat), heat) * heat


def _peaks(disable=None):
    mx.random.seed(0)
    net = _PeakPicker()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randn(4, 3, 12, 12).astype("float32") for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    x = mx.nd.array(batches[1])
    ref, out = net(x).asnumpy(), qnet(x).asnumpy()
    return qnet, ref > 0, out > 0


def test_max_pool_compared_with_its_input_stays_fp32(disable_pass):
    qnet, peaks, kept = _peaks()
    pools = [r for r in qnet.report() if r.op == "Pooling"]
    assert [(r.quantized, r.reason) for r in pools] == [(False, COMPARED_POOL_REASON)]
    assert peaks.sum() > 20 and (peaks == kept).mean() >= 0.99
    disable_pass("compared_pools")      # the int8 pooling finds (almost) no peak
    _, peaks, kept = _peaks()
    assert kept.sum() < 0.2 * peaks.sum()


class _TwoHeads(mx.gluon.HybridBlock):
    """A detector-like net: an exact integer output first (class ids), then scores."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(8, 3, padding=1), nn.Activation("relu"), nn.Conv2D(4, 1))

    def hybrid_forward(self, F, x):
        scores = self.body(x)
        return F.zeros_like(x).slice_axis(axis=1, begin=0, end=1), scores


def test_doctor_measures_every_output_not_the_first():
    from gluon_quant import debug
    mx.random.seed(0)
    net = _TwoHeads()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randn(4, 3, 12, 12).astype("float32") for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    scores_db = debug.compare(qnet, batches[1:]).outputs[1][0]
    assert scores_db < 60       # the exact first output (200 dB) must not hide it
    floor = debug.activation_floor(qnet, batches[1:])
    assert floor.int8_sqnr_db == pytest.approx(scores_db, abs=1e-6)
    assert debug.sensitivity(qnet, batches[1:]).baseline_sqnr_db == pytest.approx(scores_db,
                                                                                  abs=1e-6)
