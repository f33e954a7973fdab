"""Per-channel scales and shifts after a layer folded into it (gluon_quant.graph.affine)."""
import json

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.debug.metrics import cosine
from gluon_quant.graph.affine import affine_into_layers
from gluon_quant.graph.passes import PassContext

RS = np.random.RandomState(0)


class FrozenBN(nn.HybridBlock):
    """Detectron-style frozen BatchNorm: ``x * scale + shift`` over ``(1, C, 1, 1)``."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.scale = self.params.get("scale", shape=(1, channels, 1, 1),
                                         init=mx.init.Uniform(1.0), grad_req="null")
            self.shift = self.params.get("shift", shape=(1, channels, 1, 1),
                                         init=mx.init.Uniform(0.2), grad_req="null")

    def hybrid_forward(self, F, x, scale, shift):  # pylint: disable=arguments-differ
        return F.broadcast_add(F.broadcast_mul(x, scale), shift)


def _frozen_cnn():
    net = nn.HybridSequential(prefix="frozen_")
    with net.name_scope():
        for channels in (16, 32):
            net.add(nn.Conv2D(channels, 3, padding=1, use_bias=False), FrozenBN(channels),
                    nn.Activation("relu"))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net


def test_frozen_batchnorm_folds_into_its_convolution(tmp_path):
    """Each frozen BatchNorm split the int8 chain (the affine fp32, its ReLU unfused): it
    is part of its convolution now, which fuses with the ReLU."""
    net = _frozen_cnn()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(0, 1, (8, 3, 16, 16)).astype("float32"))
               for _ in range(4)]
    qnet = gq.quantize(net, batches[:3], progress=False)
    rows = list(qnet.report())
    assert [(r.op, r.pattern, r.quantized) for r in rows[:2]] == \
        [("Convolution", "Convolution+Activation(relu)", True)] * 2, qnet.report()
    assert not any(r.op.startswith("broadcast") for r in rows)
    assert "the scale/shift after it folded in (frozen_frozenbn0_broadcast_mul0, " \
        "frozen_frozenbn0_broadcast_add0)" in rows[0].reason
    assert cosine(net(batches[3]).asnumpy(), qnet(batches[3]).asnumpy()) > 0.999
    assert net.collect_params()["frozen_conv0_weight"].shape == (16, 3, 3, 3)
    qnet.export(str(tmp_path / "frozen"))
    back = gq.QuantizedSymbolBlock.imports(str(tmp_path / "frozen"))
    assert np.array_equal(back(batches[3]).asnumpy(), qnet(batches[3]).asnumpy())


class Affines(nn.HybridBlock):
    """Affines the fold takes (a ``(C, 1, 1)`` scale written ``gamma * x`` first, a
    one-value shift, LayerScale over a dense layer's features, a bias on a layer built
    without one, a constant quotient and difference, a BatchNorm written out) and those
    it must leave: a scale varying over space, a layer whose output is read twice, a
    scale computed from the data (squeeze-excite), a layer's output subtracted from a
    parameter."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(8, 3, padding=1)
            self.gamma = self.params.get("gamma", shape=(8, 1, 1), init=mx.init.Uniform(1))
            self.one = self.params.get("one", shape=(1,), init=mx.init.Uniform(1))
            self.spatial = self.params.get("spatial", shape=(1, 1, 6, 6),
                                           init=mx.init.Uniform(1))
            self.conv2 = nn.Conv2D(8, 1, use_bias=False)
            self.conv3 = nn.Conv2D(8, 1)
            self.conv4 = nn.Conv2D(8, 1)
            self.conv5 = nn.Conv2D(8, 1, use_bias=False)
            self.conv6 = nn.Conv2D(8, 1)
            self.conv7 = nn.Conv2D(8, 1, use_bias=False)
            self.mean = self.params.get("mean", shape=(8,), init=mx.init.Uniform(1))
            self.var = self.params.get("var", shape=(8,), init=mx.init.Constant(1.3))
            self.dense = nn.Dense(12, flatten=False)
            self.layer_scale = self.params.get("layer_scale", shape=(12,),
                                               init=mx.init.Uniform(1))
            self.bias = self.params.get("bias", shape=(1, 12), init=mx.init.Uniform(1))

    def hybrid_forward(self, F, x, gamma, one, spatial, layer_scale, bias, mean, var):
        # pylint: disable=arguments-differ
        y = F.broadcast_add(F.broadcast_mul(gamma, self.conv(x)), one)      # folded
        s = F.broadcast_mul(self.conv2(y), spatial)                         # left
        twice = self.conv3(y)
        kept = F.broadcast_mul(twice, gamma) + twice                        # left
        se = F.broadcast_mul(self.conv2(y), F.sigmoid(F.mean(y, axis=(2, 3), keepdims=True)))
        t = F.transpose(y, axes=(0, 2, 3, 1))
        d = F.broadcast_add(F.broadcast_mul(self.dense(t), layer_scale), bias)   # folded
        e = self.conv4(y) / 4 - 0.5                                         # folded
        mean, var = mean.reshape((1, -1, 1, 1)), var.reshape((1, -1, 1, 1))
        m = F.broadcast_div(F.broadcast_sub(self.conv5(y), mean), F.sqrt(var + 1e-5))  # folded
        r = F.broadcast_sub(mean, self.conv6(y))                            # left: t - x
        f = self.conv7(y) + 0.25                    # folded: a constant bias of its own
        return s, kept, se, d, e, m, r, f


