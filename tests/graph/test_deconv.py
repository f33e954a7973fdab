"""graph.deconv: a Deconvolution runs as an int8 convolution + a depth-to-space shuffle.

MXNet 1.9.1 has no int8 Deconvolution kernel; the rewrite is exact in fp32 and, at
simple_pose's shapes (512/256 channels, 4x4 stride 2), one layer alone ran 2.06-2.42x
faster in int8 than the fp32 Deconvolution (docs/performance.md).
"""
import dataclasses
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.backends import CUDNN, ONEDNN
from gluon_quant.graph.deconv import (SHUFFLE_ATTR, conv_geometry, deconv_as_conv,
                                      intensity_of, why_not_rewritten)
from gluon_quant.graph.passes import PassContext
from conftest import coverage

RS = np.random.RandomState(3)
#: oneDNN's spec without the speed condition (the exactness tests use small layers).
ANY_SIZE = dataclasses.replace(ONEDNN, ops=dict(ONEDNN.ops, Deconvolution=dataclasses.replace(
    ONEDNN.ops["Deconvolution"], min_intensity=0)))

#: (kernel, stride, pad, adj, bias, input size): every crop kind (none, by the shuffle's
#: pad and adj, by a slice), kernels shorter than, equal to and longer than the stride,
#: stride 1, strides that differ between axes, 1-D.
CASES = [(4, 2, 1, 0, True, (8, 6)), (4, 2, 0, 0, False, (5, 7)), (3, 2, 1, 1, True, (6, 6)),
         (3, 2, 0, 0, True, (4, 5)), (2, 2, 0, 0, False, (3, 3)), (5, 3, 2, 2, True, (4, 6)),
         (3, 1, 1, 0, True, (5, 5)), (1, 2, 0, 1, True, (4, 4)), (7, 3, 1, 0, True, (3, 4)),
         (4, 4, 0, 3, True, (3, 3)), (3, 2, 2, 1, False, (5, 5)),
         ((4, 3), (2, 1), (1, 1), (1, 0), True, (5, 6)), ((1, 5), (1, 3), (0, 1), (0, 2), False,
                                                         (4, 7)),
         ((4,), (2,), (1,), (0,), True, (9,)), ((5,), (3,), (0,), (2,), False, (6,))]


def _tuple(value, rank):
    return tuple(value) if isinstance(value, tuple) else (value,) * rank


def _run(sym, params, data):
    args = {n: data if n == "data" else params[n] for n in sym.list_arguments()}
    aux = {n: params[n] for n in sym.list_auxiliary_states()}
    return sym.bind(mx.cpu(), args, aux_states=aux).forward()[0].asnumpy()


