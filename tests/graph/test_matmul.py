"""Linear layers written as matrix products (``F.dot(x, W)``, ``np.matmul``) run as int8
dense layers (gluon_quant.graph.matmul)."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.debug.metrics import cosine
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.affine import affine_into_layers
from gluon_quant.graph.matmul import products_as_dense
from gluon_quant.graph.rewrites import fold_parameter_expressions
from conftest import PAIRS_SATURATE, placed

RS = np.random.RandomState(0)


class ManualMLP(nn.HybridBlock):
    """Two hand-written linear layers: ``relu(x . W1 + b1) . W2`` over ``params.get``
    parameters shaped ``(in, out)``, as users port them from NumPy."""

    def __init__(self, units=(64, 96, 10), **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.w1 = self.params.get("w1", shape=units[:2], init=mx.init.Xavier())
            self.b1 = self.params.get("b1", shape=(units[1],), init=mx.init.Uniform(0.5))
            self.w2 = self.params.get("w2", shape=units[1:], init=mx.init.Xavier())

    def hybrid_forward(self, F, x, w1, b1, w2):  # pylint: disable=arguments-differ
        return F.dot(F.relu(F.broadcast_add(F.dot(x, w1), b1)), w2)


class Products(nn.HybridBlock):
    """Products the rewrite takes (a parameter, a transposed parameter expression, a 4-D
    input, a bias shaped ``(1, out)`` added first) and two it must leave: a parameter on
    the left, two activations (one read transposed)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(16, 3, padding=1)
            self.w = self.params.get("w", shape=(16, 32), init=mx.init.Xavier())
            self.v = self.params.get("v", shape=(24, 32), init=mx.init.Xavier())
            self.b = self.params.get("b", shape=(1, 24), init=mx.init.Uniform(0.5))
            self.left = self.params.get("left", shape=(6, 8), init=mx.init.Xavier())

    def hybrid_forward(self, F, x, w, v, b, left):  # pylint: disable=arguments-differ
        y = F.dot(F.transpose(self.conv(x), axes=(0, 2, 3, 1)), w)       # (N, 8, 8, 32)
        y = F.relu(F.broadcast_add(b, F.dot(y, F.transpose(F.transpose(v)), transpose_b=True)))
        gram = F.dot(y.reshape((-1, 24)), y.reshape((-1, 24)), transpose_a=True)
        side = F.dot(left, F.mean(y, axis=(0, 3)))                         # (6, 8)
        return y, gram, side


def _context(graph, shapes):
    return PassContext(spec=ONEDNN, param_shapes=shapes,
                       infer_shapes=lambda g: infer_graph_shapes(g, {"data": (4, 3, 8, 8)}))


def test_the_rewrite_is_exact_and_leaves_other_products():
    """The rewritten graph computes what the traced one does (to float rounding); the
    products it cannot run as a dense layer keep their operator."""
    net = Products()
    net.initialize()
    x = mx.nd.array(RS.uniform(-1, 1, (4, 3, 8, 8)).astype("float32"))
    ref = net(x)
    sym = net(mx.sym.var("data"))
    sym = mx.sym.Group(list(sym))
    graph = json.loads(sym.tojson())
    params = {p.name: p.data() for p in net.collect_params().values()}
    context = _context(graph, {k: v.shape for k, v in params.items()})
    for rewrite in (products_as_dense, affine_into_layers, fold_parameter_expressions):
        assert rewrite(graph, context) == {}
    for step in context.param_rewrites:
        step.apply(params)
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert ops.count("FullyConnected") == 2 and ops.count("dot") == 2, ops
    assert "broadcast_add" not in ops                   # the bias is the dense layer's
    dense = [n for n in graph["nodes"] if n["op"] == "FullyConnected"]
    assert [n["attrs"]["num_hidden"] for n in dense] == ["32", "24"]
    assert all(n["attrs"]["flatten"] == "False" for n in dense)
    assert context.rewritten["products0_dot1"].endswith(
        "run as a dense layer (FullyConnected), with the scale/shift after it folded in "
        "(products0_broadcast_add0)")
    rewritten = mx.sym.load_json(json.dumps(graph))
    arrays = dict(params, data=x)
    out = rewritten.eval(ctx=mx.cpu(), **{k: arrays[k] for k in rewritten.list_arguments()})
    for a, b in zip(ref, out):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)