def test_the_fold_is_exact_and_leaves_other_affines():
    net = Affines()
    net.initialize()
    x = mx.nd.array(RS.uniform(-1, 1, (2, 3, 6, 6)).astype("float32"))
    ref = net(x)
    sym = mx.sym.Group(list(net(mx.sym.var("data"))))
    graph = json.loads(sym.tojson())
    params = {p.name: p.data() for p in net.collect_params().values()}
    context = PassContext(spec=ONEDNN, param_shapes={k: v.shape for k, v in params.items()},
                          infer_shapes=lambda g: infer_graph_shapes(g, {"data": x.shape}))
    assert affine_into_layers(graph, context) == {}
    for step in context.param_rewrites:
        step.apply(params)
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert ops.count("broadcast_mul") == 3 and ops.count("broadcast_add") == 0, ops
    assert ops.count("broadcast_sub") == 1 and "broadcast_div" not in ops, ops
    assert sorted(context.rewritten) == ["affines0_conv0_fwd", "affines0_conv3_fwd",
                                         "affines0_conv4_fwd", "affines0_conv6_fwd",
                                         "affines0_dense0_fwd"]
    assert context.rewritten["affines0_conv3_fwd"] == "the scale/shift after it folded in " \
        "(affines0__divscalar0, affines0__minusscalar0)"
    assert not any(n["op"].endswith("_scalar") for n in graph["nodes"])
    conv = next(n for n in graph["nodes"] if n["name"] == "affines0_dense0_fwd")
    assert conv["attrs"]["no_bias"] == "False"
    rewritten = mx.sym.load_json(json.dumps(graph))
    arrays = dict(params, data=x)
    out = rewritten.eval(ctx=mx.cpu(), **{k: arrays[k] for k in rewritten.list_arguments()})
    for a, b in zip(ref, out):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)


class ScaledResidual(nn.HybridBlock):
    """EDSR's residual block: ``x + conv(relu(conv(x))) * 0.1``."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1 = nn.Conv2D(channels, 3, padding=1)
            self.conv2 = nn.Conv2D(channels, 3, padding=1)

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        return x + self.conv2(F.relu(self.conv1(x))) * 0.1


def test_residual_scaling_folds_so_the_sum_fuses():
    """The constant scale between a convolution and its residual sum kept them apart:
    folded, the convolution fuses with the sum."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1), ScaledResidual(16), ScaledResidual(16))
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(0, 1, (4, 3, 12, 12)).astype("float32"))
               for _ in range(4)]
    qnet = gq.quantize(net, batches[:3], progress=False)
    sums = [r for r in qnet.report() if r.pattern == "Convolution+elemwise_add"]
    assert len(sums) == 2 and all(r.quantized for r in sums), qnet.report()
    assert all("the scale/shift after it folded in (" in r.reason for r in sums)
    assert cosine(net(batches[3]).asnumpy(), qnet(batches[3]).asnumpy()) > 0.999


