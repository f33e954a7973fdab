"""Pretrained networks, labels and sample photos that work offline."""

from .efficientnet import EfficientNetLite0, efficientnet_lite0, preprocess
from .gluoncv import get_model, sample_batches, set_batchnorm_statistics
from .imagenet import imagenet_class_names
from .samples import sample_images

__all__ = [
    "EfficientNetLite0",
    "efficientnet_lite0",
    "get_model",
    "imagenet_class_names",
    "preprocess",
    "sample_images",
    "sample_batches",
    "set_batchnorm_statistics",
]