def test_a_hand_written_linear_layer_runs_in_int8(tmp_path):
    """``F.dot(x, W) + b`` then relu, and a ``F.dot`` head, ran fp32 ("no int8 kernel for
    dot on onednn", 0 of 4 layers int8): both are int8 dense layers, the first fused
    with its bias and relu; the user's parameters keep their ``(in, out)`` shapes."""
    net = ManualMLP()
    net.initialize()
    batches = [mx.nd.array(RS.uniform(-1, 1, (32, 64)).astype("float32")) for _ in range(4)]
    qnet = gq.quantize(net, batches[:3], progress=False)
    rows = list(qnet.report())
    assert [(r.op, placed(r)) for r in rows] == [("FullyConnected", True)] * 2, \
        qnet.report()
    assert rows[0].pattern == "FullyConnected+Activation(relu)"
    assert "dot (x . W, W a 64x96 parameter) run as a dense layer" in rows[0].reason \
        or not rows[0].quantized      # kept fp32 where int8 pairs saturate, and says so
    assert net.w1.shape == (64, 96) and net.w2.shape == (96, 10)
    assert cosine(net(batches[3]).asnumpy(), qnet(batches[3]).asnumpy()) > 0.999
    qnet.export(str(tmp_path / "mlp"))
    back = gq.QuantizedSymbolBlock.imports(str(tmp_path / "mlp"))
    assert np.array_equal(back(batches[3]).asnumpy(), qnet(batches[3]).asnumpy())
    kept = gq.quantize(net, batches[:3], exclude=["dot"], progress=False)
    dots = [r for r in kept.report() if r.op == "dot"]
    assert len(dots) == 2 and not any(r.quantized for r in dots), kept.report()


def test_numpy_mode_products_run_in_int8():
    """NumPy mode's ``np.dot(x, w) + b`` and ``np.matmul(h, w2)`` are dense layers too."""
    from mxnet import npx
    npx.set_np()
    try:
        class Net(nn.HybridBlock):
            def __init__(self):
                super().__init__()
                self.w = self.params.get("w", shape=(64, 96), init=mx.init.Xavier())
                self.b = self.params.get("b", shape=(96,), init=mx.init.Uniform(0.5))
                self.w2 = self.params.get("w2", shape=(96, 10), init=mx.init.Xavier())

            def hybrid_forward(self, F, x, w, b, w2):  # pylint: disable=arguments-differ
                return F.np.matmul(F.npx.relu(F.np.dot(x, w) + b), w2)

        net = Net()
        net.initialize()
        batches = [mx.np.array(RS.uniform(-1, 1, (16, 5, 64)).astype("float32"))
                   for _ in range(4)]
        qnet = gq.quantize(net, batches[:3], progress=False)
        rows = list(qnet.report())
        assert [(r.op, placed(r)) for r in rows] == [("FullyConnected", True)] * 2, \
            qnet.report()
        assert "_npi_matmul (x . W, W a 96x10 parameter)" in rows[1].reason
        ref, out = net(batches[3]), qnet(batches[3])
        assert isinstance(out, mx.np.ndarray) and out.shape == (16, 5, 10)
        assert cosine(ref.asnumpy(), out.asnumpy()) > 0.999
    finally:
        npx.reset_np()


