"""Sums of parallel convolution, BatchNorm and identity branches of one input merged into
one convolution (graph.branches)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.branches import parallel_convolutions
from gluon_quant.graph.passes import PassContext

from _checks import assert_matches_and_reloads, image_batches, run_graph
from fuzz.blocks import RepBranches

RS = np.random.RandomState(0)
SHAPE = (2, 6, 7, 8)


def _conv(x, kernel, name, stride=1, bias=False, dilate=1, groups=1):
    return mx.sym.Convolution(x, kernel=kernel, num_filter=6, stride=(stride, stride),
                              pad=tuple(k // 2 * dilate for k in kernel), no_bias=not bias,
                              dilate=(dilate, dilate), num_group=groups, name=name)


def _bn(x, name):
    return mx.sym.BatchNorm(x, fix_gamma=False, eps=1e-5, name=name)


#: name -> (graph over "data", whether the sum becomes one convolution)
FORMS = {
    "RepVGG: 3x3+BN, 1x1+BN, BN of the input": (
        lambda x: mx.sym.relu(_bn(_conv(x, (3, 3), "k3"), "bn3")
                              + _bn(_conv(x, (1, 1), "k1"), "bn1") + _bn(x, "bnid")), True),
    "ACNet: 3x3, 1x3, 3x1, each with its BatchNorm": (
        lambda x: _bn(_conv(x, (3, 3), "k3"), "bn3") + _bn(_conv(x, (1, 3), "h"), "bnh")
        + _bn(_conv(x, (3, 1), "v"), "bnv"), True),
    "two biased convolutions, no BatchNorm": (
        lambda x: _conv(x, (3, 3), "a", bias=True) + _conv(x, (5, 5), "b", bias=True), True),
    "a residual around one convolution": (lambda x: x + _conv(x, (3, 3), "a"), True),
    "grouped, with the identity": (
        lambda x: _conv(x, (3, 3), "a", groups=2) + _conv(x, (1, 1), "b", groups=2) + x,
        True),
    "both strided": (
        lambda x: _conv(x, (3, 3), "a", stride=2) + _conv(x, (1, 1), "b", stride=2), True),
    # left
    "different inputs": (
        lambda x: _conv(x, (3, 3), "a") + _conv(mx.sym.relu(x), (3, 3), "b"), False),
    "a dilated branch": (
        lambda x: _conv(x, (3, 3), "a", dilate=2) + _conv(x, (1, 1), "b"), False),
    "an even kernel": (
        lambda x: mx.sym.Convolution(x, kernel=(2, 2), num_filter=6, pad=(1, 1), no_bias=True,
                                     name="a") + mx.sym.Convolution(
            x, kernel=(2, 2), num_filter=6, pad=(1, 1), no_bias=True, name="b"), False),
    "a branch read twice": (
        lambda x: (lambda a: mx.sym.Group([a + _conv(x, (1, 1), "b"), a * 2]))(
            _conv(x, (3, 3), "a")), False),
}


def _params(sym):
    args, _, aux = sym.infer_shape(data=SHAPE)
    names = sym.list_arguments() + sym.list_auxiliary_states()
    return {n: mx.nd.array(RS.uniform(0.5, 1.5, s) if n.endswith(("var", "gamma")) else
                           RS.uniform(-1, 1, s)).astype("float32")
            for n, s in zip(names, args + aux) if n != "data"}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_parallel_branches_become_one_convolution_with_the_same_values(form):
    """One convolution with the largest kernel and no BatchNorm or sum left, the same
    values to float rounding; forms whose branches are not one centered convolution of
    one input are left as they were."""
    function, merged = FORMS[form]
    sym = function(mx.sym.var("data"))
    graph = json.loads(sym.tojson())
    before = json.loads(json.dumps(graph))
    params = _params(sym)
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": SHAPE}),
                          param_shapes={k: v.shape for k, v in params.items()})
    assert parallel_convolutions(graph, context) == {}
    if not merged:
        assert graph == before
        return
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert ops.count("Convolution") == 1 and not {"BatchNorm", "elemwise_add", "_Plus",
                                                  "_plus"} & set(ops), ops
    new_params = dict(params)
    for rewrite in context.param_rewrites:
        rewrite.apply(new_params)
    x = mx.nd.array(RS.uniform(-2, 2, SHAPE).astype("float32"))
    new = mx.sym.load_json(json.dumps(graph))
    np.testing.assert_allclose(run_graph(new, x, new_params), run_graph(sym, x, params),
                               rtol=1e-4, atol=1e-5)


def test_repvgg_blocks_run_as_single_int8_convolutions(tmp_path):
    """Two RepVGG blocks of 64 channels, batch 16 at 64 px: int8 11.7 -> 6.8 ms, cosine to
    fp32 0.9974 -> 0.9999 (one quantized convolution per block instead of three branches
    and an int8 sum of differently scaled tensors). The int8 net matches fp32 at another
    size, reloads bit-identically, and ``exclude`` keeps a block's branches."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, activation="relu"), RepBranches(16),
            RepBranches(16), nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    batches = image_batches(net, RS, (4, 3, 16, 16), 2)
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    assert [r.op for r in report] == ["Convolution"] * 3 + ["Pooling", "FullyConnected"], \
        str(report)
    assert len([r for r in report if "parallel branches" in r.reason]) == 2
    other = mx.nd.array(RS.uniform(0, 1, (2, 3, 24, 20)).astype("float32"))
    assert_matches_and_reloads(net, qnet, batches[:1] + [other], tmp_path, min_cosine=0.9995)
    kept = gq.quantize(net, batches, progress=False, exclude=["*repbranches0__plus*"])
    assert len([r for r in kept.report() if "parallel branches" in r.reason]) == 1
