"""Every GluonCV task family in one call: detection (SSD, YOLOv3, Faster R-CNN, CenterNet),
segmentation (FCN, PSPNet, DeepLab), pose (simple_pose) and video (R(2+1)D, I3D).

Networks have random weights with BatchNorm statistics set from crops of the offline
sample photos (SymbolBlock feature extractors included), small inputs to keep the tests
fast; detectors are compared row by row with NMS off (see
``test_gluoncv_models.detection_agreement``).
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.graph.passes import COMPARED_POOL_REASON
from gluon_quant.zoo.gluoncv import set_batchnorm_statistics
from conftest import PAIRS_SATURATE, coverage

gluoncv_zoo = pytest.importorskip("gluoncv.model_zoo")


def _conv_bn_net(prefix):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
    return net


def test_batchnorm_statistics_reach_inside_symbol_blocks():
    """A SymbolBlock gets exactly the statistics its Gluon twin gets from forward hooks."""
    x = mx.nd.array(np.random.RandomState(0).randn(6, 3, 10, 10).astype("float32"))
    mx.random.seed(0)
    plain = _conv_bn_net("twin_")
    plain.initialize(mx.init.Xavier())
    plain(x)
    data = mx.sym.var("data")
    graph = nn.SymbolBlock(plain(data), data, params=plain.collect_params())
    outer = nn.HybridSequential()   # a Gluon net holding a SymbolBlock, as GluonCV's SSD
    outer.add(graph, nn.Conv2D(4, 1), nn.BatchNorm())
    outer[1:].initialize(mx.init.Xavier())
    reference = {k: v.data().copy() for k, v in plain.collect_params().items()}
    assert set_batchnorm_statistics(outer, x) == 3
    from_graph = {k: v.data().copy() for k, v in graph.collect_params().items()}
    for bn in (plain[1], plain[4]):     # reset, then the plain net's own hooks
        bn.running_mean.set_data(mx.nd.zeros(8))
        bn.running_var.set_data(mx.nd.ones(8))
    assert set_batchnorm_statistics(plain, x) == 2
    for name, value in plain.collect_params().items():
        if "running" in name:
            assert not np.allclose(value.data().asnumpy(), reference[name].asnumpy())
            np.testing.assert_allclose(from_graph[name].asnumpy(), value.data().asnumpy(),
                                       rtol=1e-5, atol=1e-6)
    # The outer BatchNorm saw the SymbolBlock's output with the new statistics.
    y = outer[1](graph(x))
    np.testing.assert_allclose(outer[2].running_mean.data().asnumpy(),
                               y.mean(axis=(0, 2, 3)).asnumpy(), rtol=1e-4, atol=1e-5)


class _PeakPicker(mx.gluon.HybridBlock):
    """A heatmap head and CenterNet's peak picking: keep = maxpool(h) == h."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(8, 3, padding=1), nn.Activation("relu"), nn.Conv2D(4, 1))
            self.nms = nn.MaxPool2D(3, 1, 1)

    def hybrid_forward(self, F, x):
        heat = F.sigmoid(self.body(x))
        return F.broadcast_equal(self.nms(heat), heat) * heat


def _peaks(disable=None):
    mx.random.seed(0)
    net = _PeakPicker()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randn(4, 3, 12, 12).astype("float32") for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    x = mx.nd.array(batches[1])
    ref, out = net(x).asnumpy(), qnet(x).asnumpy()
    return qnet, ref > 0, out > 0


def test_max_pool_compared_with_its_input_stays_fp32(disable_pass):
    """The pooling is not quantized over the sigmoid's own rounding: it runs in int8 on
    the convolution's int8 output before the sigmoid (graph/maxpools.py, exact), or in
    fp32 without that pass."""
    qnet, peaks, kept = _peaks()
    pools = [r for r in qnet.report() if r.op == "Pooling"]
    assert [r.quantized for r in pools] == [True]
    assert pools[0].reason.startswith("int8 max pooling of its input's int8 values")
    assert peaks.sum() > 20 and (peaks == kept).mean() >= 0.99
    disable_pass("int8_max_pools")
    qnet, peaks, again = _peaks()
    pools = [r for r in qnet.report() if r.op == "Pooling"]
    assert [(r.quantized, r.reason) for r in pools] == [(False, COMPARED_POOL_REASON)]
    assert np.array_equal(kept, again)
    disable_pass("compared_pools")      # the int8 pooling finds (almost) no peak
    _, peaks, kept = _peaks()
    assert kept.sum() < 0.2 * peaks.sum()


