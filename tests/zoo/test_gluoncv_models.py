"""GluonCV model zoo: presets, get_model, lean int8 graphs and fp32/int8 agreement per model.

Networks have random weights (``pretrained=False``: no internet here), Xavier-initialized,
with BatchNorm statistics set from real photos (random crops of the offline sample photos),
so that activations look like a trained net's. Agreement is measured on other crops.
"""
import logging

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.debug import fake_quant_block
from gluon_quant.errors import UnknownNameError
from gluon_quant.graph.passes import SIGNED_POOL_REASON, count_ops
from gluon_quant.presets import KeepFP32, PRESETS, Preset, get_preset, preset_for
from gluon_quant.zoo import get_model as zoo_get_model
from gluon_quant.zoo.gluoncv import initialize_random, sample_batches, set_batchnorm_statistics
from conftest import PAIRS_SATURATE, coverage

gluoncv_zoo = pytest.importorskip("gluoncv.model_zoo")

QUANTIZE, DEQUANTIZE = "_contrib_quantize_v2", "_contrib_dequantize"


def cosine(a, b):
    """Smallest per-sample cosine between two (N, ...) arrays."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def build(name, size, **kwargs):
    """A random-weight GluonCV net with BN statistics from photos, calibration and eval batches."""
    extra = {} if name.startswith(("resnet", "mobilenet", "vgg", "se_")) else {
        "pretrained_base": False}
    net = gluoncv_zoo.get_model(name, pretrained=False, **extra, **kwargs)
    initialize_random(net)
    set_batchnorm_statistics(net, mx.nd.array(sample_batches(1, 32, size=size, seed=1)[0]))
    calib = sample_batches(2, 8, size=size, seed=2)
    evaluation = mx.nd.array(sample_batches(1, 8, size=size, seed=99)[0])
    return net, calib, evaluation


def detection_agreement(net, qnet, x, top=20):
    """fp32 vs int8 detections with NMS off, so that both list (anchor, class) in one order.

    Random-weight detectors score every class about equally, so ranks after NMS flip with
    noise far below int8's (fp32 itself with 0.3 % input noise keeps only ~25 % of its top
    detections); comparing entry by entry measures the quantization, not the ties.

    Returns
    -------
    ids_equal : bool
    score_cosine, box_cosine : float
    top_box_error : float
        Largest coordinate difference (pixels) between fp32 and int8 boxes of fp32's
        ``top`` best entries per image.
    """
    net.set_nms(nms_thresh=0)  # gluoncv: <= 0 disables NMS (and the top-k slicing)
    fid, fscore, fbox = (a.asnumpy() for a in net(x))
    qid, qscore, qbox = (a.asnumpy() for a in qnet(x))
    worst = max(float(np.abs(fbox[i, j] - qbox[i, j]).max()) for i in range(len(fid))
                for j in np.argsort(-fscore[i, :, 0])[:top])
    return (bool((fid == qid).all()), cosine(fscore, qscore), cosine(fbox, qbox), worst)


def classifier_agreement(name, size=224):
    net, calib, x = build(name, size)
    qnet = gq.quantize(net, calib, progress=False)
    return cosine(net(x).asnumpy(), qnet(x).asnumpy()), qnet


# ---------------------------------------------------------------------------- presets
def test_get_preset_unknown_name_lists_valid_names_sorted():
    with pytest.raises(UnknownNameError) as err:
        get_preset("gluoncv-sdd")
    message = str(err.value)
    assert "'gluoncv-sdd'" in message
    assert ", ".join(repr(n) for n in sorted(PRESETS)) in message
    assert "Did you mean 'gluoncv-ssd'" in message


def test_presets_are_frozen_data():
    preset = get_preset("gluoncv-ssd")
    with pytest.raises(Exception):
        preset.name = "other"
    assert all(isinstance(rule, KeepFP32) and rule.reason for rule in preset.keep_fp32)
    assert get_preset("none").keep_fp32 == ()


def test_preset_detected_from_gluoncv_class():
    assert preset_for(gluoncv_zoo.get_model("resnet18_v1")).name == "gluoncv-classification"
    assert preset_for(gluoncv_zoo.get_model("ssd_512_resnet50_v1_voc", pretrained_base=False)
                      ).name == "gluoncv-ssd"
    assert preset_for(gluoncv_zoo.get_model("yolo3_darknet53_voc", pretrained_base=False)
                      ).name == "gluoncv-yolo3"
    assert preset_for(gluoncv_zoo.get_model("fcn_resnet50_voc", pretrained_base=False)
                      ).name == "gluoncv-segmentation"
    assert preset_for(gluoncv_zoo.get_model("mobilenetv3_small")).name == "gluoncv-mobilenetv3"
    assert preset_for(nn.Dense(3)) is None


def _small_net():
    net = nn.HybridSequential(prefix="small_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(8, 3, padding=1), nn.Activation("relu"), nn.Flatten(), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    return net


def test_preset_by_name_or_instance_shows_in_report(tiny_batches):
    rule = KeepFP32("Dense", "logits are compared by argmax downstream")
    mine = Preset("mine", "test preset", keep_fp32=(rule,))
    qnet = gq.quantize(_small_net(), tiny_batches, preset=mine, progress=False)
    dense = [r for r in qnet.report() if r.op == "FullyConnected"]
    assert len(dense) == 1 and not dense[0].quantized
    assert dense[0].reason == "preset 'mine': logits are compared by argmax downstream"
    assert coverage(qnet.report()) == (2, 3)
    # A user exclusion wins over the preset's reason for the same layer.
    qnet = gq.quantize(_small_net(), tiny_batches, preset=mine, exclude=["Dense"],
                       progress=False)
    assert [r.reason for r in qnet.report() if r.op == "FullyConnected"] == [
        "excluded by user ('Dense')"]
    with pytest.raises(UnknownNameError, match="Valid presets"):
        gq.quantize(_small_net(), tiny_batches, preset="nope", progress=False)


def test_downstream_rule_keeps_everything_after_head_in_fp32(tiny_batches):
    mine = Preset("after-first", "test", keep_fp32=(KeepFP32("small_conv0", "why",
                                                             downstream=True),))
    report = gq.quantize(_small_net(), tiny_batches, preset=mine, progress=False).report()
    convs = [r for r in report if r.op == "Convolution"]
    assert convs[0].quantized and not convs[1].quantized
    assert all(not r.quantized for r in report if r.op == "FullyConnected")


# ---------------------------------------------------------------------------- get_model
def test_zoo_get_model_unknown_name_lists_valid_names_sorted():
    with pytest.raises(UnknownNameError) as err:
        zoo_get_model("resnet18_v9")
    message = str(err.value)
    valid = sorted(gluoncv_zoo.get_model_list())
    assert "'resnet18_v9'" in message and ", ".join(valid) in message
    assert "Did you mean" in message


@pytest.mark.parametrize("name, error, words", [
    ("ssd_300_vgg16_atrous_voc_int8", gq.ConfigError,
     r"GluonCV's own int8 model.*quantize its fp32 model 'ssd_300_vgg16_atrous_voc'"),
    ("yolo3_mobilenet1.0_custom", gq.ConfigError, r"template for your own classes.*classes="),
    ("inceptionv1_kinetics400", gq.ModelExecutionError,
     r"GluonCV cannot build 'inceptionv1_kinetics400' with random weights.*Cannot reset "
     r"context.*export"),
])
def test_zoo_names_gluoncv_cannot_build_offline_say_why(name, error, words):
    """Found by building every zoo name: GluonCV's downloaded int8 models, its templates
    needing ``classes`` and its action-recognition constructors that fail with random
    weights each came out as GluonCV's bare error (the CLI blamed the network for them)."""
    with pytest.raises(error, match=words):
        zoo_get_model(name, calib_data=[np.zeros((1, 3, 32, 32), "float32")])


