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


def test_a_symbol_block_whose_label_is_a_parameter_runs_at_any_batch_size():
    """A Module-API symbol wrapped as ``SymbolBlock(sym, [data])`` makes ``softmax_label``
    a parameter shaped by the first batch (8): the int8 net failed on any other batch
    size ("Error in operator softmax: Shape inconsistent, Provided = [8], inferred
    shape=[2]"). The traced-graph pass runs the head as its softmax."""
    import gluon_quant as gq
    data = mx.sym.var("data")
    logits = mx.sym.FullyConnected(mx.sym.Activation(mx.sym.FullyConnected(
        data, num_hidden=32, name="hidden"), act_type="relu"), num_hidden=5, name="fc")
    head = mx.sym.SoftmaxOutput(logits, mx.sym.var("softmax_label"), name="softmax")
    block = mx.gluon.SymbolBlock(head, [data])
    block.collect_params().initialize(mx.init.Zero())
    rs = np.random.RandomState(0)
    x = mx.nd.array(rs.randn(8, 12).astype("float32"))
    block(x)                                               # the label takes shape (8,)
    for name in ("hidden_weight", "fc_weight"):
        param = block.collect_params()[name]
        param.set_data(mx.nd.array(rs.randn(*param.shape).astype("float32") * 0.3))
    qnet = gq.quantize(block, [x], progress=False)
    for batch in (8, 3, 1):
        expected = mx.nd.softmax(_logits(block, x[:batch])).asnumpy()
        np.testing.assert_allclose(qnet(x[:batch]).asnumpy(), expected, atol=0.02)
    label_input = mx.gluon.SymbolBlock(head, [data, mx.sym.var("softmax_label")])
    label_input.collect_params().initialize(mx.init.Zero())
    qlabel = gq.quantize(label_input, [(x, mx.nd.zeros(8))], progress=False)
    assert qlabel(x, mx.nd.zeros(8)).shape == (8, 5)      # a fed label stays an input


def _logits(block, x):
    params = {k: v.data() for k, v in block.collect_params().items()}
    hidden = mx.nd.relu(mx.nd.FullyConnected(x, params["hidden_weight"], params["hidden_bias"],
                                             num_hidden=32))
    return mx.nd.FullyConnected(hidden, params["fc_weight"], params["fc_bias"], num_hidden=5)
