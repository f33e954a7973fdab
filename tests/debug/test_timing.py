"""gluon_quant.debug.layer_timing: int8 vs fp32 time of every int8 node, each run alone.

Times themselves are not asserted (the machine is shared); what is asserted is that every
int8 node is timed, that each timed piece computes exactly what the node computes inside
the whole graph (so the time is the time of the real work), and how the report shows it."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.debug import layer_timing
from gluon_quant.debug.timing import _pieces
from gluon_quant.errors import ConfigError


@pytest.fixture(scope="module")
def qnet_and_batch():
    mx.random.seed(3)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, activation="relu"), nn.Conv2D(16, 3, padding=1),
            nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(),
            nn.Conv2D(32, 3, padding=1, activation="relu"), nn.GlobalAvgPool2D(),
            nn.Dense(64, activation="relu"), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).rand(8, 3, 16, 16).astype("float32"))
    return gq.quantize(net, [x], progress=False), x


def test_every_int8_node_is_timed_in_both_forms(qnet_and_batch):
    qnet, x = qnet_and_batch
    timing = layer_timing(qnet, x, repeats=3)
    int8_nodes = {r.node for r in qnet.report() if r.quantized}
    assert {t.node for t in timing} == int8_nodes and len(int8_nodes) == 7
    assert all(t.fp32_ms > 0 and t.int8_ms > 0 and t.note == "" for t in timing)
    assert all(t.speedup == pytest.approx(t.fp32_ms / t.int8_ms) for t in timing)
    ratios = [t.speedup for t in timing]
    assert ratios == sorted(ratios)                     # the worst int8 node first
    assert set(timing.slower) == {t for t in timing if t.speedup < 1.0}
    assert timing.batch_shapes == ((8, 3, 16, 16),)
    assert timing.fp32_total_ms > 0 and timing.int8_total_ms > 0
    state = json.loads(json.dumps(timing.to_dict()))
    assert [t["node"] for t in state["layers"]] == [t.node for t in timing]
    text = str(timing)
    assert "whole graph: fp32" in text and all(t.layer in text for t in timing)


@pytest.mark.parametrize("graph", ["fp32", "int8"])
def test_each_piece_computes_what_its_node_computes_in_the_whole_graph(qnet_and_batch,
                                                                       graph):
    qnet, x = qnet_and_batch
    if graph == "fp32":
        sym, params = qnet.fused_graph, qnet.fp32_params
    else:
        sym = qnet.quantized_graph
        params = {p.name: p.data() for p in qnet.collect_params().values()}
    json_graph = _mxnet.graph_json(sym)
    names = [n["name"] for n in json_graph["nodes"]
             if n["op"] in ("_sg_mkldnn_conv", "_sg_mkldnn_fully_connected",
                            "_contrib_quantized_pooling", "Pooling")]
    assert len(names) >= 6
    pieces, values = _pieces(json_graph, names, params, {"data": x}, mx.cpu())
    heads = {name: [(sub["nodes"][h[0]]["name"], h[1]) for h in sub["heads"]]
             for name, (sub, _) in pieces.items()}
    whole = _mxnet.internal_outputs(json_graph, sorted({e for v in heads.values() for e in v}),
                                    {"data": x}, params, mx.cpu())
    for name in names:
        sub, feeds = pieces[name]
        block = _mxnet.symbol_block(_mxnet.load_graph(sub), list(feeds), params, mx.cpu(),
                                    dtypes=[values[e].dtype for e in feeds.values()])
        out = block(*[values[e] for e in feeds.values()])
        out = out if isinstance(out, (list, tuple)) else [out]
        assert len(out) == len(heads[name]) >= 1
        for entry, array in zip(heads[name], out):
            np.testing.assert_array_equal(array.asnumpy(), whole[entry].asnumpy(),
                                          err_msg=str(entry))


def test_the_report_shows_node_times_and_bad_settings_are_refused(qnet_and_batch):
    qnet, x = qnet_and_batch
    report = qnet.report(timing=x)
    for row in report:
        assert (row.int8_ms is not None) == row.quantized
        assert (row.fp32_ms is not None) == row.quantized
    assert report.totals[0] > 0 and report.totals[1] > 0
    text = str(report)
    assert "fp32 ms" in text and "whole graph: fp32" in text
    assert json.loads(report.to_json())["totals_ms"] == list(report.totals)
    assert "fp32 ms" not in str(qnet.report()) and qnet.report().totals is None
    with pytest.raises(ConfigError, match="repeats=0"):
        layer_timing(qnet, x, repeats=0)


def test_nodes_whose_names_prefix_each_other_are_timed():
    """A spatial mean runs as nodes X_pool then X (global pooling, flatten); in the int8
    graph quantized_X_pool's outputs quantized_X_pool_min/_max also start with the next
    node's name, and were taken for its outputs ("Could not find the tensors")."""
    class MeanHead(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = nn.Conv2D(32, 3, padding=1, activation="relu")

        def hybrid_forward(self, F, x):     # pylint: disable=arguments-differ
            return F.mean(self.conv(x), axis=(2, 3))
    net = MeanHead()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(1).rand(8, 3, 32, 32).astype("float32"))
    qnet = gq.quantize(net, [x], progress=False)
    nodes = [n["name"] for n in _mxnet.graph_json(qnet.quantized_graph)["nodes"]]
    pool = next(n for n in nodes if n.startswith("quantized_") and n.endswith("_pool"))
    assert pool[:-len("_pool")] in nodes            # the prefix pair the test is about
    timing = layer_timing(qnet, x, repeats=1)
    assert {t.node for t in timing} == {r.node for r in qnet.report() if r.quantized}
    assert len(timing) == 3
    params = {p.name: p.data() for p in qnet.collect_params().values()}
    low, high = (_mxnet.internal_outputs(_mxnet.graph_json(qnet.quantized_graph),
                                         [(pool, 1), (pool, 2)], {"data": x}, params,
                                         mx.cpu())[(pool, i)].asscalar() for i in (1, 2))
    assert low == 0 and high == pytest.approx(qnet.calibration_table[
        next(k for k in qnet.calibration_table.keys() if "conv" in k)][1], rel=1e-6)


def test_an_int8_sum_read_by_fp32_layers_is_timed():
    """A transformer's residual sum runs as MXNet's int8 ``elemwise_add``, which has no
    gradient: tapping its output for the pieces made MXNet's backward graph abort
    ("_contrib_quantized_elemwise_add is non-differentiable"), so ``report(timing=)`` of a
    ViT failed. Each int8 node is timed, the sum included."""
    class Residual(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.proj = nn.Dense(32, flatten=False)
            self.norm = nn.LayerNorm()
            self.mlp = nn.Dense(32, flatten=False)
            self.out = nn.Dense(8, flatten=False)

        def hybrid_forward(self, F, x):     # pylint: disable=arguments-differ
            x = x + self.proj(x)
            return self.out(x + self.mlp(self.norm(x)))
    net = Residual()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(2).uniform(-1, 1, (16, 10, 32)).astype("float32"))
    qnet = gq.quantize(net, [x], progress=False)
    assert "elemwise_add" in {r.op for r in qnet.report() if r.quantized}, qnet.report()
    timing = layer_timing(qnet, x, repeats=1)
    assert {t.node for t in timing} == {r.node for r in qnet.report() if r.quantized}
    assert all(t.int8_ms and t.int8_ms > 0 for t in timing), timing