def test_zoo_builds_gluoncv_nets_whose_block_refuses_pretrained_base():
    """darknet53 hands ``pretrained_base`` to Gluon's Block, which refuses it with a
    ``Warning`` (not a TypeError): it is built without it."""
    x = np.random.RandomState(0).rand(2, 3, 64, 64).astype("float32")
    qnet = zoo_get_model("darknet53", calib_data=[x], progress=False)
    assert qnet(mx.nd.array(x)).shape == (2, 1000)
    assert coverage(qnet.report())[0] >= 50


def test_zoo_get_model_quantizes_with_photo_calibration(caplog):
    caplog.set_level(logging.WARNING, logger="gluon_quant")
    qnet = zoo_get_model("resnet18_v1", image_size=64, classes=10)
    assert any("no calib_data" in r.getMessage() for r in caplog.records)
    assert qnet.preset.name == "gluoncv-classification"
    assert coverage(qnet.report()) == (21, 21)
    x = mx.nd.array(sample_batches(1, 4, size=64, seed=5)[0])
    assert qnet(x).shape == (4, 10)
    assert cosine(qnet.net(x).asnumpy(), qnet(x).asnumpy()) >= 0.99


# ------------------------------------------------------------------------ lean graphs
class SEBlock(mx.gluon.HybridBlock):
    """conv-bn-relu, conv-bn, squeeze-excite (as GluonCV's SE-ResNet), residual add, relu."""

    def __init__(self, channels=16, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(channels, 3, padding=1), nn.BatchNorm(),
                          nn.Activation("relu"), nn.Conv2D(channels, 3, padding=1),
                          nn.BatchNorm())
            self.se = nn.HybridSequential()
            self.se.add(nn.Dense(channels // 4, use_bias=False), nn.Activation("relu"),
                        nn.Dense(channels, use_bias=False), nn.Activation("sigmoid"))
            self.tail = nn.HybridSequential()
            self.tail.add(nn.Conv2D(channels, 3, padding=1), nn.BatchNorm(),
                          nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Dense(5))

    def hybrid_forward(self, F, x):
        y = self.body(x)
        w = self.se(F.contrib.AdaptiveAvgPooling2D(y, output_size=1))
        y = F.Activation(F.broadcast_mul(y, w.expand_dims(axis=2).expand_dims(axis=2)) + x,
                         act_type="relu")
        return self.tail(y)


def _se_net():
    mx.random.seed(3)
    net = SEBlock()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).rand(32, 16, 12, 12).astype("float32"))
    set_batchnorm_statistics(net, x)
    return net, [x[i:i + 8] for i in range(0, 32, 8)]


