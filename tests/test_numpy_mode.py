"""Gluon nets written for MXNet's NumPy mode (``npx.set_np()``, as MXNet 1.9's own
tutorials write them): quantized, called, exported and examined with ``mxnet.np`` arrays."""
import mxnet as mx
import numpy as onp
import pytest
from mxnet import npx
from mxnet.gluon import nn

import gluon_quant as gq


@pytest.fixture
def np_mode():
    npx.set_np()
    try:
        yield mx.np
    finally:
        npx.reset_np()


def _cos(a, b):
    a, b = a.asnumpy().ravel(), b.asnumpy().ravel()
    return float(onp.dot(a, b) / (onp.linalg.norm(a) * onp.linalg.norm(b)))


class Mlp(nn.HybridBlock):
    """The way the tutorials write a hybrid net: ``F.npx`` operators."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.hidden = nn.Dense(256)
            self.output = nn.Dense(10)

    def hybrid_forward(self, F, x):
        return self.output(F.npx.relu(self.hidden(x)))


def test_numpy_mode_cnn_quantizes_runs_and_exports(np_mode, tmp_path):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, activation="relu"), nn.MaxPool2D(),
            nn.Conv2D(32, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
            nn.GlobalAvgPool2D(), nn.Dense(64, activation="relu"), nn.Dense(10))
    net.initialize(mx.init.Xavier())        # deferred shapes: finished by quantize
    rs = onp.random.RandomState(0)
    batches = [np_mode.array(rs.rand(4, 3, 32, 32).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    x = batches[0]
    ref, out = net(x), qnet(x)              # the fp32 net still runs as written
    assert isinstance(out, mx.np.ndarray) and out.shape == (4, 10)
    assert _cos(ref, out) > 0.999
    assert qnet.report().coverage() == (4, 4)
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    again = loaded(x)
    assert isinstance(again, mx.np.ndarray)
    assert onp.array_equal(again.asnumpy(), out.asnumpy())
    legacy = qnet(x.as_nd_ndarray())       # NumPy out: Gluon refuses legacy outputs here
    assert isinstance(legacy, mx.np.ndarray)
    assert onp.array_equal(legacy.asnumpy(), out.asnumpy())


def test_numpy_mode_operators_fuse_and_the_doctor_runs(np_mode):
    net = Mlp()
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(1)
    batches = [np_mode.array(rs.rand(16, 784).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    hidden = [row for row in qnet.report() if row.layer.endswith("dense0")][0]
    assert hidden.quantized and "Activation(relu)" in hidden.pattern   # npx.relu fused
    assert qnet.report().coverage() == (2, 2)
    assert _cos(net(batches[0]), qnet(batches[0])) > 0.999
    assert gq.debug.compare(qnet, batches[:1]).output_cosine > 0.999
    assert len(gq.debug.sensitivity(qnet, batches[:1])) == 2
    assert gq.debug.activation_floor(qnet, batches[:1]).int8_cosine > 0.999
