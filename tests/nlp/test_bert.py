"""BERT in one call, on a hand-written BERT with GluonNLP's operators (GluonNLP's own models
are tested in test_gluonnlp_bert.py, when GluonNLP is installed): the ``gluonnlp-bert``
preset's inputs and range bounds, oneDNN's fused int8 self-attention, and the report."""
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import _mxnet, pipeline
from gluon_quant.backends import ONEDNN
from gluon_quant.data import InputSpec
from gluon_quant.presets import preset_for

from _nets import MiniBert, bert_batches, cosine
from conftest import placed

VOCAB = 200


def _loader(batches):
    """A DataLoader of GluonNLP-style (tokens, token_types, valid_length, label) batches."""
    columns = [mx.nd.concat(*[b[i] for b in batches], dim=0) for i in range(4)]
    return mx.gluon.data.DataLoader(mx.gluon.data.ArrayDataset(*columns), batch_size=8)


@pytest.fixture(scope="module")
def minibert():
    mx.random.seed(0)
    net = MiniBert(vocab=VOCAB)
    net.initialize(mx.init.Normal(0.02))
    return net


@pytest.fixture(scope="module")
def quantized(minibert):
    return gq.quantize(minibert, _loader(bert_batches(VOCAB)), preset="gluonnlp-bert",
                       progress=False)


def test_the_preset_says_which_batch_elements_are_inputs(minibert):
    batch = bert_batches(VOCAB, count=1)[0]
    feeds = gq.get_preset("gluonnlp-bert").inputs
    spec = InputSpec.from_net(minibert, batch=batch, feeds=feeds)
    assert spec.arg_names == ["inputs", "token_types", "valid_length"] and spec.explicit
    assert InputSpec.from_net(minibert, batch=batch[:2], feeds=feeds).count == 2
    by_name = InputSpec.from_net(minibert, batch={"inputs": batch[0], "token_types": batch[1]},
                                 feeds=feeds)
    assert by_name.count == 2       # a dict batch names its inputs itself
    with pytest.raises(gq.InputMismatchError, match="optionally, valid_length"):
        InputSpec.from_net(minibert, batch=batch)        # no preset: label or input?


def test_sentence_transform_order_is_refused_with_the_input_fn_that_reorders_it(
        minibert, quantized):
    """GluonNLP's BERTSentenceTransform yields (input_ids, valid_length, segment_ids) and
    BERTModel takes (inputs, token_types, valid_length): fed as they come, valid_length went
    in as token types and MXNet's shape error said nothing of the order."""
    batches = [(b[0], b[2], b[1], b[3]) for b in bert_batches(VOCAB)]
    with pytest.raises(gq.InputMismatchError,
                       match=r"ranks \(2, 1, 2, 1\).*takes inputs, token_types, valid_length "
                             r"with ranks \(2, 2, 1\).*input_fn=lambda b: \(b\[0\], b\[2\], "
                             r"b\[1\]\)"):
        gq.quantize(minibert, batches, preset="gluonnlp-bert", progress=False)
    qnet = gq.quantize(minibert, batches, preset="gluonnlp-bert", progress=False,
                       input_fn=lambda b: (b[0], b[2], b[1]))
    assert qnet.calibration_table == quantized.calibration_table


def test_bert_quantizes_in_one_call(minibert, quantized):
    report = quantized.report()
    assert quantized.fused.inputs.arg_names == ["inputs", "token_types", "valid_length"]
    dense = [r for r in report if r.op == "FullyConnected"]
    assert len(dense) == 9 and all(placed(r) for r in dense)
    for op in ("_contrib_interleaved_matmul_selfatt_qk",
               "_contrib_interleaved_matmul_selfatt_valatt"):
        layers = [r for r in report if r.op == op]
        assert len(layers) == 2 and all(r.quantized for r in layers)
    assert sum(r.pattern == "FullyConnected+LeakyReLU(gelu)" for r in dense) == 2
    for op, why in (("LayerNorm", "no int8 LayerNorm"), ("softmax", "no int8 softmax"),
                    ("Activation", "relu only"), ("elemwise_add", "residual sums feed"),
                    ("Embedding", "int8 embedding is a lookup")):
        layers = [r for r in report if r.op == op]
        assert layers and all(not r.quantized and why in r.reason for r in layers), op
    tokens, types, valid, _ = bert_batches(VOCAB, count=1, seed=5)[0]
    sequence, pooled = minibert(tokens, types, valid)
    q_sequence, q_pooled = quantized(tokens, types, valid)
    assert cosine(sequence, q_sequence) >= 0.99 and cosine(pooled, q_pooled) >= 0.99
    # valid_length is an input of the int8 net, not dropped as a label
    short = mx.nd.ones_like(valid) * 4
    q_short = quantized(tokens, types, short)[0]
    assert cosine(q_short, minibert(tokens, types, short)[0]) >= 0.99
    assert (q_short - q_sequence).abs().max().asscalar() > 1e-3


