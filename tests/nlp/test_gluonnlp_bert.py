"""GluonNLP 0.10's own BERT models quantize in one call, with no hint about their inputs.

GluonNLP is not in the ``test`` extra (its only release for MXNet 1.x builds a Cython
extension from source, which needs a C compiler): these tests skip without it, and
test_bert.py covers the same operators on a hand-written BERT. Install it with
``pip install -e ".[cpu,test,nlp]"``. Models use small configs (2 layers, 128 units) and
random N(0, 0.02) weights; the vocabulary is built here (GluonNLP would download it).
"""
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq

from _nets import bert_batches, cosine
from conftest import coverage

nlp = pytest.importorskip("gluonnlp", exc_type=ImportError)

VOCAB = 1000
SMALL = dict(num_layers=2, units=128, hidden_size=512, num_heads=2, max_length=64,
             embed_size=128)


def _bert(**kwargs):
    vocab = nlp.vocab.BERTVocab(nlp.data.count_tokens(["t%d" % i for i in range(VOCAB)]))
    options = dict(dataset_name=None, vocab=vocab, pretrained=False,
                   hparam_allow_override=True, use_pooler=True, use_decoder=False,
                   use_classifier=False, **SMALL)
    options.update(kwargs)
    mx.random.seed(0)
    net, _ = nlp.model.get_model("bert_12_768_12", **options)
    net.initialize(mx.init.Normal(0.02))
    return net


def _loader(count=4):
    """GluonNLP's (tokens, token_types, valid_length, label) batches, from a DataLoader."""
    batches = bert_batches(VOCAB, count=count, length=32)
    columns = [mx.nd.concat(*[b[i] for b in batches], dim=0) for i in range(4)]
    return mx.gluon.data.DataLoader(mx.gluon.data.ArrayDataset(*columns), batch_size=8)


def _held_out():
    return bert_batches(VOCAB, count=1, length=32, seed=9)[0][:3]


def _int8_ops(report, op):
    layers = [r for r in report if r.op == op]
    return sum(r.quantized for r in layers), len(layers)


def test_bert_model_in_one_call():
    net = _bert()
    qnet = gq.quantize(net, _loader(), progress=False)
    assert qnet.preset.name == "gluonnlp-bert"
    assert qnet.fused.inputs.arg_names == ["inputs", "token_types", "valid_length"]
    report = qnet.report()
    assert coverage(report) == (9, 9)          # every dense layer, the pooler included
    for op in ("_contrib_interleaved_matmul_selfatt_qk",
               "_contrib_interleaved_matmul_selfatt_valatt"):
        assert _int8_ops(report, op) == (2, 2)
    assert _int8_ops(report, "LayerNorm")[0] == 0
    assert any("GluonNLP's own BERT int8 calibration" in r.reason for r in report)
    sequence, pooled = net(*_held_out())
    q_sequence, q_pooled = qnet(*_held_out())
    assert cosine(sequence, q_sequence) >= 0.99 and cosine(pooled, q_pooled) >= 0.99


def test_bert_classifier_in_one_call():
    net = nlp.model.BERTClassifier(_bert(), num_classes=3, dropout=0.1)
    net.classifier.initialize(mx.init.Normal(0.02))
    qnet = gq.quantize(net, _loader(), progress=False)
    assert qnet.preset.name == "gluonnlp-bert"
    assert coverage(qnet.report()) == (10, 10)
    assert cosine(net(*_held_out()), qnet(*_held_out())) >= 0.99


def test_bert_with_decoder_and_classifier_takes_masked_positions_by_name():
    """The masked-language-model decoder needs masked_positions: fed by name in a dict."""
    net = _bert(use_decoder=True, use_classifier=True)
    rs = np.random.RandomState(0)

    def as_dict(batch):
        return {"inputs": batch[0], "token_types": batch[1], "valid_length": batch[2],
                "masked_positions": mx.nd.array(rs.randint(0, 16, size=(8, 4)))}

    qnet = gq.quantize(net, [as_dict(b) for b in bert_batches(VOCAB, length=32)],
                       progress=False)
    assert coverage(qnet.report()) == (12, 12)
    held_out = list(_held_out()) + [mx.nd.array(rs.randint(0, 16, size=(8, 4)))]
    for fp32, int8 in zip(net(*held_out), qnet(*held_out)):
        assert cosine(fp32, int8) >= 0.99


