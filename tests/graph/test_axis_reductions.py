"""Means, maxima and sums over one axis run as global pooling (graph.pooling.axis_reductions)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.pooling import axis_reductions

from _checks import assert_matches_and_reloads

RS = np.random.RandomState(0)

#: name -> (reduction, input shape, the operator it runs as: None where it is left alone)
FORMS = {
    "token mean, axis=1": (lambda x: mx.sym.mean(x, axis=1), (4, 7, 5), "Deconvolution"),
    "attention pooling's sum over tokens, keepdims": (
        lambda x: mx.sym.sum(x, axis=1, keepdims=True), (4, 7, 5), "Deconvolution"),
    "channel max, keepdims": (lambda x: mx.sym.max(x, axis=1, keepdims=True), (4, 6, 5, 3),
                              "Pooling"),
    "channel mean, keepdims": (lambda x: mx.sym.mean(x, axis=1, keepdims=True),
                               (4, 6, 5, 3), "Deconvolution"),
    "ResNeSt's sum over the radix axis of 5-D": (
        lambda x: mx.sym.sum(x, axis=1), (2, 3, 4, 5, 6), "Deconvolution"),
    "mean over axis 1 of 6-D, keepdims": (
        lambda x: mx.sym.mean(x, axis=1, keepdims=True), (2, 3, 2, 3, 4, 2), "Deconvolution"),
    "sum over the last axis": (lambda x: mx.sym.sum(x, axis=-1), (4, 6, 5), "Pooling"),
    "sum over axis 2 of 5-D, keepdims": (
        lambda x: mx.sym.sum(x, axis=2, keepdims=True), (2, 3, 4, 5, 6), "Pooling"),
    "mean over the features of rows": (lambda x: mx.sym.mean(x, axis=1), (4, 6), "Pooling"),
    "mean over a CRNN's height": (lambda x: mx.sym.mean(x, axis=2), (4, 6, 5, 9), "Pooling"),
    "sum over the batch": (lambda x: mx.sym.sum(x, axis=0, keepdims=True), (4, 6, 5),
                           "Pooling"),
    # left alone: two axes that are not the spatial ones, exclude, a dtype
    "mean over axes (1, 2)": (lambda x: mx.sym.mean(x, axis=(1, 2)), (4, 6, 5, 3), None),
    "max with exclude": (lambda x: mx.sym.max(x, axis=1, exclude=True), (4, 6, 5), None),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_reduction_computes_what_it_did_at_any_size(form):
    """The rewritten graph gives the traced graph's values (the maximum to the bit, means
    and sums up to float32 rounding), at the traced shape and at a larger one (a longer
    sequence, more channels, a larger reduced axis): a sum or mean over axis 1 runs as a
    Deconvolution of ones, the others as a global pooling."""
    function, shape, rewritten = FORMS[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    context = PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
        g, {"data": shape}))
    assert axis_reductions(graph, context) == {}
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert [op for op in ("Pooling", "Deconvolution") if op in ops] == \
        ([rewritten] if rewritten else []), ops
    assert rewritten or graph == before
    for size in (shape, tuple(d + 2 for d in shape)):
        x = mx.nd.array(RS.uniform(-3, 5, size).astype("float32"))
        ref = mx.sym.load_json(json.dumps(before)).eval(data=x)[0].asnumpy()
        out = mx.sym.load_json(json.dumps(graph)).eval(data=x)[0].asnumpy()
        assert out.shape == ref.shape
        if "max" in form:
            assert np.array_equal(out, ref)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


class _Cbam(nn.HybridBlock):
    """conv+BN+ReLU, then CBAM's spatial attention over the channel mean and max, then a
    token-style mean over the rows of the flattened map."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(16, 3, padding=1)
            self.norm = nn.BatchNorm()
            self.spatial = nn.Conv2D(1, 7, padding=3)
            self.conv2 = nn.Conv2D(16, 3, padding=1, activation="relu")
            self.head = nn.Dense(5)

    def hybrid_forward(self, F, x):
        x = F.relu(self.norm(self.conv(x)))
        pooled = F.concat(F.mean(x, axis=1, keepdims=True), F.max(x, axis=1, keepdims=True),
                          dim=1)
        x = self.conv2(F.broadcast_mul(x, F.sigmoid(self.spatial(pooled))))
        return self.head(x.reshape((0, 0, -1)).mean(axis=2))


def test_channel_reductions_run_as_pooling_between_int8_convolutions(tmp_path):
    """CBAM's channel mean and max ran MXNet's reductions (a 4-block CBAM net, batch 16 at
    64 px: 1.80x fp32 in int8; 3.77x as poolings); the exported net reloads to the same
    values, at the calibrated size and a larger one; ``exclude`` keeps a reduction."""
    net = _Cbam()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 12, 12)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    ops = [r.op for r in qnet.report()]
    assert "mean" not in ops and "max" not in ops, ops
    assert all(r.quantized for r in qnet.report() if r.op == "Convolution")
    assert_matches_and_reloads(net, qnet, (
        batches[2], mx.nd.array(RS.uniform(-1, 1, (2, 3, 20, 16)).astype("float32"))), tmp_path)
    kept = gq.quantize(net, batches[:2], exclude=["max"], progress=False)
    assert [r.op for r in kept.report()].count("max") == 1


