"""Pretrained networks, labels and sample photos that work offline."""

from .efficientnet import (VARIANTS, EfficientNetLite, EfficientNetLite0, efficientnet_lite,
                           efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, preprocess)
from .gluoncv import get_model, sample_batches
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
]
