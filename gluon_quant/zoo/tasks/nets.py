"""The three task nets: a GluonCV SSD, an FCN-like segmenter and a simple_pose-like net.

All three share one small backbone (pairs of 3x3 convolution + BatchNorm + ReLU, the first
of each pair with stride 2), small enough to learn a task from scratch in a few minutes on
one CPU core:

* :func:`detector`: GluonCV's own :class:`gluoncv.model_zoo.ssd.SSD` over the backbone's
  stride-8, 16, 32 and 64 maps (128 x 128 inputs, 4 anchors a cell, 1,360 anchors);
* :func:`segmenter`: FCN-8s-like: a 3x3 head on the stride-16 map, a 1x1 skip from
  stride 8, bilinear upsampling to the input size (class scores per pixel);
* :func:`pose_net`: simple_pose's head: two 4x4 stride-2 ``Deconvolution`` + BatchNorm
  + ReLU over the stride-16 map, a 1x1 convolution to one heatmap per keypoint at a
  quarter of the input size (96 x 96 in, 24 x 24 out).
"""
import functools

import mxnet as mx
from mxnet.gluon import nn

from .scenes import CLASSES, IMAGE_SIZE, KEYPOINTS

__all__ = ["detector", "segmenter", "pose_net"]

#: Channels of the backbone's stages (each halves the resolution).
_WIDTHS = (16, 32, 48, 64, 96, 96)


def _conv_bn(channels, stride, kernel=3):
    block = nn.HybridSequential()
    block.add(nn.Conv2D(channels, kernel, stride, kernel // 2, use_bias=False),
              nn.BatchNorm(), nn.Activation("relu"))
    return block


class Backbone(nn.HybridBlock):
    """Stages of ``conv(stride 2) + conv``; returns the maps of the stages in ``outputs``.

    Parameters
    ----------
    outputs : tuple of int
        Stage indices whose output maps are returned (stage ``i`` has stride ``2**(i+1)``).
    widths : tuple of int
        Channels of each stage.
    """

    def __init__(self, outputs, widths=_WIDTHS, **kwargs):
        super().__init__(**kwargs)
        self.outputs = tuple(outputs)
        with self.name_scope():
            self.stages = nn.HybridSequential()
            for width in widths[:max(self.outputs) + 1]:
                stage = nn.HybridSequential()
                stage.add(_conv_bn(width, 2), _conv_bn(width, 1))
                self.stages.add(stage)

    def hybrid_forward(self, F, x):
        maps = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.outputs:
                maps.append(x)
        return maps


def _ssd_features(**_ignored):
    """SSD's ``features`` factory: GluonCV calls it with ``pretrained``, ``ctx``..."""
    return Backbone(outputs=(2, 3, 4, 5))


def detector(classes=CLASSES):
    """A GluonCV SSD for 128 x 128 images over :class:`Backbone` (uninitialised).

    Returns
    -------
    gluoncv.model_zoo.ssd.SSD
        Outputs ``ids, scores, boxes`` (``(N, K, 1)``, ``(N, K, 1)``, ``(N, K, 4)``, boxes
        in input pixels) in inference mode; ``cls_preds, box_preds, anchors`` in training.
    """
    from gluoncv.model_zoo.ssd import SSD
    return SSD(None, IMAGE_SIZE["detection"], features=functools.partial(_ssd_features),
               num_filters=None, sizes=[16, 30, 52, 84, 120], ratios=[[1, 2, 0.5]] * 4,
               steps=[8, 16, 32, 64], classes=list(classes), pretrained=False)


class Segmenter(nn.HybridBlock):
    """FCN-8s-like segmenter: per-pixel scores of background and each class.

    Input ``(N, 3, H, W)`` with ``H, W`` multiples of 16; output ``(N, C + 1, H, W)``.
    """

    def __init__(self, num_classes=len(CLASSES), **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.backbone = Backbone(outputs=(2, 3))
            self.head = nn.HybridSequential()
            self.head.add(_conv_bn(64, 1), nn.Conv2D(num_classes + 1, 1))
            self.skip = nn.Conv2D(num_classes + 1, 1)

    def hybrid_forward(self, F, x):
        stride8, stride16 = self.backbone(x)
        scores = F.contrib.BilinearResize2D(self.head(stride16), scale_height=2.,
                                            scale_width=2.)
        scores = scores + self.skip(stride8)
        return F.contrib.BilinearResize2D(scores, scale_height=8., scale_width=8.)


class PoseNet(nn.HybridBlock):
    """simple_pose-like keypoint net: input ``(N, 3, H, W)``, heatmaps ``(N, K, H/4, W/4)``."""

    def __init__(self, num_keypoints=len(KEYPOINTS), **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.backbone = Backbone(outputs=(3,))
            self.head = nn.HybridSequential()
            for _ in range(2):
                self.head.add(nn.Conv2DTranspose(48, 4, 2, 1, use_bias=False),
                              nn.BatchNorm(), nn.Activation("relu"))
            self.head.add(nn.Conv2D(num_keypoints, 1))

    def hybrid_forward(self, F, x):
        return self.head(self.backbone(x)[0])


def segmenter():
    """A :class:`Segmenter` for the segmentation task (uninitialised)."""
    return Segmenter()


def pose_net():
    """A :class:`PoseNet` for the pose task (uninitialised)."""
    return PoseNet()


def initialize(net, seed):
    """Xavier weights, drawn from MXNet's generator seeded with ``seed``."""
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(magnitude=2), force_reinit=True)
    return net