def _deconv_graph(kernel, stride, pad, adj, bias, cin=5, cout=3, rank=2, **extra):
    x = mx.sym.var("data")
    kernel = _tuple(kernel, rank)
    y = mx.sym.Deconvolution(x, kernel=kernel, stride=_tuple(stride, rank),
                             pad=_tuple(pad, rank), adj=_tuple(adj, rank), num_filter=cout,
                             no_bias=not bias, name="dc", **extra)
    y = mx.sym.BatchNorm(y, name="bn", fix_gamma=False)
    y = mx.sym.Activation(y, act_type="relu", name="act")
    groups = extra.get("num_group", 1)
    params = {"dc_weight": mx.nd.array(RS.randn(cin, cout // groups, *kernel)),
              "bn_gamma": mx.nd.array(RS.randn(cout)), "bn_beta": mx.nd.array(RS.randn(cout)),
              "bn_moving_mean": mx.nd.array(RS.randn(cout)),
              "bn_moving_var": mx.nd.array(RS.rand(cout) + 0.5)}
    if bias:
        params["dc_bias"] = mx.nd.array(RS.randn(cout))
    return y, params


def _rewrite(sym, params, spec=ANY_SIZE):
    graph = json.loads(sym.tojson())
    context = PassContext(spec=spec, param_shapes={n: a.shape for n, a in params.items()})
    deconv_as_conv(graph, context)
    rewritten = dict(params)
    for rewrite in context.param_rewrites:
        rewrite.apply(rewritten)
    return _mxnet.load_graph(graph), rewritten, graph, context


@pytest.mark.parametrize("kernel,stride,pad,adj,bias,size", CASES)
def test_rewrite_is_exact_in_fp32(kernel, stride, pad, adj, bias, size):
    sym, params = _deconv_graph(kernel, stride, pad, adj, bias, rank=len(size))
    data = mx.nd.array(RS.randn(2, 5, *size))
    expected = _run(sym, params, data)
    new, new_params, graph, context = _rewrite(sym, params)
    got = _run(new, new_params, data)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    assert np.abs(expected).max() > 1.0        # not a trivially zero comparison
    ops = [(n["op"], n["name"]) for n in graph["nodes"] if n["op"] != "null"]
    # the convolution keeps the layer's name; BatchNorm and ReLU move before the shuffle
    assert ops[:3] == [("Convolution", "dc"), ("BatchNorm", "bn"), ("Activation", "act")]
    shuffles = [n for n in graph["nodes"] if (n.get("attrs") or {}).get(SHUFFLE_ATTR)]
    assert len(shuffles) == (np.prod(stride) > 1)
    assert "dc" in context.rewritten


def test_geometry_of_simple_pose_layers():
    # 4x4 stride 2 pad 1: 2x2 taps per phase, padding 1, one row cropped at each end
    assert conv_geometry(4, 2, 1, 0) == (2, 1, 1, 1)
    assert conv_geometry(2, 2, 0, 0) == (1, 0, 0, 0)


@pytest.mark.parametrize("extra,reason", [
    ({"num_group": 3}, "grouped"), ({"dilate": (2, 2)}, "dilated")])
def test_unsupported_deconvolutions_stay_as_they_are(extra, reason):
    sym, params = _deconv_graph(4, 2, 1, 0, True, cin=6, **extra)
    _, _, graph, context = _rewrite(sym, params)
    assert [n["op"] for n in graph["nodes"] if n["op"] != "null"][0] == "Deconvolution"
    assert not context.rewritten and not context.param_rewrites
    node = [n for n in graph["nodes"] if n["op"] == "Deconvolution"][0]
    assert reason in why_not_rewritten(node, graph["nodes"], ANY_SIZE.ops["Deconvolution"],
                                       context.param_shapes)
    # layers too small to gain (measured) stay too: 5 -> 3 channels, 4x4 stride 2
    assert intensity_of((5, 3, 4, 4), (2, 2)) == pytest.approx(240 / 17.0)
    _, _, graph, context = _rewrite(*_deconv_graph(4, 2, 1, 0, True), spec=ONEDNN)
    assert not context.rewritten
    # and the cuDNN backend does not declare the rewrite (not measured there)
    _, _, graph, context = _rewrite(*_deconv_graph(4, 2, 1, 0, True), spec=CUDNN)
    assert not context.rewritten


class _PoseLike(nn.HybridBlock):
    """simple_pose's shape in small: a strided backbone, three Deconv-BN-ReLU, 1x1 head."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            for channels in (32, 64, 128):
                self.body.add(nn.Conv2D(channels, 3, 2, 1, use_bias=False), nn.BatchNorm(),
                              nn.Activation("relu"))
            self.head = nn.HybridSequential()
            for _ in range(3):
                # 128 -> 128, 4x4 stride 2: 410 multiply-adds per value moved, the
                # smallest measured faster in int8 (1.40x alone)
                self.head.add(nn.Conv2DTranspose(128, 4, 2, 1, use_bias=False),
                              nn.BatchNorm(), nn.Activation("relu"))
            self.out = nn.Conv2D(8, 1)

    def hybrid_forward(self, F, x):
        return self.out(self.head(self.body(x)))


def _pose_net():
    net = _PoseLike()
    net.initialize(mx.init.Xavier(magnitude=2))
    return net


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def pose():
    net = _pose_net()
    batches = [mx.nd.array(RS.rand(4, 3, 32, 32).astype("float32")) for _ in range(2)]
    net(batches[0])
    for param in net.collect_params().values():     # BatchNorm statistics of a trained net
        if param.name.endswith("running_var"):
            param.set_data(mx.nd.array(RS.rand(*param.shape) + 0.5))
    return net, batches, gq.quantize(net, batches, progress=False)


def test_pose_like_net_runs_its_deconvolutions_in_int8(pose):
    net, batches, qnet = pose
    report = qnet.report()
    deconvs = [r for r in report if "Deconvolution (kernel" in r.reason]
    assert len(deconvs) == 3
    assert all(r.quantized and r.pattern == "Convolution+BatchNorm+Activation(relu)"
               for r in deconvs)
    assert coverage(report) == (7, 7)
    shuffles = [r for r in report if r.node.endswith("_depth_to_space")]
    assert len(shuffles) == 3 and not any(r.quantized for r in shuffles)
    assert all("moves data only" in r.reason for r in shuffles)
    x = mx.nd.array(RS.rand(4, 3, 32, 32).astype("float32"))
    assert _cos(net(x).asnumpy(), qnet(x).asnumpy()) >= 0.999


def test_without_the_rewrite_deconvolutions_say_why_they_stay_fp32(pose, disable_pass):
    net, batches, _ = pose
    disable_pass("deconv_as_conv")
    report = gq.quantize(net, batches, progress=False).report()
    deconvs = [r for r in report if r.op == "Deconvolution"]
    assert len(deconvs) == 3 and not any(r.quantized for r in deconvs)
    assert all(r.reason == "no int8 Deconvolution kernel; not run as deconv_as_conv: pass "
               "disabled" for r in deconvs)


def test_an_excluded_deconvolution_keeps_its_own_operator(pose):
    net, batches, qnet = pose
    name = [r.layer for r in qnet.report() if "Deconvolution (kernel" in r.reason][0]
    report = gq.quantize(net, batches, exclude=[name], progress=False).report()
    assert [(r.op, r.quantized, r.reason) for r in report if r.layer == name] == [
        ("Deconvolution", False, "excluded by user (%r)" % name)]
    assert sum("Deconvolution (kernel" in r.reason for r in report) == 2


def test_small_deconvolutions_stay_fp32_and_say_why():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, 2, 1), nn.Conv2DTranspose(16, 4, 2, 1), nn.Activation("relu"),
            nn.Conv2D(4, 1))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.rand(2, 3, 16, 16).astype("float32"))
    net(x)
    report = gq.quantize(net, [x], progress=False).report()
    (deconv,) = [r for r in report if r.op == "Deconvolution"]
    assert not deconv.quantized
    assert deconv.reason.startswith("no int8 Deconvolution kernel; not run as deconv_as_conv: "
                                    "51 multiply-adds per value moved through fp32")


def test_rewritten_layers_export_and_reload_bit_identically(pose, tmp_path):
    _, _, qnet = pose
    x = mx.nd.array(RS.rand(4, 3, 32, 32).astype("float32"))
    paths = qnet.export(str(tmp_path / "pose"))
    meta = json.load(open(paths["meta"]))
    packed = [p["weight"] for p in meta["packed"]]
    assert sum(w.endswith("_as_conv_weight") for w in packed) == 3
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "pose"))
    assert np.array_equal(loaded(x).asnumpy(), qnet(x).asnumpy())


def test_1d_deconvolution_runs_in_int8_through_the_2d_lift():
    net = nn.HybridSequential()
    # 256 -> 256, kernel 8, stride 2: 683 multiply-adds per value moved
    net.add(nn.Conv1D(256, 3, 2, 1), nn.BatchNorm(), nn.Activation("relu"),
            nn.Conv1DTranspose(256, 8, 2, 3, use_bias=False), nn.BatchNorm(),
            nn.Activation("relu"), nn.Conv1D(4, 1))
    net.initialize(mx.init.Xavier(magnitude=2))
    x = mx.nd.array(RS.rand(2, 16, 64).astype("float32"))
    net(x)
    for param in net.collect_params().values():
        if param.name.endswith("running_var"):
            param.set_data(mx.nd.array(RS.rand(*param.shape) + 0.5))
    qnet = gq.quantize(net, [x], progress=False)
    (deconv,) = [r for r in qnet.report() if "Deconvolution (kernel (8,)" in r.reason]
    assert deconv.quantized and deconv.pattern == "Convolution+BatchNorm+Activation(relu)"
    assert coverage(qnet.report()) == (3, 3)
    assert _cos(net(x).asnumpy(), qnet(x).asnumpy()) >= 0.999
