"""The image stem rule (graph/stem.py): the convolution reading the image and the depthwise
convolution reading it stay fp32 by default; nothing else does."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import cli
from gluon_quant.graph.stem import DEPTHWISE_REASON, STEM_REASON

pytestmark = pytest.mark.usefixtures("image_stem")


def _mobile_net(head=True):
    """Stem, depthwise, pointwise, depthwise: MobileNet's first block in small, and a head
    doing most of the multiply-adds (the stem and its depthwise reader do 3% with it, 51%
    without)."""
    net = nn.HybridSequential(prefix="m_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, strides=2, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(8, 3, padding=1, groups=8), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(16, 1), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(16, 3, padding=1, groups=16), nn.Activation("relu"))
        if head:
            net.add(nn.Conv2D(64, 3, padding=1), nn.Activation("relu"))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net


def _batches(channels=3, n=2):
    return [np.random.RandomState(i).uniform(-1, 1, (4, channels, 24, 24)).astype("float32")
            for i in range(n)]


def _rows(qnet):
    return {row.layer: row for row in qnet.report()}


def test_stem_and_the_depthwise_reading_it_stay_fp32():
    net = _mobile_net()
    qnet = gq.quantize(net, _batches(), progress=False)
    rows = _rows(qnet)
    assert not rows["m_conv0"].quantized and rows["m_conv0"].reason == STEM_REASON
    assert not rows["m_conv1"].quantized and rows["m_conv1"].reason == DEPTHWISE_REASON
    # the pointwise convolution and the second depthwise one read int8 tensors as before
    assert rows["m_conv2"].quantized and rows["m_conv3"].quantized, qnet.report()
    x = mx.nd.array(_batches(n=3)[2])
    ref, out = net(x).asnumpy().ravel(), qnet(x).asnumpy().ravel()
    assert np.dot(ref, out) / np.linalg.norm(ref) / np.linalg.norm(out) > 0.99


def test_fp32_stem_false_quantizes_the_stem(tmp_path):
    net = _mobile_net()
    qnet = gq.quantize(net, _batches(), progress=False, fp32_stem=False)
    rows = _rows(qnet)
    assert rows["m_conv0"].quantized and rows["m_conv1"].quantized, qnet.report()
    assert qnet.config.to_dict()["fp32_stem"] is False
    args = cli.build_parser().parse_args(
        ["quantize", "resnet18_v1", "--calib", "x", "--out", "o", "--int8-stem"])
    assert cli.quant_config(args).fp32_stem is False
    with pytest.raises(gq.ConfigError, match="fp32_stem must be True or False, got 'no'"):
        gq.QuantConfig(fp32_stem="no")


def test_a_stem_reading_normalized_raw_pixels_stays_fp32():
    net = _mobile_net()
    raw = [np.round(b * 127.0 + 128.0) for b in _batches()]
    qnet = gq.quantize(net, raw, progress=False,
                       input_normalization=((128.0,) * 3, (127.0,) * 3))
    rows = _rows(qnet)
    assert rows["m_conv0"].reason == STEM_REASON and rows["m_conv1"].reason == DEPTHWISE_REASON


@pytest.mark.parametrize("channels", [8, 16])
def test_a_first_convolution_over_many_channels_is_not_a_stem(channels):
    # a feature map in, not an image: the rule leaves it (and its depthwise reader) int8
    net = _mobile_net()
    qnet = gq.quantize(net, _batches(channels), progress=False)
    rows = _rows(qnet)
    assert rows["m_conv0"].quantized and rows["m_conv1"].quantized, qnet.report()


def test_a_stem_doing_much_of_the_work_stays_int8():
    # 51% of the multiply-adds: fp32 there would cost more speed than it is worth
    rows = _rows(gq.quantize(_mobile_net(head=False), _batches(), progress=False))
    assert rows["m_conv0"].quantized and rows["m_conv1"].quantized, rows


def test_three_channel_convolutions_inside_the_net_are_not_stems():
    net = nn.HybridSequential(prefix="i_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1), nn.Activation("relu"),
                nn.Conv2D(3, 1), nn.Activation("relu"),      # 3 channels out ...
                nn.Conv2D(16, 3, padding=1), nn.Activation("relu"),   # ... read here
                nn.GlobalAvgPool2D(), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    rows = _rows(gq.quantize(net, _batches(16), progress=False))
    assert all(rows["i_conv%d" % i].quantized for i in range(3)), rows


def test_a_stem_read_by_a_full_convolution_stays_int8():
    # ResNet's and MobileNetV2's stems: fp32 would cost speed for no measured accuracy
    net = nn.HybridSequential(prefix="r_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, strides=2, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(2), nn.Conv2D(16, 3, padding=1, groups=1), nn.Activation("relu"),
                nn.GlobalAvgPool2D(), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    rows = _rows(gq.quantize(net, _batches(), progress=False))
    assert rows["r_conv0"].quantized and rows["r_conv1"].quantized, rows
