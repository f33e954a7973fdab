"""Which reshaped arrays need graph/layout.py's plain-layout clip, and which do not."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.graph import layout


def cosine(a, b):
    a, b = np.asarray(a, "float64").ravel(), np.asarray(b, "float64").ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class _Between(nn.HybridBlock):
    """A 3-D convolution's (blocked) output through ``between``, then reshaped twice (the
    rank and the channels changed) and read by ``reader``, a reader that misreads a
    reshape of blocked memory."""

    def __init__(self, between, reader, **kwargs):
        super().__init__(**kwargs)
        self._between, self._reader = between, reader
        with self.name_scope():
            self.conv = nn.Conv3D(32, 3, padding=1)

    def hybrid_forward(self, F, x):
        y = self._between(F, self.conv(x))
        y = y.reshape((0, -3, 0, 0)).reshape((0, 0, -1, 2))
        if self._reader == "Pooling":
            return F.Pooling(y, kernel=(2, 2), stride=(2, 2), pool_type="avg")
        return F.transpose(y, (0, 2, 3, 1))


_PLAIN_MAKERS = {
    "slice_axis": lambda F, y: F.slice_axis(y, axis=1, begin=0, end=16),
    "slice": lambda F, y: F.slice(y, begin=(None, 8), end=(None, 24)),
    "SliceChannel": lambda F, y: F.split(y, num_outputs=2, axis=1)[1],
    "_split_v2": lambda F, y: F.split_v2(y, 2, axis=1)[0],
    "transpose": lambda F, y: F.transpose(y, (0, 1, 2, 4, 3)),
    "clip": lambda F, y: F.clip(y, -3.4e38, 3.4e38),
}


def _run(between, reader):
    """The net's imperative result (MXNet reorders a blocked array to plain memory before
    an imperative reshape) and its hybridized one, None where MXNet fails."""
    net = _Between(between, reader)
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 4, 8, 8)))
    expected = net(x).asnumpy()
    net.hybridize(static_alloc=True)
    try:
        return expected, net(x).asnumpy()
    except mx.base.MXNetError:
        return expected, None


def test_every_operator_said_to_hand_plain_memory_does():
    """The measurement :data:`layout.HANDS_PLAIN` rests on, kept as a check of MXNet:
    each operator's output reshaped twice is read right by a pooling and a transpose,
    where the same reshapes of the convolution's output (or of a ReLU of it) fail."""
    assert set(_PLAIN_MAKERS) == set(layout.HANDS_PLAIN)
    for reader in ("Pooling", "transpose"):
        assert _run(lambda F, y: y, reader)[1] is None, \
            "MXNet reads a reshaped blocked array right now: the clip is not needed"
        assert _run(lambda F, y: F.relu(y), reader)[1] is None
        for op, make in _PLAIN_MAKERS.items():
            expected, out = _run(make, reader)
            assert out is not None, (op, reader)
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6, err_msg=op)


class _VideoAttention(nn.HybridBlock):
    """A 3-D convolution's output split into two halves along the channels, each viewed
    as ``(N, C/2 * D, H, W)`` then ``(N, C/2 * D, H * W // 2, 2)``, pooled (as
    self-attention written with ``split`` reshapes each part twice) and mixed by a 1x1
    convolution."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv3D(16, 3, padding=1)
            self.mix = nn.Conv2D(8, 1)

    def hybrid_forward(self, F, x):
        first, second = F.split(self.conv(x), num_outputs=2, axis=1)
        views = [part.reshape((0, -3, 0, 0)).reshape((0, 0, -1, 2)) for part in (first, second)]
        pooled = [F.Pooling(v, kernel=(2, 2), stride=(2, 2), pool_type="max") for v in views]
        return self.mix(F.concat(*pooled, dim=1))


@pytest.mark.parametrize("shape", [(4, 3, 4, 8, 8), (3, 3, 4, 10, 12)])
def test_reshapes_of_split_parts_get_no_clip_and_run(shape):
    """The parts of a split (run as ``slice_axis``) are plain memory: their reshapes get
    no clip, and the int8 net matches fp32 at the calibrated size and another."""
    rs = np.random.RandomState(7)
    net = _VideoAttention()
    net.initialize(mx.init.Xavier())
    calib = mx.nd.array(rs.uniform(-1, 1, (4, 3, 4, 8, 8)).astype("float32"))
    qnet = gq.quantize(net, [calib], progress=False)
    report = qnet.report()
    assert not [r.layer for r in report if r.layer.endswith("_plain")]
    assert [r.quantized for r in report if r.op == "Convolution"] == [True, True]
    data = mx.nd.array(rs.uniform(-1, 1, shape).astype("float32"))
    assert cosine(net(data).asnumpy(), qnet(data).asnumpy()) > 0.999
