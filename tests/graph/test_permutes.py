"""Axis swaps run as oneDNN's transpose, equal splits as slices (graph.permutes)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn, rnn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.permutes import splits_as_slices, swapaxes_as_transpose, whole_slices

from _checks import assert_matches_and_reloads
from conftest import placed

RS = np.random.RandomState(0)

#: name -> (swap, input shape)
FORMS = {
    "attention heads, (N, T, H, D) axes 1 and 2": (
        lambda x: mx.sym.swapaxes(x, 1, 2), (2, 5, 3, 4)),
    "channels first for a Conv1D": (lambda x: mx.sym.swapaxes(x, 1, 2), (2, 7, 6)),
    "negative axes": (lambda x: mx.sym.swapaxes(x, -1, -3), (2, 3, 4, 5)),
    "the batch axis": (lambda x: mx.sym.swapaxes(x, 0, 1), (4, 6)),
    "an axis with itself": (lambda x: mx.sym.swapaxes(x, 2, 2), (2, 3, 4)),
    "5-D": (lambda x: mx.sym.swapaxes(x, 1, 4), (2, 3, 2, 4, 5)),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_swap_moves_the_same_values_at_any_size(form):
    """Bit-exact at the traced shape and at a larger one, whose shapes MXNet infers from
    the input alone."""
    function, shape = FORMS[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    context = PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
        g, {"data": shape}))
    assert swapaxes_as_transpose(graph, context) == {}
    assert [n["op"] for n in graph["nodes"] if n["op"] != "null"] == ["transpose"]
    assert list(context.rewritten) == [graph["nodes"][-1]["name"]]
    for size in (shape, tuple(d + 2 for d in shape)):
        assert infer_graph_shapes(graph, {"data": size})
        x = mx.nd.array(RS.uniform(-3, 5, size).astype("float32"))
        ref = mx.sym.load_json(json.dumps(before)).eval(data=x)[0].asnumpy()
        out = mx.sym.load_json(json.dumps(graph)).eval(data=x)[0].asnumpy()
        assert out.shape == ref.shape and np.array_equal(out, ref)


def test_a_swap_without_shapes_or_excluded_is_left():
    graph = json.loads(mx.sym.swapaxes(mx.sym.var("data"), 1, 2).tojson())
    before = json.loads(json.dumps(graph))
    assert swapaxes_as_transpose(graph, PassContext(spec=ONEDNN)) == {} and graph == before
    context = PassContext(spec=ONEDNN, excluded=frozenset([graph["nodes"][1]["name"]]),
                          infer_shapes=lambda g: infer_graph_shapes(g, {"data": (2, 3, 4)}))
    assert swapaxes_as_transpose(graph, context) == {} and graph == before


class _HeadsAttention(nn.HybridBlock):
    """Self-attention that splits and merges its heads with ``swapaxes``, as hand-written
    transformers do, then a dense layer over the mean of the tokens."""

    def __init__(self, units=32, heads=4, **kwargs):
        super().__init__(**kwargs)
        self._heads = heads
        with self.name_scope():
            self.qkv = nn.Dense(3 * units, flatten=False)
            self.proj = nn.Dense(units, flatten=False)
            self.out = nn.Dense(3)

    def _split(self, x):
        return x.reshape((0, 0, self._heads, -1)).swapaxes(1, 2).reshape((-3, 0, 0))

    def hybrid_forward(self, F, x):
        q, k, v = F.split(self.qkv(x), num_outputs=3, axis=-1)
        scores = F.softmax(F.batch_dot(self._split(q), self._split(k), transpose_b=True))
        out = F.batch_dot(scores, self._split(v)).reshape((-4, -1, self._heads, 0, 0))
        out = self.proj(out.swapaxes(1, 2).reshape((0, 0, -3)))
        return self.out((x + out).mean(axis=1))


def test_swaps_run_as_transposes_between_int8_dense_layers(tmp_path):
    """A 4-layer hand-written encoder of this kind (units 768, batch 8, 128 tokens): int8
    262 -> 247 ms (MXNet's SwapAxis 1.3 ms per call, transpose 0.16). The int8 net keeps
    its values at another sequence length, reloads to the same values, and ``exclude``
    keeps a swap."""
    net = _HeadsAttention()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 6, 32)).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    swaps = [r for r in report if r.layer.split("_")[-1].startswith("swapaxes")]
    assert [r.op for r in swaps] == ["transpose"] * 4, report
    assert all("SwapAxis run as transpose" in r.reason for r in swaps)
    dense = [placed(r) for r in report if r.layer.endswith(("dense0", "dense1"))]
    assert dense == [True, True], report
    assert_matches_and_reloads(net, qnet, (
        batches[2], mx.nd.array(RS.uniform(-1, 1, (2, 9, 32)).astype("float32"))), tmp_path)
    kept = gq.quantize(net, batches[:2], exclude=["*swapaxes0"], progress=False)
    assert [r.op for r in kept.report()].count("SwapAxis") == 1


def _dense(x, units):
    return mx.sym.FullyConnected(x, num_hidden=units, flatten=False, name="fc")


#: name -> (graph, traced input shape, another input shape, whether it becomes slices)
SPLITS = {
    "q, k, v of one projection": (
        lambda x: mx.sym.split(_dense(x, 12), num_outputs=3, axis=-1), (2, 5, 4), (3, 7, 4),
        True),
    "an LSTM cell's gates": (
        lambda x: mx.sym.SliceChannel(_dense(x, 16), num_outputs=4), (3, 5), (6, 5), True),
    "a GLU's channel halves": (
        lambda x: mx.sym.split(mx.sym.Convolution(x, kernel=(3, 3), num_filter=8, pad=(1, 1),
                                                  name="conv"), num_outputs=2, axis=1),
        (2, 3, 6, 5), (1, 3, 9, 4), True),
    "the time steps of an unrolled cell, squeezed": (
        lambda x: mx.sym.split(x, num_outputs=4, axis=1, squeeze_axis=True), (2, 4, 3),
        (5, 4, 3), True),
    "the last axis, squeezed": (
        lambda x: mx.sym.split(_dense(x, 3), num_outputs=3, axis=-1, squeeze_axis=True),
        (2, 5, 4), (3, 2, 4), True),
    "np.split into sections (_split_v2)": (
        lambda x: mx.sym.split_v2(_dense(x, 12), 3, axis=-1), (2, 5, 4), (3, 7, 4), True),
    "np.split at indices": (
        lambda x: mx.sym.split_v2(_dense(x, 12), (2, 5), axis=2), (2, 5, 4), (3, 7, 4), True),
    # left: the split axis takes the input's size (a sequence's time steps)
    "halves of a sequence": (
        lambda x: mx.sym.split(x, num_outputs=2, axis=1), (2, 6, 3), (2, 6, 3), False),
}


@pytest.mark.parametrize("form", sorted(SPLITS))
def test_each_split_gives_the_same_parts(form):
    """Bit-exact parts, in order, at the traced shape and another one (shapes inferred from
    the input alone); a split whose axis follows the input's size is left."""
    function, shape, other, rewritten = SPLITS[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": shape}))
    assert splits_as_slices(graph, context) == {}
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert not {"SliceChannel", "_split_v2"} & set(ops) == rewritten, ops
    assert rewritten or graph == before
    old, new = (mx.sym.load_json(json.dumps(g)) for g in (before, graph))
    for size in (shape, other):
        args, _, _ = old.infer_shape(data=size)
        values = {name: mx.nd.array(RS.uniform(-3, 5, s).astype("float32"))
                  for name, s in zip(old.list_arguments(), args)}
        ref, out = old.eval(**values), new.eval(**values)
        assert len(ref) == len(out) and all(
            a.shape == b.shape and np.array_equal(a.asnumpy(), b.asnumpy())
            for a, b in zip(ref, out))


def test_splits_of_parameters_or_excluded_or_without_input_shapes_are_left():
    split = mx.sym.split(mx.sym.var("w"), num_outputs=2, axis=0)[0] + mx.sym.var("data")
    graph = json.loads(split.tojson())
    before = json.loads(json.dumps(graph))
    shapes = _mxnet.GraphShapes({"data": (2, 3)})
    context = PassContext(spec=ONEDNN, param_shapes={"w": (4, 3)}, infer_shapes=shapes)
    assert splits_as_slices(graph, context) == {} and graph == before
    graph = json.loads(SPLITS["an LSTM cell's gates"][0](mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    name = [n["name"] for n in graph["nodes"] if n["op"] == "SliceChannel"]
    for context in (PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
            g, {"data": (3, 5)})),
                    PassContext(spec=ONEDNN, excluded=frozenset(name),
                                infer_shapes=_mxnet.GraphShapes({"data": (3, 5)}))):
        assert splits_as_slices(graph, context) == {} and graph == before


def _conv(x, name="conv"):
    return mx.sym.Convolution(x, kernel=(3, 3), num_filter=6, pad=(1, 1), name=name)


#: name -> (graph over "data" (2, 3, 6, 5), whether the slice is passed through)
WHOLE = {
    "GhostNet's out[:, :oup] of exactly oup channels": (
        lambda x: mx.sym.slice_axis(mx.sym.concat(_conv(x), mx.sym.relu(_conv(x, "cheap")),
                                                  dim=1), axis=1, begin=0, end=12), True),
    "a whole slice of a whole slice": (
        lambda x: mx.sym.slice_axis(mx.sym.slice_axis(_conv(x), axis=1, begin=0, end=6),
                                    axis=1, begin=0, end=None), True),
    "slice with every bound given": (
        lambda x: mx.sym.slice(_conv(x), begin=(0, 0, 0, 0), end=(None, 6, None, None)),
        True),
    "a slice of fewer channels": (
        lambda x: mx.sym.slice_axis(_conv(x), axis=1, begin=0, end=4), False),
    # the rows of the traced size only: the slice would cut a larger input
    "the rows of the traced input": (
        lambda x: mx.sym.slice_axis(_conv(x), axis=2, begin=0, end=6), False),
    # the network input itself as an output
    "a network input read as an output": (
        lambda x: mx.sym.slice_axis(x, axis=1, begin=0, end=3), False),
}


@pytest.mark.parametrize("form", sorted(WHOLE))
def test_a_slice_keeping_every_value_is_passed_through(form):
    """Its readers read its input instead, the same values at the traced size and another;
    slices that cut at some size, or would leave a network input as an output, stay."""
    function, passed = WHOLE[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    shape = (2, 3, 6, 5)
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": shape}),
                          param_shapes={"%s_%s" % (layer, kind): shape for layer in (
                              "conv", "cheap") for kind, shape in (
                                  ("weight", (6, 3, 3, 3)), ("bias", (6,)))})
    assert whole_slices(graph, context) == {}
    ops = [n["op"] for n in graph["nodes"]]
    assert ("slice_axis" not in ops and "slice" not in ops) == passed, ops
    assert passed or graph == before
    old, new = (mx.sym.load_json(json.dumps(g)) for g in (before, graph))
    args, _, _ = old.infer_shape(data=shape)
    values = {name: mx.nd.array(RS.uniform(-3, 5, s).astype("float32"))
              for name, s in zip(old.list_arguments(), args)}
    assert np.array_equal(old.eval(**values)[0].asnumpy(), new.eval(**values)[0].asnumpy())
    excluded = [n["name"] for n in before["nodes"] if n["op"] in ("slice", "slice_axis")]
    graph = json.loads(json.dumps(before))
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": shape}),
                          excluded=frozenset(excluded))
    assert whole_slices(graph, context) == {} and graph == before


class _Decoder(nn.HybridBlock):
    """A hand-unrolled LSTMCell decoder: the input split into its time steps, each step's
    gates split in four."""

    def __init__(self, steps=5, **kwargs):
        super().__init__(**kwargs)
        self._steps = steps
        with self.name_scope():
            self.cell = rnn.LSTMCell(128, input_size=64)
            self.out = nn.Dense(10, flatten=False)

    def hybrid_forward(self, F, x):
        outputs, _ = self.cell.unroll(self._steps, x, layout="NTC", merge_outputs=True)
        return self.out(outputs)


def test_cell_splits_run_as_slices_between_int8_dense_layers(tmp_path):
    """An unrolled 20-step LSTMCell decoder (512 units, batch 32): int8 20.9 -> 16.7 ms,
    its 21 splits 5 ms of it. Values match fp32 at the calibrated batch size and another,
    the export reloads to the same values, and ``exclude`` keeps a split."""
    net = _Decoder()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (32, 5, 64)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    assert "SliceChannel" not in [r.op for r in report], report
    assert [r.op for r in report].count("slice_axis") == 5 * 4 + 5
    assert sum("run as slices" in r.reason for r in report) == 5 + 1
    assert [placed(r) for r in report if r.op == "FullyConnected"].count(True) >= 5
    assert_matches_and_reloads(net, qnet, (
        batches[2], mx.nd.array(RS.uniform(-1, 1, (3, 5, 64)).astype("float32"))), tmp_path)
    kept = gq.quantize(net, batches[:2], exclude=["*t0_slice"], progress=False)
    assert [r.op for r in kept.report()].count("SliceChannel") == 1