def test_se_block_graph_is_as_lean_as_mxnet_flow():
    from mxnet.contrib.quantization import quantize_net_v2
    net, calib = _se_net()
    qnet = gq.quantize(net, calib, progress=False)
    ours = count_ops(qnet.quantized_graph)
    # int8 enters at the input, at the squeeze (the global mean of the signed BN output is
    # taken in fp32 on the dequantized tensor, see test_signed_global_pool_stays_fp32) and
    # after the fp32 sigmoid * feature product; it leaves once, before that product. Both
    # excitation layers stay int8 (the second one emits fp32 itself for the sigmoid).
    assert (ours[QUANTIZE], ours[DEQUANTIZE]) == (3, 1)
    assert coverage(qnet.report()) == (6, 6)
    pools = [r for r in qnet.report() if r.op == "Pooling"]
    assert [(r.quantized, r.reason) for r in pools][0] == (False, SIGNED_POOL_REASON)
    net.hybridize()
    data = mx.nd.concat(*calib, dim=0)
    loader = mx.gluon.data.DataLoader(  # MXNet's flow needs (data, label) batches
        mx.gluon.data.ArrayDataset(data, mx.nd.zeros(len(data))), batch_size=8)
    ref = quantize_net_v2(net, quantized_dtype="auto", calib_mode="naive", calib_data=loader,
                          num_calib_examples=len(data), ctx=mx.cpu())
    ref_counts = count_ops(ref(mx.sym.var("data")))
    logging.getLogger(__name__).info("SE block q/dq: ours %s, MXNet %s", ours, ref_counts)
    # MXNet's flow keeps the squeeze in fp32 too (it has no int8 AdaptiveAvgPooling2D), so
    # the structure is the same; what differs is accuracy (its fused sums clip, see
    # tests/graph/test_fused_sum.py).
    assert ours[QUANTIZE] + ours[DEQUANTIZE] <= ref_counts[QUANTIZE] + ref_counts[DEQUANTIZE]
    x = mx.nd.concat(*calib, dim=0)
    assert cosine(net(x).asnumpy(), qnet(x).asnumpy()) >= 0.99


def test_resnet18_v1_graph_is_int8_end_to_end():
    """One quantize at the input, nothing else: every requantize is folded into the convs."""
    cos, qnet = classifier_agreement("resnet18_v1")
    assert count_ops(qnet.quantized_graph) == {QUANTIZE: 1, DEQUANTIZE: 0,
                                               "_contrib_requantize": 0}
    assert coverage(qnet.report()) == (21, 21)
    assert cos >= 0.99


