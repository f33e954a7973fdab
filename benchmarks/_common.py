"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""
import statistics
import time

import mxnet as mx
from gluoncv.model_zoo import get_model

from gluon_quant.zoo.gluoncv import initialize_random

__all__ = ["median_seconds", "zoo_net"]


def median_seconds(func, repeat):
    """Median wall-clock seconds of ``func()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def zoo_net(name, source=None, size=224):
    """A new GluonCV ``name`` (random Xavier weights); with ``source``, a copy of its weights.

    Detection and segmentation nets are built with ``pretrained_base=False``. Each variant
    being timed gets its own instance, so none re-hybridizes another's net.
    """
    kwargs = {} if name.startswith(("resnet", "mobilenet", "vgg", "se_", "squeezenet",
                                    "densenet", "inception")) else {"pretrained_base": False}
    net = get_model(name, pretrained=False, **kwargs)
    initialize_random(net)
    if source is not None:
        net(mx.nd.zeros((1, 3, size, size)))    # finish deferred shapes
        for dst, src in zip(net.collect_params().values(), source.collect_params().values()):
            dst.set_data(src.data())            # set_data copies
    return net
