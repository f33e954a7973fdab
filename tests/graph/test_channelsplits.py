"""Channel slices of a convolution's output run as convolutions of the parts
(graph.channelsplits)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.channelsplits import channel_split_convolutions
from gluon_quant.graph.passes import PassContext

from _checks import assert_matches_and_reloads, image_batches, run_graph

RS = np.random.RandomState(0)
SHAPE = (2, 5, 6, 7)


def _conv(x, groups=1, name="conv"):
    return mx.sym.Convolution(x, kernel=(3, 3), num_filter=8, pad=(1, 1), num_group=groups,
                              name=name)


def _bn_relu(x):
    return mx.sym.relu(mx.sym.BatchNorm(x, fix_gamma=False, name="bn"), name="relu")


def _parts(x, *bounds, axis=1):
    return [mx.sym.slice_axis(x, axis=axis, begin=b, end=e) for b, e in bounds]


#: name -> (graph over "data", convolutions after the rewrite (0: left as it was))
FORMS = {
    "Res2Net: four groups after BatchNorm and ReLU": (
        lambda x: mx.sym.concat(*[p * (i + 1) for i, p in enumerate(
            _parts(_bn_relu(_conv(x)), (0, 2), (2, 4), (4, 6), (6, 8)))], dim=1), 4),
    "a GLU: value and gate halves": (
        lambda x: (lambda a, b: a * mx.sym.sigmoid(b))(*_parts(_conv(x), (0, 4), (4, 8))), 2),
    "the last axis counted from the end, part of the channels": (
        lambda x: _parts(_conv(x), (2, 5), axis=-3)[0], 1),
    # (MXNet 1.9.1's oneDNN ``slice`` of a convolution's output crashes or fails with
    # "could not construct a sub-memory": the reference is run with slice_axis)
    "slice with channel bounds only": (
        lambda x: mx.sym.slice(_conv(x), begin=(None, None, None, None),
                               end=(None, 4, None, None)), 1),
    # left
    "overlapping slices": (
        lambda x: mx.sym.concat(*_parts(_conv(x), (0, 5), (3, 8)), dim=1), 0),
    "a reader that is no slice": (
        lambda x: (lambda c: mx.sym.concat(_parts(c, (0, 4))[0], mx.sym.sum(
            c, axis=1, keepdims=True), dim=1))(_conv(x)), 0),
    "a grouped convolution": (
        lambda x: mx.sym.concat(*_parts(_conv(mx.sym.concat(x, x, dim=1), groups=2),
                                        (0, 4), (4, 8)), dim=1), 0),
    "a slice of rows": (lambda x: _parts(_conv(x), (0, 3), axis=2)[0], 0),
}


def _params(graph):
    sym = mx.sym.load_json(json.dumps(graph))
    args, _, aux = sym.infer_shape(data=SHAPE)
    names = sym.list_arguments() + sym.list_auxiliary_states()
    return {n: mx.nd.array(RS.uniform(0.5 if "var" in n else -1, 1.5 if "var" in n else 1,
                                      s).astype("float32"))
            for n, s in zip(names, args + aux) if n != "data"}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_split_runs_as_convolutions_with_the_same_values(form):
    """No slice left, one convolution per slice with its rows of the parameters (and a
    copy of the BatchNorm and ReLU), the same values to float rounding; the forms that
    are no split of a convolution's channels are left as they were."""
    function, convs = FORMS[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    params = _params(graph)
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": SHAPE}),
                          param_shapes={k: v.shape for k, v in params.items()})
    assert channel_split_convolutions(graph, context) == {}
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    if not convs:
        assert graph == before
        return
    assert ops.count("Convolution") == convs and not {"slice_axis", "slice"} & set(ops), ops
    assert ops.count("BatchNorm") == (convs if "BatchNorm" in form else 0)
    new_params = dict(params)
    for rewrite in context.param_rewrites:
        rewrite.apply(new_params)
    x = mx.nd.array(RS.uniform(-2, 2, SHAPE).astype("float32"))
    if form == "slice with channel bounds only":
        before = json.loads(_parts(_conv(mx.sym.var("data")), (0, 4))[0].tojson())
    old, new = (mx.sym.load_json(json.dumps(g)) for g in (before, graph))
    ref, out = run_graph(old, x, params), run_graph(new, x, new_params)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_an_excluded_split_is_left():
    graph = json.loads(FORMS["a GLU: value and gate halves"][0](mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    params = _params(graph)
    for excluded in ("conv", [n["name"] for n in graph["nodes"] if n["op"] == "slice_axis"][0]):
        context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": SHAPE}),
                              param_shapes={k: v.shape for k, v in params.items()},
                              excluded=frozenset([excluded]))
        assert channel_split_convolutions(graph, context) == {} and graph == before


class _Res2Block(nn.HybridBlock):
    """Res2Net's bottleneck: a 1x1 convolution's output split in four; each group but the
    last through a 3x3 convolution, added to the next group first; concatenated."""

    def __init__(self, channels=32, scale=4, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        with self.name_scope():
            self.reduce = nn.HybridSequential()
            self.reduce.add(nn.Conv2D(channels, 1, use_bias=False), nn.BatchNorm(),
                            nn.Activation("relu"))
            self.convs = nn.HybridSequential()
            for _ in range(scale - 1):
                self.convs.add(nn.Conv2D(channels // scale, 3, padding=1, activation="relu"))
            self.expand = nn.Conv2D(channels, 1)

    def hybrid_forward(self, F, x):
        parts = F.split(self.reduce(x), self.scale, axis=1)
        outs, previous = [], None
        for i in range(self.scale - 1):
            previous = self.convs[i](parts[i] if previous is None else parts[i] + previous)
            outs.append(previous)
        outs.append(parts[self.scale - 1])
        return F.relu(self.expand(F.concat(*outs, dim=1)) + x)


def test_res2net_blocks_run_int8_without_slices(tmp_path):
    """Two Res2Net blocks, batch 16 at 64 px: int8 17.5 -> 9.9 ms, the 8 fp32 slices (a
    dequantize, a copy and a quantize each) gone; every convolution int8, the int8 net
    matches fp32 at another size and reloads bit-identically."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(32, 3, padding=1, activation="relu"), _Res2Block(), _Res2Block(),
            nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    batches = image_batches(net, RS, (4, 3, 16, 16), 2)
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    assert not [r for r in report if r.op in ("slice_axis", "SliceChannel")], str(report)
    convs = [r for r in report if r.op == "Convolution"]
    assert len(convs) == 1 + 2 * (4 + 3 + 1) and all(r.quantized for r in convs)
    assert len([r for r in report if "channel slices" in r.reason]) == 2 * 4
    other = mx.nd.array(RS.uniform(0, 1, (2, 3, 24, 20)).astype("float32"))
    assert_matches_and_reloads(net, qnet, batches[:1] + [other], tmp_path)