def test_gelu_and_layernorm_ranges_are_bounded(quantized):
    report = quantized.report()
    gelu = [r for r in report if r.pattern == "FullyConnected+LeakyReLU(gelu)"]
    assert all("range max 10" in r.reason and "clip_max=10" in r.reason
               for r in gelu if r.quantized)      # fp32 where int8 pairs saturate
    norms = [r for r in report if r.op == "LayerNorm" and r.threshold is not None]
    assert norms and all("range min -50" in r.reason for r in norms)


def test_bounds_narrow_the_calibrated_ranges(vnni_plan):
    """GELU outputs far above 10 and LayerNorm outputs far below -50: minmax ranges them
    fully, the preset's bounds narrow them and the report says from where."""
    mx.random.seed(1)
    net = MiniBert(vocab=VOCAB, layers=1)
    net.initialize(mx.init.Normal(0.02))
    layer = net.layers[0]
    layer.ffn1.weight.set_data(layer.ffn1.weight.data() * 300)
    gamma = layer.norm1.gamma.data()
    gamma[:4] = 200.0
    layer.norm1.gamma.set_data(gamma)
    qnet = gq.quantize(net, bert_batches(VOCAB, count=2), preset="gluonnlp-bert",
                       calibrator="minmax", bias_correction=False, progress=False)
    raw, table = qnet.calibration.table, qnet.calibration_table
    bounds = qnet.fused.range_bounds
    gelu = [k for k in table.meta["bounded_ranges"] if bounds[k][1] == 10.0]
    norm = [k for k in table.meta["bounded_ranges"] if bounds[k][0] == -50.0]
    assert gelu and norm
    assert all(table[k][1] == 10.0 and raw[k][1] > 10.0 for k in gelu)
    assert all(table[k][0] == -50.0 and raw[k][0] < -50.0 for k in norm)
    narrowed = [r for r in qnet.report() if "narrowed from" in r.reason]
    assert {r.pattern for r in narrowed} >= {"FullyConnected+LeakyReLU(gelu)", "LayerNorm"}


def test_without_the_preset_a_tuple_batch_is_ambiguous(minibert):
    with pytest.raises(gq.InputMismatchError, match="num_inputs=3"):
        gq.quantize(minibert, bert_batches(VOCAB, count=1), progress=False)


def test_the_preset_applies_to_gluonnlp_bert_classes(minibert):
    assert preset_for(minibert) is None
    lookalike = type("BERTModel", (MiniBert,), {"__module__": "gluonnlp.model.bert"})
    assert preset_for(lookalike(vocab=VOCAB)).name == "gluonnlp-bert"


def test_declared_fusions_are_what_the_fusion_pass_makes(quantized):
    """backends.ONEDNN names the fused self-attention operators its fusion pass makes."""
    fused_ops = {node.op for node in quantized.fused.view}
    assert {"_sg_mkldnn_selfatt_qk", "_sg_mkldnn_selfatt_valatt",
            "_sg_mkldnn_fully_connected"} <= fused_ops
    assert fused_ops.intersection(n for n in fused_ops if n.startswith("_sg_")) <= set(
        ONEDNN.fused_ops)


def test_softmax_with_lengths_runs_as_a_masked_softmax(minibert):
    """masked_softmax: the fp32 graph computes what the net does, with no length softmax."""
    batch = bert_batches(VOCAB, count=1, seed=3)[0]
    qnet = gq.QuantizedHybridBlock(minibert, preset="gluonnlp-bert")
    qnet.fuse(batch)
    softmaxes = [n for n in qnet.fused.view if n.op == "softmax"]
    assert len(softmaxes) == 2 and all(n.attr("use_length", "False") == "False"
                                       for n in softmaxes)
    params = pipeline.fp32_params(minibert, qnet.fused, mx.cpu(), list(batch[:3]))
    graph = _mxnet.symbol_block(qnet.fused_graph, qnet.input_names, params, mx.cpu())
    for ours, theirs in zip(graph(*batch[:3]), minibert(*batch[:3])):
        np.testing.assert_allclose(ours.asnumpy(), theirs.asnumpy(), rtol=1e-5, atol=1e-5)
