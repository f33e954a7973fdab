"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""
import statistics
import time

import mxnet as mx
from gluoncv.model_zoo import get_model

__all__ = ["median_seconds", "zoo_net"]


def median_seconds(func, repeat):
    """Median wall-clock seconds of ``func()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def zoo_net(name, source=None):
    """A new GluonCV ``name`` (random Xavier weights); with ``source``, a copy of its weights.

    Each variant being timed gets its own instance, so none re-hybridizes another's net.
    """
    net = get_model(name, pretrained=False)
    net.initialize(mx.init.Xavier())
    if source is not None:
        net(mx.nd.zeros((1, 3, 224, 224)))      # finish deferred shapes
        for dst, src in zip(net.collect_params().values(), source.collect_params().values()):
            dst.set_data(src.data())            # set_data copies
    return net
