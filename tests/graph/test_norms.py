"""Slow normalizations run as a last-axis LayerNorm (gluon_quant.graph.norms)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.norms import norms_as_last_axis_layernorm, written_layernorms
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.scalars import small_powers

from _checks import assert_matches_and_reloads

RS = np.random.RandomState(0)

#: name -> (norm block, input shape, whether it is rewritten)
NORMS = {
    "LayerNorm(axis=1), 4-D": (lambda: nn.LayerNorm(axis=1, in_channels=6), (3, 6, 5, 7), 1),
    "LayerNorm(axis=1), 3-D": (lambda: nn.LayerNorm(axis=1, in_channels=6), (3, 6, 9), 1),
    "LayerNorm(axis=-2)": (lambda: nn.LayerNorm(axis=-2, in_channels=5), (3, 6, 5, 7), 1),
    "InstanceNorm": (lambda: nn.InstanceNorm(in_channels=6), (3, 6, 5, 7), 1),
    "InstanceNorm, 3-D": (lambda: nn.InstanceNorm(in_channels=6, epsilon=0.1), (3, 6, 9), 1),
    "GroupNorm": (lambda: nn.GroupNorm(num_groups=3), (3, 6, 5, 7), 1),
    "softmax(axis=1), 4-D": (
        lambda: nn.HybridLambda(lambda F, x: F.softmax(x, axis=1)), (3, 6, 5, 7), 1),
    "log_softmax(axis=1), 3-D": (
        lambda: nn.HybridLambda(lambda F, x: F.log_softmax(x, axis=1)), (3, 6, 9), 1),
    # left alone: already over the last axis
    "LayerNorm()": (lambda: nn.LayerNorm(in_channels=7), (3, 6, 5, 7), 0),
    "softmax()": (lambda: nn.HybridLambda(lambda F, x: F.softmax(x)), (3, 6, 5, 7), 0),
}


def _slow(graph):
    return [n for n in graph["nodes"] if n["op"] in ("InstanceNorm", "GroupNorm") or (
        n["op"] in ("LayerNorm", "softmax", "log_softmax") and
        (n.get("attrs") or {}).get("axis", "-1") != "-1")]


def _run(graph, arrays):
    sym = mx.sym.load_json(json.dumps(graph))
    return sym.bind(mx.cpu(), {k: arrays[k] for k in sym.list_arguments()}).forward()[0]


@pytest.mark.parametrize("form", sorted(NORMS))
def test_each_norm_computes_what_it_did_at_any_size(form):
    """The rewritten graph gives the traced graph's values up to float32 rounding, on the
    shape it was rewritten for and on another one (the unit scale follows the data)."""
    make, shape, rewrites = NORMS[form]
    block = make()
    block.initialize()
    block(mx.nd.zeros(shape))
    for param in block.collect_params().values():
        param.set_data(mx.nd.array(RS.uniform(0.5, 1.5, param.shape)))
    graph = json.loads(block(mx.sym.var("data")).tojson())
    for node in graph["nodes"][1:]:     # as a deferred-initialized net traces them
        if node["op"] == "null":
            node["attrs"]["__shape__"] = "(0,)"
    params = {p.name: p.data() for p in block.collect_params().values()}
    context = PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
        g, {"data": shape}))
    rewritten = json.loads(json.dumps(graph))
    assert norms_as_last_axis_layernorm(rewritten, context) == {}
    assert not _slow(rewritten), [n["op"] for n in rewritten["nodes"]]
    assert len(context.rewritten) == rewrites
    assert rewrites or rewritten == graph
    # later passes infer the rewritten graph's shapes from the input's alone
    assert infer_graph_shapes(rewritten, {"data": shape})
    # another spatial size; another batch size where a spatial axis is the normalized one
    other = (5,) + shape[1:] if form in ("LayerNorm(axis=-2)", "LayerNorm()") \
        else shape[:2] + tuple(d + 3 for d in shape[2:])
    for size in (shape, other):
        x = mx.nd.array(RS.uniform(-3, 5, size).astype("float32"))
        ref = block(x).asnumpy()
        out = _run(rewritten, dict(params, data=x)).asnumpy()
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_a_layernorm_that_outputs_its_moments_is_left_alone():
    x = mx.sym.var("data")
    out = mx.sym.LayerNorm(x, mx.sym.var("g"), mx.sym.var("b"), axis=1, output_mean_var=True)
    graph = json.loads(mx.sym.Group([out[0], out[1]]).tojson())
    context = PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
        g, {"data": (2, 4, 3), "g": (4,), "b": (4,)}))
    assert norms_as_last_axis_layernorm(graph, context) == {}
    assert [n["op"] for n in graph["nodes"] if n["op"] != "null"] == ["LayerNorm"]


class _ConvNeXtStem(nn.HybridBlock):
    """A ConvNeXt's patchify stem, channels-first LayerNorm and downsampling, written as
    its reference code does; an InstanceNorm and a GroupNorm after it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = nn.Conv2D(16, 2, strides=2)
            self.norm = nn.LayerNorm(axis=1, in_channels=16)
            self.down = nn.Conv2D(24, 2, strides=2)
            self.inorm = nn.InstanceNorm(in_channels=24)
            self.conv = nn.Conv2D(16, 3, padding=1)
            self.gnorm = nn.GroupNorm(num_groups=4)
            self.head = nn.Dense(5)

    def hybrid_forward(self, F, x):
        x = F.relu(self.inorm(self.down(self.norm(self.stem(x)))))
        return self.head(F.relu(self.gnorm(self.conv(x))))


