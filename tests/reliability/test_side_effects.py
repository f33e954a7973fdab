"""Quantizing leaves the process, MXNet's global settings and the user's net as they were."""
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import gluon_quant as gq
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from conftest import build_cnn


def _bulk_size():
    """The engine's bulk size (read by setting it and restoring the previous value)."""
    previous = mx.engine.set_bulk_size(0)
    mx.engine.set_bulk_size(previous)
    return previous


def _global_state():
    return {
        "environ": dict(os.environ),
        "np_array": mx.util.is_np_array(),
        "np_shape": mx.util.is_np_shape(),
        "context": mx.context.current_context(),
        "recording": autograd.is_recording(),
        "training": autograd.is_training(),
        "bulk_size": _bulk_size(),
        "cwd": os.getcwd(),
    }


def _net_state(net):
    params = net.collect_params()
    return {
        "params": {k: p.data().asnumpy().tobytes() for k, p in params.items()},
        "grad_req": {k: p.grad_req for k, p in params.items()},
        "dtype": {k: p.dtype for k, p in params.items()},
        "active": net._active,                                    # noqa: SLF001
        "flags": dict(net._flags) if isinstance(net._flags, dict)  # noqa: SLF001
        else list(net._flags),                                     # noqa: SLF001
        "cached_op": id(net._cached_op),                          # noqa: SLF001
        "children": [(name, id(c)) for name, c in net._children.items()],  # noqa: SLF001
        "prefix": net.prefix,
    }


@pytest.mark.parametrize("hybridized", [False, True])
def test_quantize_leaves_globals_and_net_untouched(hybridized):
    mx.random.seed(8)
    rs = np.random.RandomState(8)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    data = rs.rand(16, 1, 28, 28).astype("float32")
    reestimate_batchnorm(net, mx.nd.array(data))
    net.collect_params(".*dense1.*").setattr("grad_req", "null")
    if hybridized:
        net.hybridize(static_alloc=True)
    x = mx.nd.array(data[:4])
    ref = net(x).asnumpy()                      # builds the cached op when hybridized
    before_net, before_globals = _net_state(net), _global_state()
    qnet = gq.quantize(net, [data[:8], data[8:]], calibrator="entropy", progress=False)
    qnet(x).wait_to_read()
    table = qnet.calibration_table
    assert _global_state() == before_globals
    assert _net_state(net) == before_net
    assert np.array_equal(net(x).asnumpy(), ref)
    assert len(table) >= 5
    # Quantizing again (from the table) changes nothing either.
    gq.quantize(net, calib_table=table, progress=False)
    assert _global_state() == before_globals and _net_state(net) == before_net


def test_errors_leave_globals_untouched():
    net = build_cnn()
    net.initialize()
    before = _global_state()
    with pytest.raises(gq.GluonQuantError):
        gq.quantize(net, [np.full((2, 1, 28, 28), np.nan, "float32")], progress=False)
    with pytest.raises(gq.GluonQuantError):
        gq.quantize(net, [np.zeros((2, 3, 28, 28), "float32")], progress=False)
    assert _global_state() == before