class _TwoHeads(mx.gluon.HybridBlock):
    """A detector-like net: an exact integer output first (class ids), then scores."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(8, 3, padding=1), nn.Activation("relu"), nn.Conv2D(4, 1))

    def hybrid_forward(self, F, x):
        scores = self.body(x)
        return F.zeros_like(x).slice_axis(axis=1, begin=0, end=1), scores


def test_doctor_measures_every_output_not_the_first():
    from gluon_quant import debug
    mx.random.seed(0)
    net = _TwoHeads()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randn(4, 3, 12, 12).astype("float32") for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    scores_db = debug.compare(qnet, batches[1:]).outputs[1][0]
    assert scores_db < 60       # the exact first output (200 dB) must not hide it
    floor = debug.activation_floor(qnet, batches[1:])
    assert floor.int8_sqnr_db == pytest.approx(scores_db, abs=1e-6)
    assert debug.sensitivity(qnet, batches[1:]).baseline_sqnr_db == pytest.approx(scores_db,
                                                                                  abs=1e-6)


# -------------------------------------------------------------- every family, one call
def _cos(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _inputs(shape, seed):
    """Crops of the offline sample photos; a clip repeats its crop, drifting a pixel a frame."""
    from gluon_quant.zoo.gluoncv import sample_batches
    crops = sample_batches(1, shape[0], size=max(shape[-2:]), seed=seed)[0]
    crops = crops[..., :shape[-2], :shape[-1]]
    if len(shape) == 5:
        crops = np.stack([np.roll(crops, t, axis=-1) for t in range(shape[2])], axis=2)
    return np.ascontiguousarray(crops)


def agreement(task, ref, out):
    """The task's fp32/int8 agreement: a dict of named numbers."""
    ref, out = [r.asnumpy() for r in ref], [o.asnumpy() for o in out]
    if task == "detection":         # NMS off: (ids, scores, boxes) row by row
        return {"ids": float((ref[0] == out[0]).mean()), "scores": _cos(ref[1], out[1]),
                "boxes": _cos(ref[2], out[2]), "score_std": float(ref[1].std())}
    if task == "centernet":         # top-k lists: near-equal peaks swap places
        return {"scores": _cos(np.sort(ref[1], axis=None), np.sort(out[1], axis=None)),
                "score_std": float(ref[1].std())}
    if task == "segmentation":
        return {"pixels": float((ref[0].argmax(1) == out[0].argmax(1)).mean()),
                "logits": _cos(ref[0], out[0])}
    return {"cosine": _cos(ref[0], out[0])}


