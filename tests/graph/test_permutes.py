"""Axis swaps run as oneDNN's transpose (graph.permutes.swapaxes_as_transpose)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.debug.metrics import cosine
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.permutes import swapaxes_as_transpose

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
    dense = [r.quantized for r in report if r.layer.endswith(("dense0", "dense1"))]
    assert dense == [True, True], report
    qnet.export(str(tmp_path / "m"))
    again = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    for x in (batches[2], mx.nd.array(RS.uniform(-1, 1, (2, 9, 32)).astype("float32"))):
        out = qnet(x).asnumpy()
        assert cosine(net(x).asnumpy(), out) > 0.999
        assert np.array_equal(out, again(x).asnumpy())
    kept = gq.quantize(net, batches[:2], exclude=["*swapaxes0"], progress=False)
    assert [r.op for r in kept.report()].count("SwapAxis") == 1