def test_slow_norms_leave_the_int8_net_and_its_export(tmp_path):
    """A channels-first LayerNorm, an InstanceNorm and a GroupNorm between int8
    convolutions ran MXNet's slow kernels (a ConvNeXt-style net, batch 8 at 112 px:
    1.25x fp32 in int8, 2.42x rewritten; a style-transfer net with InstanceNorm 1.55x ->
    3.33x); each is a last-axis LayerNorm now, the convolutions int8, the export reloads
    to the same values; ``exclude`` keeps one as it is."""
    net = _ConvNeXtStem()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 16, 16)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    ops = [r.op for r in report]
    assert "InstanceNorm" not in ops and "GroupNorm" not in ops, ops
    assert ops.count("LayerNorm") == 3
    assert all(r.quantized for r in report if r.op == "Convolution"), report
    assert_matches_and_reloads(net, qnet, (batches[2],), tmp_path)
    kept = gq.quantize(net, batches[:2], exclude=["InstanceNorm"], progress=False)
    assert [r.op for r in kept.report()].count("InstanceNorm") == 1


def _centred(F, x, axis):
    return F.broadcast_sub(x, x.mean(axis=axis, keepdims=True))


#: name -> (function of F, x, w (C,), b (C,) -> output, axis, LayerNorm inputs that are
#: the net's w and b); None: left alone
WRITTEN = {
    "ConvNeXt's channels-first (x - u twice, ** 2, / sqrt, w and b reshaped)": (
        lambda F, x, w, b: F.broadcast_add(F.broadcast_mul(F.broadcast_div(
            _centred(F, x, 1), F.sqrt((_centred(F, x, 1) ** 2).mean(axis=1, keepdims=True)
                                      + 1e-6)), w.reshape((1, -1, 1, 1))),
            b.reshape((1, -1, 1, 1))), 1, 2),
    "last axis, square, rsqrt, w and b as (C,)": (
        lambda F, x, w, b: F.broadcast_add(F.broadcast_mul(w, F.broadcast_mul(
            F.rsqrt(F.square(_centred(F, x, -1)).mean(axis=-1, keepdims=True) + 1e-5),
            _centred(F, x, -1))), b), -1, 2),
    "product with itself, no affine": (
        lambda F, x, w, b: (lambda d: F.broadcast_div(d, F.sqrt(
            (d * d).mean(axis=1, keepdims=True) + 1e-3)))(_centred(F, x, 1)), 1, 0),
    "scale only": (
        lambda F, x, w, b: F.broadcast_mul((lambda d: F.broadcast_div(d, F.sqrt(
            F.square(d).mean(axis=1, keepdims=True) + 1e-3)))(_centred(F, x, 1)),
            w.reshape((1, -1, 1, 1))), 1, 1),
    # left alone: the variance over another axis, eps outside the root, no centring
    "variance over another axis": (
        lambda F, x, w, b: (lambda d: F.broadcast_div(d, F.sqrt(
            F.square(d).mean(axis=2, keepdims=True) + 1e-3)))(_centred(F, x, 1)), None, 0),
    "eps outside the root": (
        lambda F, x, w, b: (lambda d: F.broadcast_div(d, F.sqrt(
            F.square(d).mean(axis=1, keepdims=True)) + 1e-3))(_centred(F, x, 1)), None, 0),
    "RMSNorm": (lambda F, x, w, b: F.broadcast_div(x, F.sqrt(
        F.square(x).mean(axis=1, keepdims=True) + 1e-3)), None, 0),
}


