"""Pretrained networks, labels and sample photos that work offline."""

from .efficientnet import EfficientNetLite0, efficientnet_lite0, preprocess
from .imagenet import imagenet_class_names
from .samples import sample_images

__all__ = [
    "EfficientNetLite0",
    "efficientnet_lite0",
    "imagenet_class_names",
    "preprocess",
    "sample_images",
]
