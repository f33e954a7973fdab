"""Nearest upsampling as a depthwise deconvolution of ones (graph.upsampling)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.upsampling import nearest_upsampling_as_deconv

from _checks import assert_matches_and_reloads

RS = np.random.RandomState(0)


FORMS = {
    "UpSampling x2": (lambda x: mx.sym.UpSampling(x, scale=2, sample_type="nearest",
                                                  num_args=1), True),
    "UpSampling x3": (lambda x: mx.sym.UpSampling(x, scale=3, sample_type="nearest",
                                                  num_args=1), True),
    "GluonCV YOLOv3's repeat, repeat": (
        lambda x: x.repeat(axis=-1, repeats=2).repeat(axis=-2, repeats=2), True),
    "repeat over H, then W, (3, 2)": (
        lambda x: x.repeat(axis=2, repeats=3).repeat(axis=3, repeats=2), True),
    # left alone: a learned (bilinear) upsampling, a repeat over channels, an inner
    # repeat read twice
    "bilinear": (lambda x: mx.sym.UpSampling(x, mx.sym.var("w"), scale=2,
                                             sample_type="bilinear", num_filter=3,
                                             num_args=2), False),
    "repeat over C and W": (
        lambda x: x.repeat(axis=1, repeats=2).repeat(axis=3, repeats=2), False),
    "inner repeat read twice": (
        lambda x: (lambda r: mx.sym.Group([r.repeat(axis=2, repeats=2), r]))(
            x.repeat(axis=3, repeats=2)), False),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_nearest_upsampling_is_exact(form):
    """The same values as MXNet's UpSampling or repeat calls, NaN and infinities
    included."""
    function, rewritten = FORMS[form]
    graph = json.loads(function(mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    shape = (2, 3, 5, 4)
    context = PassContext(spec=ONEDNN, infer_shapes=lambda g: infer_graph_shapes(
        g, {"data": shape}))
    assert nearest_upsampling_as_deconv(graph, context) == {}
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert (ops == ["_ones", "Deconvolution"]) == rewritten, ops
    if not rewritten:
        assert graph == before
        return
    data = RS.randn(*shape).astype("float32")
    data.flat[:3] = [np.nan, np.inf, -np.inf]
    data = mx.nd.array(data)
    ref = mx.sym.load_json(json.dumps(before)).eval(data=data)[0].asnumpy()
    out = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    np.testing.assert_array_equal(ref, out)


class _Fpn(nn.HybridBlock):
    """A YOLOv3/FPN-style top-down path: a coarse map upsampled (nearest) and concatenated
    with a finer one, then convolved."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.fine = nn.Conv2D(16, 3, padding=1, activation="relu")
            self.coarse = nn.Conv2D(16, 3, strides=2, padding=1, activation="relu")
            self.merge = nn.Conv2D(8, 3, padding=1)

    def hybrid_forward(self, F, x):
        fine = self.fine(x)
        up = F.UpSampling(self.coarse(fine), scale=2, sample_type="nearest")
        return self.merge(F.concat(fine, up, dim=1))


def test_an_fpn_upsamples_on_onednn_and_exports(tmp_path):
    """The top-down path's upsampling runs as a deconvolution (a 3x faster kernel);
    the convolutions stay int8, the export reloads to the same values at another size;
    ``exclude`` keeps MXNet's UpSampling."""
    net = _Fpn()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 12, 12)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    assert "UpSampling" not in [r.op for r in report]
    ups = [r for r in report if "upsampling" in r.reason]
    assert [r.op for r in ups] == ["Deconvolution"]
    assert ups[0].reason.startswith("copies data only (a nearest upsampling"), ups[0].reason
    assert all(r.quantized for r in report if r.op == "Convolution"), report
    assert_matches_and_reloads(net, qnet, (
        batches[2], mx.nd.array(RS.uniform(-1, 1, (2, 3, 16, 20)).astype("float32"))), tmp_path)
    kept = gq.quantize(net, batches[:2], exclude=["UpSampling"], progress=False)
    assert "UpSampling" in [r.op for r in kept.report()]
