"""Swish, sigmoid and tanh at oneDNN's speed: multiplications by 1 removed
(graph.scalars.unit_scalars), ``sigmoid``/``tanh`` run as ``Activation`` (graph.guards);
``x ** 2`` and ``x ** 3`` as ``square`` (graph.scalars.small_powers); ``y + y`` as ``y * 2``
(graph.scalars.self_sums)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import npx
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.debug.metrics import cosine
from gluon_quant.graph.scalars import self_sums, small_powers, unit_scalars

from _checks import assert_matches_and_reloads
from conftest import placed

RS = np.random.RandomState(0)

#: name -> (expression over x, the operators left)
FORMS = {
    "x * 1.0 (nn.Swish's beta)": (lambda x: mx.sym.sigmoid(x * 1.0) * x,
                                  ["sigmoid", "elemwise_mul"]),
    "x / 1": (lambda x: mx.sym.relu(x / 1), ["relu"]),
    "a chain": (lambda x: mx.sym.relu((x * 1.0) / 1.0), ["relu"]),
    # left alone: another scale, an output of the net
    "x * 2": (lambda x: mx.sym.relu(x * 2.0), ["_mul_scalar", "relu"]),
    "x * 1 returned": (lambda x: x * 1.0, ["_mul_scalar"]),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_unit_scalars_are_bypassed_bit_exact(form):
    """The same values to the bit, NaN and -0.0 included."""
    function, left = FORMS[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    data = mx.nd.array(np.concatenate([RS.randn(60), [np.nan, -0.0, 0.0, np.inf]])
                       .astype("float32").reshape(8, 8))
    ref = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    assert unit_scalars(graph, None) == {}
    assert [n["op"] for n in graph["nodes"] if n["op"] != "null"] == left
    out = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    np.testing.assert_array_equal(ref, out)
    assert np.array_equal(np.signbit(ref), np.signbit(out))


def _swish_tanh_net():
    net = nn.HybridSequential()
    for channels in (8, 16):
        net.add(nn.Conv2D(channels, 3, padding=1, use_bias=False), nn.BatchNorm(),
                nn.Swish())
    net.add(nn.Conv2D(3, 3, padding=1), nn.HybridLambda(lambda F, x: F.tanh(x)))
    net.initialize(mx.init.Xavier())
    return net


def test_swish_and_tanh_run_on_onednn_kernels(tmp_path):
    """``nn.Swish()`` (``x * sigmoid(1.0 * x)``) and ``F.tanh`` ran MXNet's own
    element-wise kernels (sigmoid 9x, tanh 30x slower than oneDNN's ``Activation``) and
    a multiplication by 1: a 6-layer Swish CNN, batch 16 at 112 px, 1.91x -> 3.55x fp32;
    conv+BN+``F.tanh``, 1.33x -> 7.2x. Both are ``Activation`` now (values within an
    ulp), the multiplication gone; the export reloads to the same values; ``exclude``
    keeps a multiplication by 1."""
    net = _swish_tanh_net()
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 12, 12)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    ops = [r.op for r in report]
    assert not {"sigmoid", "tanh", "_mul_scalar"} & set(ops), ops
    assert [r.pattern for r in report if r.op == "Activation"] == \
        ["Activation(sigmoid)"] * 2 + ["Activation(tanh)"]
    assert all(r.quantized for r in report if r.op == "Convolution")
    x = batches[2]
    assert cosine(net(x).asnumpy(), qnet(x).asnumpy()) > 0.999
    qnet.export(str(tmp_path / "m"))
    again = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    assert np.array_equal(qnet(x).asnumpy(), again(x).asnumpy())
    kept = gq.quantize(net, batches[:2], exclude=["_mul_scalar"], progress=False)
    assert [r.op for r in kept.report()].count("_mul_scalar") == 2


def test_numpy_mode_sigmoid_tanh_and_unit_scale():
    """NumPy mode's ``npx.sigmoid``, ``np.tanh`` and ``x * 1.0`` are the same operators
    under other names."""
    npx.set_np()
    try:
        net = nn.HybridSequential()
        net.add(nn.Conv2D(8, 3, padding=1),
                nn.HybridLambda(lambda F, x: F.np.tanh(F.npx.sigmoid(x * 1.0))),
                nn.Conv2D(4, 3, padding=1))
        net.initialize(mx.init.Xavier())
        batches = [mx.np.array(RS.uniform(-1, 1, (4, 3, 10, 10)).astype("float32"))
                   for _ in range(2)]
        qnet = gq.quantize(net, batches, progress=False)
        ops = [r.op for r in qnet.report()]
        assert not {"_npx_sigmoid", "_npi_tanh", "_npi_multiply_scalar"} & set(ops), ops
        assert ops.count("Activation") == 2
        assert cosine(net(batches[1]).asnumpy(), qnet(batches[1]).asnumpy()) > 0.999
    finally:
        npx.reset_np()


#: name -> (expression over x, the operators it runs as)
POWERS = {
    "x ** 2": (lambda x: x ** 2, ["square"]),
    "x ** 3 (the tanh GELU's cube)": (lambda x: 0.044715 * x ** 3,
                                      ["square", "elemwise_mul", "_mul_scalar"]),
    "a variance": (lambda x: mx.sym.mean((x - 1) ** 2, axis=-1),
                   ["_minus_scalar", "square", "mean"]),
    # left alone: other powers
    "x ** 0.5": (lambda x: mx.sym.abs(x) ** 0.5, ["abs", "_power_scalar"]),
    "x ** 4": (lambda x: x ** 4, ["_power_scalar"]),
}


@pytest.mark.parametrize("form", sorted(POWERS))
def test_small_powers_run_as_squares(form):
    """Equal up to float rounding (``square`` rounds once; MXNet's ``powf`` is 1 ulp off
    for some values), infinities and NaN included."""
    function, ops = POWERS[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    data = mx.nd.array(np.concatenate([RS.randn(60) * 30, [np.nan, -0.0, np.inf, -np.inf]])
                       .astype("float32").reshape(8, 8))
    ref = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    assert small_powers(graph, None) == {}
    assert [n["op"] for n in graph["nodes"] if n["op"] != "null"] == ops
    out = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    np.testing.assert_allclose(out, ref, rtol=3e-7, atol=0)


class _RmsGelu(nn.HybridBlock):
    """A hand-written RMSNorm (``x / sqrt(mean(x ** 2) + eps)``) and tanh-approximated
    GELU (``x ** 3``) around dense layers, as transformer code ported from PyTorch writes
    them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.up = nn.Dense(256, flatten=False)
            self.down = nn.Dense(64, flatten=False)

    def hybrid_forward(self, F, x):
        x = F.broadcast_div(x, F.sqrt(F.mean(x ** 2, axis=-1, keepdims=True) + 1e-6))
        h = self.up(x)
        h = 0.5 * h * (1 + F.tanh(0.7978845608 * (h + 0.044715 * h ** 3)))
        return self.down(h)


def test_powers_run_as_squares_between_int8_dense_layers(tmp_path):
    """``x ** 2`` of 8x128x3072 floats: 18.5 ms as MXNet's power, 1.3 ms as ``square``.
    The int8 net matches fp32, reloads to the same values, and ``exclude`` keeps a power."""
    net = _RmsGelu()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-2, 2, (16, 8, 64)).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    ops = [r.op for r in qnet.report()]
    assert "_power_scalar" not in ops and ops.count("square") == 2, ops
    assert [placed(r) for r in qnet.report() if r.op == "FullyConnected"][-1]
    assert_matches_and_reloads(net, qnet, (
        batches[2], mx.nd.array(RS.uniform(-2, 2, (3, 5, 64)).astype("float32"))), tmp_path)
    kept = gq.quantize(net, batches[:2], exclude=["*powerscalar0"], progress=False)
    assert [r.op for r in kept.report()].count("_power_scalar") == 1