class _SplitAttention(nn.HybridBlock):
    """ResNeSt's split attention (GluonCV's ``SplitAttentionConv``, radix 2): a
    convolution's output viewed as ``(N, radix, C, H, W)``, summed over the radix axis for
    the attention, weighted by its softmax over that axis and summed again."""

    def __init__(self, channels=8, radix=2, **kwargs):
        super().__init__(**kwargs)
        self.radix = radix
        with self.name_scope():
            self.conv = nn.Conv2D(channels * radix, 3, padding=1)
            self.norm = nn.BatchNorm()
            self.fc1 = nn.Conv2D(16, 1, activation="relu")
            self.fc2 = nn.Conv2D(channels * radix, 1)
            self.out = nn.Conv2D(8, 3, padding=1)

    def hybrid_forward(self, F, x):
        x = F.relu(self.norm(self.conv(x)))
        split = F.reshape(x.expand_dims(1), (0, self.radix, -1, 0, 0))
        gap = F.contrib.AdaptiveAvgPooling2D(F.sum(split, axis=1), 1)
        attention = self.fc2(self.fc1(gap)).reshape((0, self.radix, -1, 1, 1))
        out = F.sum(F.broadcast_mul(F.softmax(attention, axis=1), split), axis=1)
        return self.out(out)


def test_sums_over_a_radix_axis_run_as_deconvolutions_between_int8_convolutions(tmp_path):
    """ResNeSt's two sums over its radix axis took 24 ms each in fp32 (batch 4 at 224 px);
    as Deconvolutions of ones 0.3 ms (GluonCV resnest14, batch 4: 1.54x -> 5.73x fp32 in
    int8). The sums read a convolution's reshaped output; values match fp32 at the
    calibrated size and another one, the export reloads to the same values, and
    ``exclude`` keeps a sum."""
    net = _SplitAttention()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 12, 12)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    sums = [r for r in report if r.op == "Deconvolution"]
    assert len(sums) == 2 and not any(r.quantized for r in sums), report
    assert all(ONEDNN.fp32_ops["sum over channels"] in r.reason for r in sums)
    assert [r.op for r in report if r.node.endswith(("sum0", "sum1"))] == ["reshape_like"] * 2
    # the nodes the rewrite adds are shown as parts of the sum they were made for
    assert sorted(r.layer[-4:] for r in sums) == ["sum0", "sum1"]
    assert not [r for r in report if "sum" in r.layer and r.op in ("sum", "transpose")]
    assert all(r.quantized for r in report if r.op == "Convolution")
    assert_matches_and_reloads(net, qnet, (
        batches[2], mx.nd.array(RS.uniform(-1, 1, (2, 3, 20, 16)).astype("float32"))), tmp_path)
    kept = gq.quantize(net, batches[:2], exclude=["*sum0"], progress=False)
    assert [r.op for r in kept.report()].count("sum") == 1


class _TokenPooling(mx.gluon.HybridBlock):
    """A text classifier's mean over its tokens (axis 1), written with ``F.mean``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embed = nn.Dense(32, activation="relu", flatten=False)
            self.head = nn.Dense(5)

    def hybrid_forward(self, F, x):
        return self.head(F.mean(self.embed(x), axis=1))


def test_the_nodes_a_rewrite_adds_are_shown_on_the_row_of_the_operator_they_run():
    """The mean ran as ten nodes (its view, the slices its kernel of ones is cut from, the
    kernel, the deconvolution...), and report() printed each as a layer of its own
    ("pool0_mean0_column  slice_axis  no int8 kernel for slice_axis"): one row now, named
    as the user's mean, that says what it runs as."""
    net = _TokenPooling(prefix="pool0_")
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.normal(size=(8, 4, 16)).astype("float32")) for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    parts = [r for r in report if r.layer == "pool0_mean0"]
    assert len(parts) == 10 and {"Deconvolution", "slice_axis", "ones_like"} <= {
        r.op for r in parts}
    assert {r.node for r in parts} >= {"pool0_mean0", "pool0_mean0_deconv",
                                       "pool0_mean0_column"}
    # the fp32 parts on one line (an int8 one, the Flatten, on a line of its own)
    lines = [line for line in str(report).splitlines() if line.startswith("pool0_mean0")]
    assert len(lines) == 1 + sum(r.quantized for r in parts)
    fp32 = sum(not r.quantized for r in parts)
    assert [line for line in lines if "%d nodes" % fp32 in line and "Deconvolution" in line]
    assert [r.layer for r in report if r.op == "FullyConnected"] == ["pool0_dense0",
                                                                     "pool0_dense1"]


def test_helper_owners_names_the_longest_original_node_and_keeps_later_calls():
    from gluon_quant.graph.selection import helper_owners
    names = ["x", "net_mean0", "net_mean0_view", "net_mean0_view_flat", "net_pool0_fwd",
             "net_pool0_fwd_call2", "net_pool0_fwd_call2_flatten", "sg_onednn_7",
             "net_mean"]
    graph = {"nodes": [{"op": "null" if n == "x" else "op", "name": n, "inputs": []}
                       for n in names]}
    original = {"net_mean0", "net_pool0_fwd", "net_mean"}
    assert helper_owners(graph, original) == {
        "net_mean0_view": "net_mean0", "net_mean0_view_flat": "net_mean0",
        "net_pool0_fwd_call2_flatten": "net_pool0_fwd_call2"}
