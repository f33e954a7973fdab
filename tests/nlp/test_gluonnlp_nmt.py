"""GluonNLP 0.10's translation model (NMTModel): a plain Block whose decoding reads
``.shape`` in Python, so ``quantize()`` refuses it and ``quantize_parts`` quantizes its
transformer encoder and decoder in place (skipped without GluonNLP, see
test_gluonnlp_bert.py; tests/test_parts.py covers the same on a hand-written model)."""
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq

from _nets import cosine
from conftest import PAIRS_SATURATE

nlp = pytest.importorskip("gluonnlp", exc_type=ImportError)


def _nmt():
    from gluonnlp.model.transformer import get_transformer_encoder_decoder
    from gluonnlp.model.translation import NMTModel
    vocab = nlp.Vocab(nlp.data.count_tokens(list("abcdefghijklmnopqrstuvwxyz")))
    mx.random.seed(0)
    encoder, decoder, one_step = get_transformer_encoder_decoder(
        units=64, hidden_size=128, num_heads=4, num_layers=2, max_src_length=50,
        max_tgt_length=50, scaled=True)
    model = NMTModel(src_vocab=vocab, tgt_vocab=vocab, encoder=encoder, decoder=decoder,
                     one_step_ahead_decoder=one_step, embed_size=64, share_embed=True,
                     tie_weights=True, prefix="nmt_")
    model.initialize(mx.init.Xavier(magnitude=2.0))
    model.hybridize()
    return model


def _batches(seed, count):
    rng = np.random.RandomState(seed)
    return [tuple(mx.nd.array(a) for a in (
        rng.randint(4, 30, size=(4, 10)), rng.randint(4, 30, size=(4, 9)),
        rng.randint(5, 11, size=4), rng.randint(5, 10, size=4))) for _ in range(count)]


def test_translation_model_runs_its_encoder_and_decoder_in_int8(tmp_path):
    model = _nmt()
    held_out = _batches(9, 1)[0]
    ref = model(*held_out)[0]
    with pytest.raises(gq.NotHybridizableError, match="quantize_parts"):
        gq.quantize(model, _batches(0, 4), num_inputs=4)
    result = gq.quantize_parts(model, _batches(0, 4), num_inputs=4)
    rows = {r.path: r for r in result.results}
    assert sorted(result.parts) == ["decoder", "encoder", "tgt_proj"]
    # where int8 pairs saturate, its projections without a bias (signed input) run fp32
    assert rows["encoder"].layers == 12
    assert rows["encoder"].int8_layers == 12 or (PAIRS_SATURATE and
                                                 rows["encoder"].int8_layers >= 4)
    assert rows["one_step_ahead_decoder"].reason == "never called on the calibration data"
    out = model(*held_out)[0]
    assert cosine(ref, out) >= 0.999
    result.export(str(tmp_path / "nmt"))
    fresh = _nmt()
    gq.load_parts(fresh, str(tmp_path / "nmt"))
    assert np.array_equal(fresh(*held_out)[0].asnumpy(), out.asnumpy())
