"""Which reshaped arrays need graph/layout.py's plain-layout clip, and which do not."""
import os
import subprocess
import sys
import textwrap
import types

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
        y = self.conv(x)        # (a sum: a convolution's split would run as two)
        first, second = F.split(y + F.relu(y), num_outputs=2, axis=1)
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
    assert not [r.node for r in report if r.node.endswith("_plain")]
    assert [r.quantized for r in report if r.op == "Convolution"] == [True, True]
    data = mx.nd.array(rs.uniform(-1, 1, shape).astype("float32"))
    assert cosine(net(data).asnumpy(), qnet(data).asnumpy()) > 0.999


# ------------------------------------------------------------------- Custom operators

class _Swish(mx.operator.CustomOp):
    """``x * sigmoid(x)`` written as a user writes a Python operator."""

    def forward(self, is_train, req, in_data, out_data, aux):
        x = in_data[0]
        self.assign(out_data[0], req[0], x * mx.nd.sigmoid(x))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        raise NotImplementedError


@mx.operator.register("gq_test_layout_swish")
class _SwishProp(mx.operator.CustomOpProp):
    def __init__(self):
        super().__init__(need_top_grad=True)

    def list_arguments(self):
        return ["data"]

    def list_outputs(self):
        return ["output"]

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[0]], []

    def create_operator(self, ctx, shapes, dtypes):
        return _Swish()


class _SwishNet(nn.HybridBlock):
    """Convolution + BatchNorm + swish twice (the swish a ``Custom`` operator, or written
    with MXNet's operators when ``native``), a convolution + ReLU, a dense head; on the
    input, a swish that needs no clip (it reads a variable)."""

    def __init__(self, native=False, **kwargs):
        super().__init__(**kwargs)
        self._native = native
        with self.name_scope():
            self.convs = nn.HybridSequential()      # shapes given: no forward needed
            for before, channels, stride in ((3, 32, 1), (32, 64, 2), (64, 64, 1)):
                self.convs.add(nn.Conv2D(channels, 3, stride, 1, use_bias=False,
                                         in_channels=before),
                               nn.BatchNorm(in_channels=channels))
            self.head = nn.Dense(10, in_units=64 * 12 * 12)

    def _swish(self, F, x):
        if self._native:
            return x * F.sigmoid(x)
        return F.Custom(x, op_type="gq_test_layout_swish")

    def hybrid_forward(self, F, x):
        x = self._swish(F, x)
        for i in range(2):
            x = self._swish(F, self.convs[2 * i + 1](self.convs[2 * i](x)))
        return self.head(F.relu(self.convs[5](self.convs[4](x))))


def _swish_nets():
    """The ``Custom`` net and its native twin with the same weights and BatchNorm
    statistics, and calibration/test batches."""
    rs = np.random.RandomState(3)
    batches = [mx.nd.array(rs.uniform(-1, 1, (8, 3, 24, 24)).astype("float32"))
               for _ in range(3)]
    # The Custom net is never run by MXNet itself here: it may misread (or crash).
    nets = [_SwishNet(native, prefix="swishnet_") for native in (False, True)]
    for net in nets:
        net.initialize(mx.init.Xavier(), force_reinit=True)
    for name, param in nets[0].collect_params().items():
        if name.endswith(("running_mean", "running_var")):     # as if trained
            param.set_data(mx.nd.array(rs.uniform(0.2, 1.0, param.shape) if name.endswith(
                "var") else rs.uniform(-0.3, 0.3, param.shape)))
        nets[1].collect_params()[name].set_data(param.data())
    return nets, batches


