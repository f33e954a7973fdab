"""LSTM models quantize in one call: the LSTM stays fp32 (no int8 LSTM runs on VNNI CPUs
with MXNet 1.9.1's oneDNN), the embedding and dense layers around it are int8, and the
LSTM's weights are concatenated once instead of at every call
(fold_parameter_expressions)."""
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import _mxnet, pipeline
from gluon_quant.graph.passes import count_ops

from _nets import LSTMClassifier, LSTMLanguageModel, cosine
from conftest import placed

VOCAB = 2000


def _tokens(shape, seed):
    return mx.nd.array(np.random.RandomState(seed).randint(0, VOCAB, size=shape))


@pytest.fixture(params=["classifier", "language_model"])
def lstm_net(request):
    mx.random.seed(0)
    if request.param == "classifier":
        net, shape = LSTMClassifier(vocab=VOCAB), (8, 20)
    else:
        net, shape = LSTMLanguageModel(vocab=VOCAB), (20, 8)
    net.initialize(mx.init.Xavier())
    return net, [_tokens(shape, seed) for seed in range(4)], _tokens(shape, 9)


def test_lstm_models_quantize_in_one_call(lstm_net):
    net, batches, held_out = lstm_net
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    rnn = [r for r in report if r.op == "RNN"]
    assert len(rnn) == 1 and not rnn[0].quantized and "opt-in" in rnn[0].reason
    assert all(placed(r) for r in report if r.op in ("FullyConnected", "Embedding"))
    assert cosine(net(held_out), qnet(held_out)) >= 0.99
    ops = count_ops(qnet.quantized_graph, ("_rnn_param_concat", "RNN"))
    assert ops == {"_rnn_param_concat": 0, "RNN": 1}


def test_folded_rnn_parameters_compute_the_same(lstm_net, disable_pass):
    """The fp32 graph with the LSTM's weights concatenated once gives the net's outputs."""
    net, batches, held_out = lstm_net
    qnet = gq.QuantizedHybridBlock(net)
    qnet.fuse(batches[0])
    assert count_ops(qnet.fused_graph, ("_rnn_param_concat",))["_rnn_param_concat"] == 0
    params = pipeline.fp32_params(net, qnet.fused, mx.cpu(), [batches[0]])
    folded = _mxnet.symbol_block(qnet.fused_graph, qnet.input_names, params, mx.cpu())
    np.testing.assert_allclose(folded(held_out).asnumpy(), net(held_out).asnumpy(),
                               rtol=1e-5, atol=1e-6)
    disable_pass("fold_parameter_expressions")
    unfolded = gq.QuantizedHybridBlock(net)
    unfolded.fuse(batches[0])
    assert count_ops(unfolded.fused_graph, ("_rnn_param_concat",))["_rnn_param_concat"] == 1


class _ProjectedLSTM(mx.gluon.HybridBlock):
    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.lstm = mx.gluon.rnn.LSTM(64, num_layers=2, projection_size=32, layout="NTC",
                                          input_size=16)
            self.out = mx.gluon.nn.Dense(4, flatten=False)

    def hybrid_forward(self, F, x):
        return self.out(self.lstm(x))


def test_an_lstm_with_a_projection_runs_without_static_memory(tmp_path, caplog):
    """Under a static CachedOp, MXNet's CPU RNN with a projection failed calls at random
    ("No training support for LSTM with projection on CPU"): most first runs (then a
    fallback, slower), and now and then a later call of the block or of its reload."""
    net = _ProjectedLSTM()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.randn(4, 12, 16)) for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    assert _mxnet.static_flags(qnet.quantized_graph) == {}
    assert "static memory" not in caplog.text
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    for x in batches * 4:
        assert cosine(net(x), qnet(x)) > 0.999
        np.testing.assert_array_equal(loaded(x).asnumpy(), qnet(x).asnumpy())