# --------------------------------------------------------------------- hard-swish (v3)
class HardSwishNet(mx.gluon.HybridBlock):
    """conv-bn then MobileNetV3's hard-swish x * relu6(x + 3) / 6, then conv and dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(8, 3, padding=1)
            self.bn = nn.BatchNorm()
            self.head = nn.HybridSequential()
            self.head.add(nn.Conv2D(8, 3, padding=1), nn.Activation("relu"), nn.Flatten(),
                          nn.Dense(4))

    def hybrid_forward(self, F, x):
        y = self.bn(self.conv(x))
        return self.head(y * (F.clip(y + 3.0, 0.0, 6.0) / 6.0))


def _hard_swish(x):
    net = HardSwishNet()
    net.initialize(mx.init.Xavier())
    set_batchnorm_statistics(net, x)
    return net, gq.quantize(net, [x[:8], x[8:]], progress=False)


def test_hard_swish_product_stays_fp32_by_default():
    x = mx.nd.array(np.random.RandomState(0).rand(16, 3, 10, 10).astype("float32"))
    net, qnet = _hard_swish(x)
    product = [r for r in qnet.report() if r.op == "elemwise_mul"]
    assert [r.quantized for r in product] == [False] and "wraps around" in product[0].reason
    assert cosine(net(x).asnumpy(), qnet(x).asnumpy()) >= 0.99


def test_hard_swish_multiplication_runs_in_int8_where_the_spec_allows(int8_products):
    """int8_mul_inputs: the uint8 hard sigmoid feeding the int8-only product is made int8
    (it failed at the first forward: "Expected: unsigned char v.s. given char")."""
    x = mx.nd.array(np.random.RandomState(0).rand(16, 3, 10, 10).astype("float32"))
    net, qnet = _hard_swish(x)
    assert [r.quantized for r in qnet.report() if r.op == "elemwise_mul"] == [True]
    assert cosine(net(x).asnumpy(), qnet(x).asnumpy()) >= 0.99


# ------------------------------------------------------------------- model agreement
#: Logit cosine each random-weight classifier must keep. The issue asks for 0.99; resnet18_v1
#: (above), vgg16 and se_resnet50_v1 reach it. Deeper random-weight BatchNorm nets amplify
#: every perturbation layer after layer (BatchNorm nets at initialization are chaotic), so
#: that even the fp32 net with only its activations rounded to 8 bits (the floor, see
#: gluon_quant.debug.activation_floor) stays below 0.99: resnet50_v1 0.989, resnet101_v1
#: 0.981, mobilenet1.0 0.967, mobilenetv2_1.0 0.967, mobilenetv3_large 0.907. No 8-bit
#: quantization of those activations can do better, so for them the test asserts that int8
#: stays close to that floor, and the bars are the measured values (16 calibration crops,
#: 8 evaluation crops) rounded down, so that a regression fails.
#: resnet50_v1 was 0.9866 before bias correction reached ReLU layers (0.9841 with it; it took
#: real-weight EfficientNet-Lite0 on held-out photos from 34/40 to 37/40 agreement).
COSINE_BARS = {"resnet50_v1": 0.984, "resnet50_v1b": 0.985, "resnet101_v1": 0.975,
               "resnet50_v2": 0.98, "vgg16": 0.99, "se_resnet50_v1": 0.99,
               "mobilenet1.0": 0.955, "mobilenetv2_1.0": 0.955,
               "mobilenetv3_large": 0.88}
#: Where int8 pairs saturate (no VNNI: 7-bit codes, graph/saturation.py), measured on an
#: AVX2 EPYC: resnet50_v1 0.9811, resnet50_v1b 0.9837, resnet50_v2 0.9753, se_resnet50_v1
#: 0.9873, mobilenetv3_large 0.8681 (each still near its floor, which rounds as int8 does).
COSINE_BARS_7BIT = {"resnet50_v1": 0.978, "resnet50_v1b": 0.98, "resnet50_v2": 0.972,
                    "se_resnet50_v1": 0.984, "mobilenetv3_large": 0.86}
#: int8 may lose at most this factor more than the floor does: (1 - cos) <= F (1 - floor).
FLOOR_FACTOR = 1.4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COSINE_BARS))
def test_classifier_agreement(name):
    net, calib, x = build(name, 224)
    qnet = gq.quantize(net, calib, progress=False)
    quantized, total = coverage(qnet.report())
    assert quantized == total
    ref = net(x).asnumpy()
    cos = cosine(ref, qnet(x).asnumpy())
    floor = cosine(ref, fake_quant_block(qnet)[0](x).asnumpy())
    logging.getLogger(__name__).info("%s: int8 logit cosine %.4f, 8-bit activation floor "
                                     "%.4f, %d/%d int8", name, cos, floor, quantized, total)
    bars = dict(COSINE_BARS, **COSINE_BARS_7BIT) if PAIRS_SATURATE else COSINE_BARS
    assert cos >= bars[name]
    # where pairs saturate oneDNN also halves the weights of int8-input convolutions (7-bit
    # weights), which an activation floor does not model
    assert near_floor(cos, floor, factor=2.5 if PAIRS_SATURATE else FLOOR_FACTOR), \
        (cos, floor)


def test_ssd_detections_agree():
    """SSD-ResNet50 with NMS off, near the 8-bit activation floor.

    Since set_batchnorm_statistics reaches inside GluonCV's SymbolBlock feature extractor,
    the random-weight ResNet-50 backbone has realistic statistics and is as chaotic as the
    random classifiers above (it kept 0/1 statistics before, and agreed at 0.99): int8 is
    held to the floor, and to bars at the measured values rounded down. With GluonCV's
    own anchors (they were Xavier noise before initialize_random kept them), the random
    box head's offsets go through exp() at full size: fp32 boxes reach 13,000 px, the
    floor itself keeps 0.63 box cosine and moves a top-20 box by 4,700 px.
    """
    net, calib, x = build("ssd_512_resnet50_v1_voc", 192)
    net.set_nms(nms_thresh=0)
    qnet = gq.quantize(net, calib, progress=False)
    assert qnet.preset.name == "gluoncv-ssd"
    report = qnet.report()
    assert any(r.reason.startswith("preset 'gluoncv-ssd'") for r in report)
    quantized, total = coverage(report)
    assert quantized == total
    _, score_cos, box_cos, top_error = detection_agreement(net, qnet, x)
    _, floor_score, floor_box, floor_error = detection_agreement(
        net, fake_quant_block(qnet)[0], x)
    logging.getLogger(__name__).info(
        "ssd: scores cosine %.4f (floor %.4f), boxes cosine %.4f (floor %.4f), top-20 box "
        "error %.0f px (floor %.0f px)", score_cos, floor_score, box_cos, floor_box,
        top_error, floor_error)
    assert near_floor(score_cos, floor_score, slack=0.02)
    assert near_floor(box_cos, floor_box, slack=0.02)
    slack = 0.02 if PAIRS_SATURATE else 0.0      # 7-bit codes where int8 pairs saturate
    assert score_cos >= 0.7 - slack and box_cos >= 0.6 - slack
    assert top_error <= 1.25 * floor_error


def test_initialize_random_keeps_anchors_and_reinitializes_what_gluoncv_initialized():
    """Detectors' anchors are mx.gluon.Constant values of the design: random weights must
    not replace them (Xavier noise made SSD's boxes a few thousandths of a pixel wide).
    CenterNet initializes itself with MXNet's uniform default: its weights get the same
    Xavier recipe as every other net, silently (it printed one warning per parameter)."""
    import warnings
    ssd = gluoncv_zoo.get_model("ssd_300_mobilenet0.25_voc", pretrained=False,
                                pretrained_base=False)
    initialize_random(ssd)
    ssd(mx.nd.zeros((1, 3, 128, 128)))
    anchors = [p for p in ssd.collect_params().values() if isinstance(p, mx.gluon.Constant)]
    assert len(anchors) == 6
    np.testing.assert_array_equal(anchors[0].data().asnumpy().ravel()[:4], [4, 4, 21, 21])
    center = gluoncv_zoo.get_model("center_net_resnet18_v1b_voc", pretrained=False,
                                   pretrained_base=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        initialize_random(center)
    assert not [w for w in caught if "already initialized" in str(w.message)]
    stem = center.collect_params()["resnetv1b_conv0_weight"].data().asnumpy()
    bound = np.sqrt(3.0 / (3 * 49 + 64 * 49 / 1.0) * 2)      # Xavier uniform, avg fan
    assert 0.9 * bound < np.abs(stem).max() <= bound         # not MXNet's uniform 0.07


def near_floor(cos, floor, slack=1e-3, factor=FLOOR_FACTOR):
    """int8 loses at most ``factor`` times what 8-bit activations alone lose."""
    return 1 - cos <= factor * (1 - floor) + slack


@pytest.mark.slow
def test_yolo3_detections_at_the_activation_floor():
    """Random-weight YOLOv3 cannot keep its boxes in 8 bits, with any quantizer.

    Darknet-53 with random weights amplifies perturbations through 75 convolutions, and
    the box sizes are exp() of the predictions times GluonCV's anchors (up to 373 px): the
    fp32 net with only its activations rounded to 8 bits (the floor) keeps 0.940 score
    cosine but 0.36 box cosine. int8 keeps the same classes everywhere and stays at that
    floor (0.938 and 0.39).
    """
    net, calib, x = build("yolo3_darknet53_voc", 320)
    net.set_nms(nms_thresh=0)
    qnet = gq.quantize(net, calib, progress=False)
    assert qnet.preset.name == "gluoncv-yolo3"
    ids_equal, score_cos, box_cos, _ = detection_agreement(net, qnet, x)
    _, floor_score, floor_box, _ = detection_agreement(net, fake_quant_block(qnet)[0], x)
    logging.getLogger(__name__).info(
        "yolo3: scores cosine %.4f (floor %.4f), boxes cosine %.4f (floor %.4f)",
        score_cos, floor_score, box_cos, floor_box)
    assert ids_equal
    assert near_floor(score_cos, floor_score) and near_floor(box_cos, floor_box)
    assert score_cos >= 0.93 and box_cos >= 0.35


def pixel_agreement(a, b):
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean().asscalar())


def test_fcn_pixel_agreement():
    """FCN-ResNet50 (dilated) with random weights is the most chaotic net here.

    The fp32 net with only its activations rounded to 8 bits (the floor) keeps 0.69 logit
    cosine and 34 % pixel agreement, so the issue's 95 % cannot be reached on random
    weights by any 8-bit quantization; oneDNN's run-to-run rounding differences alone move
    int8 between 0.65 and 0.72 cosine. The test asserts that int8 stays near the floor and
    above a bar that catches broken quantization (MXNet-style garbage gives cosine near 0).
    """
    net, calib, x = build("fcn_resnet50_voc", 96)
    x = x[:4]
    qnet = gq.quantize(net, calib, progress=False)
    assert qnet.preset.name == "gluoncv-segmentation"
    assert coverage(qnet.report()) == (59, 59)
    fp32, int8 = net(x)[0], qnet(x)[0]
    floor = fake_quant_block(qnet)[0](x)[0]
    assert int8.shape == fp32.shape and fp32.shape[:2] == (4, 21)
    cos = cosine(fp32.asnumpy(), int8.asnumpy())
    floor_cos = cosine(fp32.asnumpy(), floor.asnumpy())
    logging.getLogger(__name__).info(
        "fcn: logit cosine %.4f (floor %.4f), pixel agreement %.3f (floor %.3f)", cos,
        floor_cos, pixel_agreement(fp32, int8), pixel_agreement(fp32, floor))
    assert near_floor(cos, floor_cos, slack=0.05)
    assert cos >= 0.55


def test_get_model_sends_nms_settings_to_the_detector_not_its_constructor():
    """GluonCV's YOLOv3 passes ``nms_thresh`` to its backbone (TypeError), Faster R-CNN
    sets it itself (duplicate keyword): zoo.get_model calls ``set_nms`` instead."""
    from gluon_quant.errors import ConfigError
    from gluon_quant.zoo.gluoncv import _set_nms
    net = gluoncv_zoo.get_model("yolo3_mobilenet1.0_voc", pretrained_base=False)
    _set_nms(net, "yolo3_mobilenet1.0_voc", {"nms_thresh": 0, "post_nms": 50})
    assert (net.nms_thresh, net.post_nms) == (0, 50)
    with pytest.raises(ConfigError, match="force_nms"):
        _set_nms(net, "yolo3_mobilenet1.0_voc", {"force_nms": True})
    with pytest.raises(ConfigError, match=r"resnet18_v1 has no non-maximum suppression.*"
                                          r"drop nms_thresh"):
        _set_nms(gluoncv_zoo.get_model("resnet18_v1"), "resnet18_v1", {"nms_thresh": 0})
