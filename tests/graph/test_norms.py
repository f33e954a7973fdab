"""Slow normalizations run as a last-axis LayerNorm (gluon_quant.graph.norms)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.norms import norms_as_last_axis_layernorm
from gluon_quant.graph.passes import PassContext

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
