"""Loss heads of Module-API checkpoints rewritten as their inference operators."""
import json

import mxnet as mx
import numpy as np
import pytest

from gluon_quant.graph.heads import LOSS_HEADS, inference_heads


def _forward(sym, args):
    """MXNet's own inference forward of ``sym`` (labels fed zeros when it reads any)."""
    shapes = {k: v.shape for k, v in args.items()}
    exe = sym.simple_bind(mx.cpu(), grad_req="null", **shapes)
    for name, value in args.items():
        exe.arg_dict[name][:] = value
    return exe.forward(is_train=False)[0].asnumpy()


def _head(op, data, **kwargs):
    label = mx.sym.var("out_label")
    if op == "Softmax":
        return mx.sym.Softmax(data, label, name="out", **kwargs)
    return getattr(mx.sym, op)(data, label, name="out", **kwargs)


@pytest.mark.parametrize("op, kwargs, shape", [
    ("SoftmaxOutput", {}, (4, 10)),
    ("SoftmaxOutput", {}, (4, 3, 5, 5)),                     # flattened per sample
    ("SoftmaxOutput", {"multi_output": True}, (4, 3, 5, 5)),  # segmentation: over channels
    ("SoftmaxOutput", {"preserve_shape": True}, (4, 6, 7)),  # over the last axis
    ("Softmax", {}, (4, 10)),
    ("LinearRegressionOutput", {}, (4, 3)),
    ("MAERegressionOutput", {}, (4, 3)),
    ("LogisticRegressionOutput", {}, (4, 3)),
    ("SVMOutput", {}, (4, 10)),
])
def test_heads_compute_what_they_computed_without_their_label(op, kwargs, shape):
    data = mx.sym.var("data")
    sym = _head(op, data * 2.0, **kwargs)
    rs = np.random.RandomState(0)
    x = rs.randn(*shape).astype("float32")
    label_shape = sym.infer_shape(data=shape)[0][sym.list_arguments().index("out_label")]
    expected = _forward(sym, {"data": x, "out_label": np.zeros(label_shape, "float32")})
    graph = json.loads(sym.tojson())
    assert inference_heads(graph) == {"out": "out_label"}
    rewritten = mx.sym.load_json(json.dumps(graph))
    assert rewritten.list_arguments() == ["data"]
    assert rewritten.list_outputs() == ["out_output"]
    np.testing.assert_allclose(_forward(rewritten, {"data": x}), expected, rtol=1e-6,
                               atol=1e-7)


def test_a_label_read_elsewhere_stays_and_other_graphs_are_left_alone():
    data, label = mx.sym.var("data"), mx.sym.var("softmax_label")
    fc = mx.sym.FullyConnected(data, num_hidden=3, name="fc")
    both = mx.sym.Group([mx.sym.SoftmaxOutput(fc, label, name="softmax"), label * 1.0])
    graph = json.loads(both.tojson())
    assert inference_heads(graph) == {"softmax": "softmax_label"}
    assert "softmax_label" in mx.sym.load_json(json.dumps(graph)).list_arguments()
    plain = json.loads(mx.sym.softmax(fc).tojson())
    before = json.dumps(plain)
    assert inference_heads(plain) == {} and json.dumps(plain) == before
    assert set(LOSS_HEADS) >= {"SoftmaxOutput", "LinearRegressionOutput"}
