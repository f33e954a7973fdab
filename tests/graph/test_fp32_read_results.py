"""An add whose result only fp32 operators read stays fp32 (graph.passes.fp32_read_results)."""
import os
import sys

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

import gluon_quant as gq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "nlp"))
from _nets import MiniBert, bert_batches, cosine  # noqa: E402
from conftest import placed


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


class _PreNormStream(nn.HybridBlock):
    """A pre-LayerNorm transformer's residual stream: ``x = x + f(LN(x))`` three times,
    then a LayerNorm; each sum is read by a LayerNorm and the next sum."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.norms = nn.HybridSequential()
            self.layers = nn.HybridSequential()
            for _ in range(3):
                self.norms.add(nn.LayerNorm())
                self.layers.add(nn.Dense(32, flatten=False))
            self.final = nn.LayerNorm()

    def hybrid_forward(self, F, x):
        for norm, layer in zip(self.norms, self.layers):
            x = x + layer(norm(x))
        return self.final(x)


def test_a_chain_of_sums_ending_in_fp32_readers_stays_fp32():
    """Only the last sum of the chain was kept fp32: the others, read by a LayerNorm and
    a sum, ran as MXNet's int8 elemwise_add (4x slower than the fp32 sum on a ViT's
    (8, 197, 192) stream: a ViT-Tiny ran 1.56-1.62x fp32, 1.75-1.82x with every sum fp32,
    and closer to fp32, cosine 0.99894 -> 0.99955)."""
    net = _PreNormStream()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(1)
    batches = [mx.nd.array(rs.randn(4, 10, 32)) for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    adds = _adds(qnet)
    assert len(adds) == 3 and all(
        not r.quantized and "read by fp32 operators only" in r.reason
        for r in adds.values()), [(r.node, r.quantized, r.reason) for r in adds.values()]
    assert all(placed(r) for r in qnet.report() if r.op == "FullyConnected")