def test_shapes_are_inferred_whatever_the_node_order():
    """A pass that appends a weight places it before its first reader, an order that
    differs from MXNet's own: shape inference then found no shape at all (the folds on
    cuDNN lost their weight shapes, "weight shape unknown", and later passes skipped
    their rewrites)."""
    conv = mx.sym.Convolution(mx.sym.var("data"), num_filter=4, kernel=(3, 3), name="conv")
    graph = json.loads(mx.sym.relu(conv, name="act").tojson())
    nodes = graph["nodes"]
    assert [n["name"] for n in nodes[:3]] == ["data", "conv_weight", "conv_bias"]
    order = [1, 0, 2] + list(range(3, len(nodes)))      # weight first: still topological
    moved = {old: new for new, old in enumerate(order)}
    graph["nodes"] = [dict(nodes[i], inputs=[[moved[e[0]]] + e[1:] for e in nodes[i]["inputs"]])
                      for i in order]
    graph["arg_nodes"] = [moved[i] for i in graph["arg_nodes"]]
    graph["heads"] = [[moved[h[0]]] + h[1:] for h in graph["heads"]]
    graph.pop("node_row_ptr", None)
    shapes = infer_graph_shapes(graph, {"data": (1, 2, 5, 5)})
    assert shapes[("conv_weight", 0)] == (4, 2, 3, 3)
    assert shapes[("act", 0)] == (1, 4, 3, 3)


def test_a_folded_convolution_keeps_its_weight_shape_on_cudnn():
    """cuDNN's int8 convolution needs channel counts that are multiples of 4, read from
    the weight's shape: a folded weight had none, and the convolution stayed fp32."""
    net = _frozen_cnn()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(0, 1, (4, 3, 16, 16)).astype("float32"))
               for _ in range(2)]
    qnet = gq.quantize(net, batches, backend="cudnn", progress=False)
    convs = [r for r in qnet.report() if r.op == "Convolution"]
    assert "input channels 3 is not a multiple of 4" in convs[0].reason
    assert convs[1].quantized, qnet.report()


class CosineHead(nn.HybridBlock):
    """A face-recognition (ArcFace/CosFace) head: ``s * <x/|x|, w/|w|>`` over a
    ``(classes, units)`` weight normalized in the graph, written with
    ``L2Normalization`` or, in the second form, ``norm`` and ``relu``-free division."""

    def __init__(self, classes, units, l2norm=True, **kwargs):
        super().__init__(**kwargs)
        self.l2norm, self.classes = l2norm, classes
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(classes, units),
                                          init=mx.init.Xavier())

    def hybrid_forward(self, F, x, weight):  # pylint: disable=arguments-differ
        if self.l2norm:
            w = F.L2Normalization(weight, mode="instance")
        else:
            w = F.broadcast_div(weight, F.sqrt(F.sum(F.square(weight), axis=1,
                                                     keepdims=True)))
        x = F.L2Normalization(x, mode="instance")
        return F.FullyConnected(x, w, no_bias=True, num_hidden=self.classes) * 30.0


def test_a_normalized_classifier_weight_is_folded_with_its_scale(tmp_path):
    """The head's weight ``L2Normalization(w)`` was recomputed at every call in fp32, which
    also kept the scale after the product fp32 (``_mul_scalar``) and its fp32 parameters
    in the export: both fold, the weight is packed as int8, the head is one int8 layer."""
    for l2norm in (True, False):
        net = nn.HybridSequential()
        net.add(nn.Conv2D(16, 3, strides=2, use_bias=False), nn.Activation("relu"),
                nn.Flatten(), nn.Dense(64), CosineHead(200, 64, l2norm=l2norm))
        net.initialize()
        batches = [mx.nd.array(RS.uniform(-1, 1, (8, 3, 12, 12)).astype("float32"))
                   for _ in range(3)]
        qnet = gq.quantize(net, batches[:2], progress=False)
        ops = [r.op for r in qnet.report()]
        assert ops.count("FullyConnected") == 2 and "_mul_scalar" not in ops, qnet.report()
        assert not any(op in ops for op in ("broadcast_div", "sqrt", "sum")), qnet.report()
        assert cosine(net(batches[2]).asnumpy(), qnet(batches[2]).asnumpy()) > 0.999
        paths = qnet.export(str(tmp_path / ("head%d" % l2norm)))
        packed = json.load(open(paths["meta"]))["packed"]
        head = [r for r in qnet.report() if r.op == "FullyConnected"][-1]
        assert [p["shape"] for p in packed if p["weight"].startswith("cosinehead")] == \
            ([[200, 64]] if head.quantized else []), packed     # fp32 where pairs saturate
        back = gq.QuantizedSymbolBlock.imports(str(tmp_path / ("head%d" % l2norm)))
        assert np.array_equal(back(batches[2]).asnumpy(), qnet(batches[2]).asnumpy())
