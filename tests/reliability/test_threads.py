"""Calling one QuantizedHybridBlock from several Python threads gives the results of one thread.

Gluon builds the cached graph on the first call without any locking (two threads racing
there failed with ``'NoneType' object has no attribute '__exit__'``): QuantizedHybridBlock
serializes calls with a lock, so concurrent first calls and steady-state calls are safe.
"""
import os
import threading

import mxnet as mx
import numpy as np

import gluon_quant as gq
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from conftest import build_cnn

THREADS = 6


def _qnet():
    mx.random.seed(4)
    rs = np.random.RandomState(4)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    data = rs.rand(16, 1, 28, 28).astype("float32")
    reestimate_batchnorm(net, mx.nd.array(data))
    return gq.quantize(net, [data[:8], data[8:]], progress=False)


def _at_once(work, timeout):
    """Run ``work(k)`` on THREADS threads released together; the errors they raised."""
    errors = []
    barrier = threading.Barrier(THREADS)

    def run(k):
        try:
            barrier.wait()
            work(k)
        except Exception as err:  # noqa: BLE001 - any failure in a thread is the finding
            errors.append(repr(err))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


def _hammer(qnet, inputs, expected, calls):
    mismatches = []

    def work(k):
        for i in range(calls):
            j = (i + k) % len(inputs)
            if not np.array_equal(qnet(inputs[j]).asnumpy(), expected[j]):
                mismatches.append((k, j))

    return _at_once(work, 120), mismatches


def test_threads_match_one_thread_including_first_call():
    qnet = _qnet()
    rs = np.random.RandomState(5)
    inputs = [mx.nd.array(rs.rand(b, 1, 28, 28).astype("float32")) for b in (1, 4, 8, 16)]
    expected = [qnet(x).asnumpy() for x in inputs]      # one thread, one at a time
    for trial in range(8):
        # Drop the cached graphs so every trial races on building them again.
        qnet._clear_cached_op()                         # noqa: SLF001
        errors, mismatches = _hammer(qnet, inputs, expected, calls=6)
        assert not errors, (trial, errors[:3])
        assert not mismatches, (trial, mismatches[:5])
    errors, mismatches = _hammer(qnet, inputs, expected, calls=60)
    assert not errors and not mismatches


def _descriptor(fd):
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def test_quantize_on_several_threads_leaves_stdout_and_stderr_alone():
    """Each quantize() points the process's stdout and stderr at a scratch file while
    MXNet's passes print, then back. Two calls on two threads interleaved that: one
    restored the other's redirection last, and the process printed nothing more for
    good (a script exited with status 0 and no output). Each thread's int8 net is also
    the one a single thread builds."""
    rs = np.random.RandomState(6)
    data = rs.rand(16, 1, 28, 28).astype("float32")
    before = [_descriptor(1), _descriptor(2)]
    nets, results = [], {}
    for seed in range(THREADS):
        mx.random.seed(seed)
        net = build_cnn()
        net.initialize(mx.init.Xavier())
        reestimate_batchnorm(net, mx.nd.array(data))
        nets.append(net)

    def work(k):
        for _ in range(3):
            results[k] = gq.quantize(nets[k], [data[:8], data[8:]], progress=False)

    errors = _at_once(work, 300)
    assert not errors, errors[:3]
    assert [_descriptor(1), _descriptor(2)] == before
    x = mx.nd.array(data)
    for k, net in enumerate(nets):
        alone = gq.quantize(net, [data[:8], data[8:]], progress=False)
        np.testing.assert_array_equal(results[k](x).asnumpy(), alone(x).asnumpy())
