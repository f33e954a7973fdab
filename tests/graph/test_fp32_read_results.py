"""An add whose result only fp32 operators read stays fp32 (graph.passes.fp32_read_results)."""
import os
import sys

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

import gluon_quant as gq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "nlp"))
from _nets import MiniBert, bert_batches, cosine  # noqa: E402


class _Blocks(nn.HybridBlock):
    """(a + b) -> conv and (b + a) -> LayerNorm: one add read by int8, one not."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Conv2D(8, 3, padding=1, in_channels=3)
            self.b = nn.Conv2D(8, 1, in_channels=3)
            self.c = nn.Conv2D(8, 3, padding=1, in_channels=8)
            self.norm = nn.LayerNorm(axis=1, in_channels=8)

    def hybrid_forward(self, F, x):
        # Poolings between the convolutions and the sums: no sum is fused into a conv.
        a = F.Pooling(self.a(x), kernel=(2, 2), stride=(2, 2), pool_type="max")
        b = F.Pooling(self.b(x), kernel=(2, 2), stride=(2, 2), pool_type="max")
        return self.c(a + b), self.norm(b + a)


def _adds(qnet):
    return {r.node: r for r in qnet.report() if r.op == "elemwise_add"}


def test_bert_residual_sums_before_layernorm_stay_fp32():
    net = MiniBert(layers=1)
    net.initialize(mx.init.Normal(0.02))
    batches = bert_batches(200, count=2)
    qnet = gq.quantize(net, batches, num_inputs=3, progress=False, calibrator="minmax")
    adds = _adds(qnet)
    residual = [r for name, r in adds.items() if "encoderlayer" in name]
    assert len(residual) == 2, sorted(adds)
    assert all(not r.quantized and "read by fp32 operators only" in r.reason
               for r in residual)
    ref = net(*batches[1][:3])
    out = qnet(*batches[1][:3])
    assert min(cosine(a, b) for a, b in zip(out, ref)) > 0.999


def test_an_add_read_by_an_int8_convolution_stays_int8():
    net = _Blocks()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.randn(4, 3, 8, 8)) for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    adds = sorted(_adds(qnet).values(), key=lambda r: r.node)
    assert [r.quantized for r in adds].count(False) == 1, [(r.node, r.reason) for r in adds]
    kept = next(r for r in adds if not r.quantized)
    assert "read by fp32 operators only" in kept.reason