#: name -> (input shape, task, {metric: lowest value}). Bars are the values measured on
#: random weights with BatchNorm statistics from photos, rounded down: random-weight
#: detectors at these small inputs are chaotic (YOLOv3's boxes are exp() of predictions,
#: box cosine 0.03 on yolo3_mobilenet1.0 at 128 px, and SSD-MobileNet's fp32 boxes reach
#: 3e8 and 0.5 % are not finite), so box agreement is asserted only where it means something
#: (test_gluoncv_models.test_ssd_detections_agree: 0.99 on SSD-ResNet50 at 192 px).
FAMILIES = {
    "ssd_512_mobilenet1.0_voc": ((2, 3, 128, 128), "detection", {"ids": 0.85, "scores": 0.7}),
    "center_net_resnet18_v1b_voc": ((2, 3, 128, 128), "centernet", {"scores": 0.93}),
    "simple_pose_resnet18_v1b": ((2, 3, 128, 96), "pose", {"cosine": 0.98}),
    "r2plus1d_resnet18_kinetics400": ((1, 3, 4, 48, 48), "video", {"cosine": 0.97}),  # .972-.975
    "yolo3_mobilenet1.0_voc": ((2, 3, 128, 128), "detection", {"ids": 0.99, "scores": 0.75}),
    "faster_rcnn_resnet50_v1b_voc": ((1, 3, 160, 160), "detection", {"scores": 0.5}),
    "psp_resnet50_ade": ((1, 3, 96, 96), "segmentation", {"logits": 0.5}),
    "deeplab_resnet50_ade": ((1, 3, 96, 96), "segmentation", {"logits": 0.5}),
    "ssd_300_vgg16_atrous_voc": ((1, 3, 300, 300), "detection", {"ids": 0.9, "scores": 0.9}),
    "yolo3_darknet53_voc": ((1, 3, 160, 160), "detection", {"ids": 0.9}),
    "i3d_resnet50_v1_kinetics400": ((1, 3, 8, 64, 64), "video", {"cosine": 0.9}),
}
#: Too slow for the default run on a 2-core machine, which keeps SSD, CenterNet and pose
#: (R(2+1)D alone takes 40-75 s to build and quantize). Faster R-CNN's failure has its
#: minimal case in tests/test_bias.py; FCN and SSD-ResNet50 run in test_gluoncv_models.py.
SLOW = {"psp_resnet50_ade", "deeplab_resnet50_ade", "ssd_300_vgg16_atrous_voc",
        "yolo3_darknet53_voc", "i3d_resnet50_v1_kinetics400", "faster_rcnn_resnet50_v1b_voc",
        "yolo3_mobilenet1.0_voc", "r2plus1d_resnet18_kinetics400"}
#: GluonCV's PSPNet and DeepLab fix their pyramid/ASPP upsampling sizes from ``crop_size``
#: at construction: they run only at that input size. (VGG-SSD needs >= 268 px.)
BUILD = {"psp_resnet50_ade": {"crop_size": 96}, "deeplab_resnet50_ade": {"crop_size": 96}}
PRESETS = {"detection": None, "centernet": "gluoncv-centernet",
           "segmentation": "gluoncv-segmentation", "pose": "gluoncv-classification",
           "video": "gluoncv-classification"}


def _family_params():
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
            for name in FAMILIES]


def _check(name, net, qnet, shape, task):
    import logging
    x = mx.nd.array(_inputs(shape, 99))
    ref, out = net(x), qnet(x)
    ref = ref if isinstance(ref, (list, tuple)) else [ref]
    out = out if isinstance(out, (list, tuple)) else [out]
    assert [r.shape for r in ref] == [o.shape for o in out]
    found = agreement(task, ref, out)
    quantized, total = coverage(qnet.report())
    logging.getLogger(__name__).info("%s: %s, %d/%d int8", name, found, quantized, total)
    assert quantized >= 0.9 * total
    if "score_std" in found:        # BatchNorm statistics reached every layer
        assert found["score_std"] > 1e-3
    for metric, bar in FAMILIES[name][2].items():   # 7-bit codes where int8 pairs saturate
        assert found[metric] >= bar - (0.02 if PAIRS_SATURATE else 0), (metric, found)
    if PRESETS[task]:
        assert qnet.preset.name == PRESETS[task]


@pytest.mark.parametrize("name", _family_params())
def test_user_built_zoo_net_quantizes_in_one_call(name):
    from gluon_quant.zoo.gluoncv import initialize_random
    shape, task, _ = FAMILIES[name]
    net = gluoncv_zoo.get_model(name, pretrained=False, pretrained_base=False,
                                **BUILD.get(name, {}))
    initialize_random(net)
    if task == "detection":
        net.set_nms(nms_thresh=0)
    calib = [_inputs(shape, seed) for seed in (1, 2)]
    set_batchnorm_statistics(net, mx.nd.array(calib[0]))
    qnet = gq.quantize(net, calib, progress=False)
    _check(name, net, qnet, shape, task)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_zoo_get_model_quantizes_every_family(name):
    from gluon_quant.zoo import get_model
    shape, task, _ = FAMILIES[name]
    calib = [_inputs(shape, seed) for seed in (1, 2)]
    extra = {"nms_thresh": 0} if task == "detection" else {}    # to GluonCV: NMS off
    qnet = get_model(name, calib_data=calib, progress=False, **extra, **BUILD.get(name, {}))
    _check(name, qnet.net, qnet, shape, task)
