"""Pretrained networks, labels and sample photos that work offline."""

from .efficientnet import (VARIANTS, EfficientNetLite, EfficientNetLite0, efficientnet_lite,
                           efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, preprocess)
from .gluoncv import sample_batches, set_batchnorm_statistics
from .models import get_model
from .imagenet import imagenet_class_names
from .samples import real_photos, sample_images

__all__ = [
    "EfficientNetLite",
    "EfficientNetLite0",
    "VARIANTS",
    "efficientnet_lite",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "get_model",
    "imagenet_class_names",
    "preprocess",
    "real_photos",
    "sample_images",
    "sample_batches",
    "set_batchnorm_statistics",
]