@pytest.mark.parametrize("transpose_b", [False, True])
def test_a_product_of_two_inputs_stays_fp32(transpose_b):
    """Attention-style products of two activations are not linear layers."""
    class Scores(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            self.proj = nn.Dense(32, flatten=False)

        def hybrid_forward(self, F, q, k):  # pylint: disable=arguments-differ
            k = k if transpose_b else F.transpose(k)
            return F.dot(self.proj(q).reshape((-1, 32)), k.reshape((-1, 32)) if transpose_b
                         else k.reshape((32, -1)), transpose_b=transpose_b)

    net = Scores()
    net.initialize()
    batches = [(mx.nd.array(RS.uniform(-1, 1, (4, 32)).astype("float32")),
                mx.nd.array(RS.uniform(-1, 1, (6, 32)).astype("float32"))) for _ in range(2)]
    qnet = gq.quantize(net, batches, num_inputs=2, progress=False)
    rows = list(qnet.report())
    assert [r.op for r in rows if r.op == "dot"] == ["dot"], qnet.report()
    assert not any("run as a dense layer" in r.reason for r in rows)


def test_one_transposed_weight_for_every_product_reading_it(tmp_path):
    """An unrolled recurrence reads its ``(in, out)`` weight at every step: it is
    transposed once (a copy per step made the export 2.5x the fp32 size)."""
    class Steps(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            self.w = self.params.get("w", shape=(32, 32), init=mx.init.Xavier())

        def hybrid_forward(self, F, x, w):  # pylint: disable=arguments-differ
            for _ in range(4):
                x = F.relu(F.dot(x, w))
            return x

    net = Steps()
    net.initialize()
    x = mx.nd.array(RS.uniform(-1, 1, (8, 32)).astype("float32"))
    graph = json.loads(net(mx.sym.var("data")).tojson())
    context = PassContext(spec=ONEDNN, param_shapes={net.w.name: (32, 32)},
                          infer_shapes=lambda g: infer_graph_shapes(g, {"data": (8, 32)}))
    products_as_dense(graph, context)
    ops = [n["op"] for n in graph["nodes"]]
    assert ops.count("transpose") == 1 and ops.count("FullyConnected") == 4, ops
    qnet = gq.quantize(net, [x], progress=False)
    paths = qnet.export(str(tmp_path / "steps"))
    sizes = [os.path.getsize(paths["params"])]
    net.hybridize()
    net(x)
    net.export(str(tmp_path / "fp32"))
    sizes.append(os.path.getsize(str(tmp_path / "fp32-0000.params")))
    # where int8 pairs saturate the first product (signed input, no bias) is fp32, and so
    # is the weight it shares
    assert sizes[0] < 0.5 * sizes[1] or PAIRS_SATURATE, sizes


def test_a_product_over_2d_inputs_is_int8_on_cudnn():
    """On a 2-D input the dense layer is made ``flatten=True`` (the same there), which
    cuDNN's int8 GEMM needs ("flatten=False (the int8 GEMM on cudnn needs flatten=True)")."""
    net = ManualMLP(units=(64, 96, 12))
    net.initialize()
    batches = [mx.nd.array(RS.uniform(-1, 1, (8, 64)).astype("float32")) for _ in range(2)]
    qnet = gq.quantize(net, batches, backend="cudnn", progress=False)
    rows = [r for r in qnet.report() if r.op == "FullyConnected"]
    assert [r.quantized for r in rows] == [True, True], qnet.report()


def test_linalg_gemm2_products_with_alpha_are_dense_layers():
    """``F.linalg.gemm2(x, w, transpose_b=True, alpha=...)``, a linear layer as some users
    write it, ran fp32 ("no int8 kernel for _linalg_gemm2"): it is a dense layer over
    ``alpha * w``, exact to float rounding; a gemm2 over another axis is left alone."""
    class Gemm(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            self.w = self.params.get("w", shape=(48, 32), init=mx.init.Xavier())
            self.v = self.params.get("v", shape=(48, 16), init=mx.init.Xavier())

        def hybrid_forward(self, F, x, w, v):  # pylint: disable=arguments-differ
            h = F.relu(F.linalg.gemm2(x, w, transpose_b=True, alpha=0.5))   # (N, 48)
            y = F.linalg.gemm2(h, v, alpha=3.0)                              # (N, 16)
            side = F.linalg.gemm2(F.expand_dims(x, 0), F.expand_dims(x, 0),
                                  transpose_b=True, axis=-3)
            return y, side

    net = Gemm()
    net.initialize()
    x = mx.nd.array(RS.uniform(-1, 1, (8, 32)).astype("float32"))
    ref = net(x)
    graph = json.loads(mx.sym.Group(list(net(mx.sym.var("data")))).tojson())
    params = {p.name: p.data() for p in net.collect_params().values()}
    context = PassContext(spec=ONEDNN, param_shapes={k: v.shape for k, v in params.items()},
                          infer_shapes=lambda g: infer_graph_shapes(g, {"data": (8, 32)}))
    for rewrite in (products_as_dense, fold_parameter_expressions):
        assert rewrite(graph, context) == {}
    for step in context.param_rewrites:
        step.apply(params)
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert ops.count("FullyConnected") == 2 and ops.count("_linalg_gemm2") == 1, ops
    rewritten = mx.sym.load_json(json.dumps(graph))
    arrays = dict(params, data=x)
    out = rewritten.eval(ctx=mx.cpu(), **{k: arrays[k] for k in rewritten.list_arguments()})
    for a, b in zip(ref, out):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)
    qnet = gq.quantize(net, [x], progress=False)
    dense = [r for r in qnet.report() if r.op == "FullyConnected"]
    assert len(dense) == 2 and all(placed(r) for r in dense), qnet.report()
    assert cosine(ref[0].asnumpy(), qnet(x)[0].asnumpy()) > 0.999