@pytest.mark.parametrize("form", sorted(WRITTEN))
def test_written_layernorms_run_as_one_layernorm(form):
    """A layer normalization written out becomes one ``LayerNorm`` over its axis (the
    scale and shift after it its own), equal up to float32 rounding at the shape it was
    rewritten for and at another; other formulas are left as they were."""
    function, axis, affine = WRITTEN[form]
    x, w, b = mx.sym.var("data"), mx.sym.var("w"), mx.sym.var("b")
    graph = json.loads(function(mx.sym, x, w, b).tojson())
    shape = (3, 6, 5, 6)
    context = PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
        g, {"data": shape, "w": (6,), "b": (6,)}))
    small_powers(graph, context)        # the pass before it: ** 2 as square
    rewritten = json.loads(json.dumps(graph))
    assert written_layernorms(rewritten, context) == {}
    norms = [n for n in rewritten["nodes"] if n["op"] == "LayerNorm"]
    if axis is None:
        assert rewritten == graph and not context.rewritten
        return
    assert len(norms) == 1 and int(norms[0]["attrs"]["axis"]) == axis % 4
    ops = {n["op"] for n in rewritten["nodes"]}
    assert not ops & {"mean", "sqrt", "rsqrt", "square", "broadcast_div", "broadcast_sub",
                      "broadcast_add", "_power_scalar"}, ops
    params = {n["name"] for n in rewritten["nodes"] if n["op"] == "null"}
    assert len(params & {"w", "b"}) == affine
    for size in (shape, (2, 6, 7, 6)):
        arrays = {"data": mx.nd.array(RS.uniform(-3, 5, size).astype("float32")),
                  "w": mx.nd.array(RS.uniform(0.5, 1.5, 6)), "b": mx.nd.array(RS.uniform(-1, 1, 6))}
        ref = _run(graph, arrays).asnumpy()
        np.testing.assert_allclose(_run(rewritten, arrays).asnumpy(), ref, rtol=1e-5, atol=1e-5)


class _WrittenLayerNorm(nn.HybridBlock):
    """ConvNeXt's reference channels-first LayerNorm, ported as written."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(channels,), init=mx.init.One())
            self.bias = self.params.get("bias", shape=(channels,), init=mx.init.Zero())

    def hybrid_forward(self, F, x, weight, bias):
        u = x.mean(axis=1, keepdims=True)
        s = (F.broadcast_sub(x, u) ** 2).mean(axis=1, keepdims=True)
        x = F.broadcast_div(F.broadcast_sub(x, u), F.sqrt(s + 1e-6))
        return F.broadcast_add(F.broadcast_mul(x, weight.reshape((1, -1, 1, 1))),
                               bias.reshape((1, -1, 1, 1)))


def test_a_written_layernorm_leaves_the_int8_net_and_its_export(tmp_path):
    """Between int8 convolutions (ConvNeXt's stem and downsampling): one LayerNorm each,
    the convolutions int8, export reloaded identical at two sizes; ``exclude`` of the
    division that ends it keeps it written out."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 2, strides=2), _WrittenLayerNorm(16), nn.Conv2D(24, 2, strides=2),
            _WrittenLayerNorm(24), nn.Conv2D(8, 3, padding=1))
    net.initialize(mx.init.Xavier())
    for param in net.collect_params(".*weight|.*bias").values():
        if param.shape and len(param.shape) == 1:
            param.initialize(mx.init.Uniform(0.5), force_reinit=True)
            param.set_data(param.data() + 1 if param.name.endswith("weight") else param.data())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 32, 32)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    assert [r.op for r in report].count("LayerNorm") == 2, report
    assert not {"mean", "sqrt", "broadcast_div", "broadcast_mul"} & {r.op for r in report}
    assert all(r.quantized for r in report if r.op == "Convolution"), report
    larger = mx.nd.array(RS.uniform(-1, 1, (2, 3, 48, 40)).astype("float32"))
    assert_matches_and_reloads(net, qnet, (batches[2], larger), tmp_path)
    end = next(r.node for r in report if r.op == "LayerNorm")
    kept = gq.quantize(net, batches[:2], exclude=[end], progress=False)
    assert [r.op for r in kept.report()].count("LayerNorm") == 1


def test_a_written_layernorm_read_by_the_network_too_keeps_its_scale_apart():
    """The normalized tensor is an output besides its scaled one: the scale stays a
    multiplication (folded into the LayerNorm, the first output would be scaled too)."""
    x, w = mx.sym.var("data"), mx.sym.var("w")
    centred = _centred(mx.sym, x, 1)
    normed = mx.sym.broadcast_div(centred, mx.sym.sqrt(
        mx.sym.square(centred).mean(axis=1, keepdims=True) + 1e-3))
    graph = json.loads(mx.sym.Group(
        [normed, mx.sym.broadcast_mul(normed, w.reshape((1, -1, 1)))]).tojson())
    context = PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
        g, {"data": (2, 4, 5), "w": (4,)}))
    rewritten = json.loads(json.dumps(graph))
    written_layernorms(rewritten, context)
    assert [n["op"] for n in rewritten["nodes"]].count("broadcast_mul") == 1
    arrays = {"data": mx.nd.array(RS.uniform(-3, 5, (2, 4, 5))),
              "w": mx.nd.array(RS.uniform(0.5, 1.5, 4))}
    for ours, ref in zip(*(mx.sym.load_json(json.dumps(g)).bind(mx.cpu(), arrays).forward()
                           for g in (rewritten, graph))):
        np.testing.assert_allclose(ours.asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-5)