class _Doubled(nn.HybridBlock):
    """A convolution's output added to itself (``y + y``), as a hand-written residual
    scaling may do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(8, 3, padding=1)
            self.head = nn.Conv2D(4, 1)

    def hybrid_forward(self, F, x):
        y = self.conv(x)
        return self.head(F.relu(y + y))


def test_a_sum_of_a_tensor_with_itself_runs_as_a_product_by_two(tmp_path):
    """MXNet 1.9.1 fused ``conv(x) + conv(x)`` into one convolution reading its own output
    as the sum, and the fused graph failed shape inference: quantization failed. As ``y *
    2`` (bit-exact) the scale folds into the convolution; ``exclude`` keeps the sum."""
    graph = json.loads((lambda y: y + y)(mx.sym.var("data")).tojson())
    data = mx.nd.array(np.concatenate([RS.randn(60) * 30, [np.nan, -0.0, np.inf, -np.inf]])
                       .astype("float32").reshape(8, 8))
    ref = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    assert self_sums(graph, None) == {}
    assert [(n["op"], n.get("attrs")) for n in graph["nodes"] if n["op"] != "null"] == [
        ("_mul_scalar", {"scalar": "2.0"})]
    out = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    np.testing.assert_array_equal(out, ref)
    net = _Doubled()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 8, 8)).astype("float32")) for _ in range(2)]
    qnet = gq.quantize(net, batches[:1], progress=False)
    report = qnet.report()
    assert [r.op for r in report] == ["Convolution", "Convolution"], str(report)
    assert all(r.quantized for r in report)
    assert_matches_and_reloads(net, qnet, batches, tmp_path)