@pytest.mark.parametrize("model", ["roberta_12_768_12", "distilbert_6_768_12"])
def test_bert_without_token_types_takes_tokens_and_lengths(model):
    """RoBERTa and DistilBERT are called ``net(tokens, valid_length)``: their ``__call__``
    passes empty token types to BERT's ``hybrid_forward``. Their inputs were read from
    ``hybrid_forward``, so BERT's ``(tokens, token_types, valid_length)`` order was asked
    for and their own batches refused."""
    vocab = nlp.Vocab(nlp.data.count_tokens(["t%d" % i for i in range(VOCAB)]))
    options = dict(SMALL, num_layers=2 if model.startswith("roberta") else 6)
    if model.startswith("roberta"):
        options["use_decoder"] = False
    mx.random.seed(0)
    net, _ = nlp.model.get_model(model, dataset_name=None, vocab=vocab, pretrained=False,
                                 hparam_allow_override=True, **options)
    net.initialize(mx.init.Normal(0.02))
    tokens = [(b[0], b[2], b[3]) for b in bert_batches(VOCAB, length=32)]
    qnet = gq.quantize(net, tokens, progress=False)
    assert qnet.preset.name == "gluonnlp-bert"
    assert qnet.fused.inputs.arg_names == ["inputs", "valid_length"]
    assert coverage(qnet.report())[0] == coverage(qnet.report())[1] >= 8
    held_out = _held_out()
    assert cosine(net(held_out[0], held_out[2]), qnet(held_out[0], held_out[2])) >= 0.99
    with pytest.raises(gq.InputMismatchError, match=r"takes inputs, valid_length with ranks "
                                                    r"\(2, 1\).*input_fn=lambda b: \(b\[0\], "
                                                    r"b\[2\]\)"):
        gq.quantize(net, bert_batches(VOCAB, length=32), progress=False)


def test_roberta_classifier_and_bert_encoder_get_the_bert_preset():
    """RoBERTaClassifier (not a BERTClassifier) and a bare BERTEncoder are GluonNLP's BERT
    too: the preset's fp32 rules and its tuple order apply (RoBERTaClassifier's
    (tokens, valid_length, label) batches were ambiguous without it)."""
    vocab = nlp.Vocab(nlp.data.count_tokens(["t%d" % i for i in range(VOCAB)]))
    mx.random.seed(0)
    roberta, _ = nlp.model.get_model("roberta_12_768_12", dataset_name=None, vocab=vocab,
                                     pretrained=False, hparam_allow_override=True,
                                     use_decoder=False, **SMALL)
    net = nlp.model.RoBERTaClassifier(roberta, num_classes=3)
    net.initialize(mx.init.Normal(0.02))
    batches = [(b[0], b[2], b[3]) for b in bert_batches(VOCAB, length=32)]
    qnet = gq.quantize(net, batches, progress=False)
    assert qnet.preset.name == "gluonnlp-bert"
    assert qnet.fused.inputs.arg_names == ["inputs", "valid_length"]
    held_out = _held_out()
    assert cosine(net(held_out[0], held_out[2]), qnet(held_out[0], held_out[2])) >= 0.99
    encoder = roberta.encoder
    x = roberta.word_embed(held_out[0]).transpose((1, 0, 2))     # the encoder takes TNC
    qenc = gq.quantize(encoder, [{"inputs": x, "valid_length": held_out[2]}], progress=False)
    assert qenc.preset.name == "gluonnlp-bert"
    assert not any(r.quantized for r in qenc.report() if r.op == "elemwise_add")
    assert cosine(encoder(x, None, held_out[2])[0], qenc(x, None, held_out[2])[0]) >= 0.99
