"""Resident memory stays flat: quantize-and-discard 30 times, 10,000 int8 inference calls.

Marked slow. Figures measured on the development machine (2 CPU cores, MXNet 1.9.1
oneDNN): see the module's printed output (``-s``) and the project's closing note.
"""
import gc

import mxnet as mx
import numpy as np
import psutil
import pytest

import gluon_quant as gq
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from conftest import build_cnn

MB = 1024 * 1024


def _rss():
    gc.collect()
    mx.nd.waitall()
    return psutil.Process().memory_info().rss


def _net_and_data():
    mx.random.seed(12)
    rs = np.random.RandomState(12)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    data = rs.rand(32, 1, 28, 28).astype("float32")
    reestimate_batchnorm(net, mx.nd.array(data))
    return net, [data[i:i + 8] for i in range(0, 32, 8)]


@pytest.mark.slow
def test_quantize_and_discard_30_times_does_not_grow():
    net, batches = _net_and_data()
    x = mx.nd.array(batches[0])
    for _ in range(5):                                # warm-up: allocator pools, op caches
        gq.quantize(net, batches, progress=False)(x).wait_to_read()
    start = _rss()
    samples = []
    for i in range(30):
        qnet = gq.quantize(net, batches, progress=False)
        qnet(x).wait_to_read()
        del qnet
        if i % 10 == 9:
            samples.append(_rss())
    growth = (samples[-1] - start) / MB
    print("quantize x30: RSS start %.1f MB, after 10/20/30: %s MB, growth %.2f MB"
          % (start / MB, [round(s / MB, 1) for s in samples], growth))
    assert growth < 20, growth


@pytest.mark.slow
def test_10000_inference_calls_do_not_grow():
    net, batches = _net_and_data()
    qnet = gq.quantize(net, batches, progress=False)
    x = mx.nd.array(batches[0][:2])
    for _ in range(200):
        qnet(x).wait_to_read()
    start = _rss()
    samples = []
    for i in range(10000):
        qnet(x).wait_to_read()
        if i % 2500 == 2499:
            samples.append(_rss())
    growth = (samples[-1] - start) / MB
    print("10,000 calls: RSS start %.1f MB, every 2,500 calls: %s MB, growth %.2f MB"
          % (start / MB, [round(s / MB, 1) for s in samples], growth))
    assert growth < 5, growth