def test_mxnet_hands_a_custom_operator_blocked_memory():
    """The measurement :data:`layout.READS_RAW` rests on, as a check of MXNet, in a child
    process (MXNet may die of it): a hybridized ``Custom`` operator reading a convolution's
    output gets it wrong on most calls (33-35 of 40 on an idle machine) or crashes; through
    the full-range clip, it reads it right on every call. The misread depends on timing
    (none of 10 calls showed it once under load): not seen in 60 calls, the check of MXNet
    is skipped, the check of the clip is not."""
    script = textwrap.dedent('''
        import sys, numpy as np, mxnet as mx
        sys.path.insert(0, %r)
        import test_layout as t
        from mxnet.gluon import nn
        class Net(nn.HybridBlock):
            def __init__(self, clip, **kw):
                super().__init__(**kw); self.clip = clip; self.conv = nn.Conv2D(32, 3, padding=1)
            def hybrid_forward(self, F, x):
                y = self.conv(x)
                y = F.clip(y, -3.4e38, 3.4e38) if self.clip else y
                return F.Custom(y, op_type="gq_test_layout_swish")
        x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 8, 8)))
        for clip, calls in ((True, 10), (False, 60)):
            worst = 0.0
            for _ in range(calls):     # MXNet misreads on some calls only
                net = Net(clip); net.initialize(mx.init.Xavier())
                y = net.conv(x).asnumpy(); expected = y / (1 + np.exp(-y))
                net.hybridize()
                worst = max(worst, float(np.abs(net(x).asnumpy() - expected).max()))
                if worst > 1e-2:
                    break
            print(clip, worst, flush=True)
        ''' % os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    lines = dict(line.split() for line in run.stdout.splitlines() if line[:1] in "TF")
    assert float(lines["True"]) < 1e-5, run.stdout + run.stderr      # through the clip
    if run.returncode == 0 and float(lines["False"]) <= 1e-2:
        # 33-35 of 40 calls misread on an idle machine, but none of 10 did once while two
        # test runs shared its two cores: the defect depends on timing, and not seeing it
        # does not show that MXNet changed (it is pinned at 1.9.1)
        pytest.skip("MXNet's misread of blocked memory did not show in 60 calls on this "
                    "machine now (it depends on timing); the clip path above was checked")


def test_custom_operators_read_oneDNN_outputs_through_a_clip():
    (custom, native), batches = _swish_nets()
    fp32 = gq.quantize(custom, batches, exclude=["Convolution", "FullyConnected"],
                       progress=False)
    # after each BatchNorm, not before the swish on the input (a variable)
    assert [(r.layer, r.op) for r in fp32.report() if r.op in ("clip", "Custom")] == [
        ("swishnet_custom0", "Custom"), ("swishnet_batchnorm0", "clip"),
        ("swishnet_custom1", "Custom"), ("swishnet_batchnorm1", "clip"),
        ("swishnet_custom2", "Custom")]
    x = batches[1]
    expected = native(x).asnumpy()
    np.testing.assert_allclose(fp32(x).asnumpy(), expected, rtol=1e-4, atol=1e-5)
    qnet = gq.quantize(custom, batches, progress=False)
    assert [r.quantized for r in qnet.report() if r.op == "Convolution"] == [True] * 3
    out = qnet(x).asnumpy()
    assert cosine(out, expected) > 0.999
    np.testing.assert_array_equal(out, gq.quantize(native, batches, progress=False)(x).asnumpy())


def test_custom_operators_reading_plain_memory_get_no_clip():
    graph = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                       {"op": "Convolution", "name": "conv", "inputs": [[0, 0, 0]]},
                       {"op": "slice_axis", "name": "part", "inputs": [[1, 0, 0]]},
                       {"op": "Reshape", "name": "view", "inputs": [[2, 0, 0]]},
                       {"op": "Custom", "name": "a", "inputs": [[3, 0, 0], [0, 0, 0]]},
                       {"op": "Reshape", "name": "flat", "inputs": [[1, 0, 0]]},
                       {"op": "Custom", "name": "b", "inputs": [[5, 0, 0], [1, 0, 0]]},
                       {"op": "Cast", "name": "index", "inputs": [[1, 0, 0]]},
                       {"op": "Custom", "name": "c", "inputs": [[1, 0, 0], [7, 0, 0]]}],
             "arg_nodes": [0], "heads": [[4, 0, 0], [6, 0, 0], [8, 0, 0]]}
    context = types.SimpleNamespace(rewritten={}, infer_dtypes=lambda g: {
        "conv_output": "float32", "index_output": "int32"})
    assert layout.plain_custom_inputs(graph, context) == {}
    nodes = graph["nodes"]
    read = {n["name"]: [nodes[e[0]]["name"] for e in n["inputs"]] for n in nodes}
    assert read["a"] == ["view", "data"]                # a slice's reshape, a variable
    assert read["b"] == ["flat_plain", "conv_plain"]    # a convolution's, reshaped or not
    assert read["c"] == ["conv_plain", "index"]         # one clip per entry; int32 as it is
    assert sorted(context.rewritten) == ["conv_plain", "flat_plain"]


class _ConvSwish(nn.HybridBlock):
    """A convolution whose output a ``Custom`` swish reads and returns."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(32, 3, padding=1, in_channels=3)

    def hybrid_forward(self, F, x):
        return F.Custom(self.conv(x), op_type="gq_test_layout_swish")


@pytest.mark.parametrize("exclude", [["Convolution"], []])
def test_a_custom_operator_reads_a_convolution_right(exclude):
    """Without the clip the quantized net's output was garbage (up to 1e34) on 12 of 15
    calls: MXNet handed the operator the convolution's blocked output."""
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (8, 3, 16, 16)).astype("float32"))
    for seed in range(2):
        mx.random.seed(seed)
        net = _ConvSwish()
        net.initialize(mx.init.Xavier())
        y = net.conv(x).asnumpy()
        expected = y / (1 + np.exp(-y))
        qnet = gq.quantize(net, [x], exclude=exclude, progress=False)
        for _ in range(3):
            out = qnet(x).asnumpy()
            if exclude:
                np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
            else:
                assert cosine(out, expected) > 0.999
