"""The runtime's direct CachedOp call (``_mxnet.CachedCall``): the same outputs as Gluon's
own path, whatever the inputs, outputs and parameter changes."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import gluon_quant as gq
from gluon_quant import _mxnet

from test_api import TwoInputNet, quantized_two_output_net


def _flat(out):
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in _flat(o)]
    return [out.asnumpy()]


def _gluon_path(block, *inputs):
    """What the block computes through Gluon's ``_call_cached_op`` (the fallback)."""
    return gluon.HybridBlock.forward(block, *inputs)


def _calls(monkeypatch):
    """Per call: whether it reused the handle array of the call before."""
    calls = []
    invoke = _mxnet.CachedCall.__call__

    def counted(self, block, inputs, fallback):
        handles = self._handles
        out = invoke(self, block, inputs, fallback)
        calls.append(handles is not None and self._handles is handles)   # reused
        return out
    monkeypatch.setattr(_mxnet.CachedCall, "__call__", counted)
    return calls


def test_two_inputs_in_graph_order_give_gluons_outputs():
    mx.random.seed(1)
    net = TwoInputNet()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(rs.rand(4, 8).astype("float32"), rs.rand(4, 6).astype("float32"))
               for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    x, y = mx.nd.array(rs.rand(3, 8)), mx.nd.array(rs.rand(3, 6))
    first = qnet(x, y).asnumpy()                    # builds the handle array
    assert np.array_equal(qnet(x, y).asnumpy(), first)
    assert np.array_equal(_gluon_path(qnet, x, y).asnumpy(), first)
    # swapped inputs of other shapes are refused by MXNet as before, named by the runtime
    with pytest.raises(gq.InputMismatchError):
        qnet(y, x)


def test_nested_outputs_and_parameter_changes_follow_gluon(monkeypatch):
    _, batches, qnet = quantized_two_output_net()
    calls = _calls(monkeypatch)
    x = mx.nd.array(batches[1])
    out = qnet(x)
    assert isinstance(out, tuple) and isinstance(out[1], tuple)
    reference = _gluon_path(qnet, x)
    assert all(np.array_equal(a, b) for a, b in zip(_flat(out), _flat(reference)))
    assert all(np.array_equal(a, b) for a, b in zip(_flat(qnet(x)), _flat(reference)))
    assert all(np.array_equal(a, b) for a, b in zip(_flat(qnet(x)), _flat(reference)))
    # the first call built the CachedOp (Gluon's path), the second the handle array,
    # the third reused it
    assert calls == [False, False, True]
    # parameters given new arrays (the old ones freed): the handle array is rebuilt
    for param in qnet.collect_params().values():
        param.reset_ctx(mx.cpu())
    calls.clear()
    again = _flat(qnet(x))
    assert calls == [False]
    assert all(np.array_equal(a, b) for a, b in zip(again, _flat(reference)))
    assert all(np.array_equal(a, b) for a, b in zip(_flat(qnet(x)), _flat(reference)))
    assert calls == [False, True]


def test_unhybridized_and_hooked_blocks_take_gluons_path(tiny_cnn, tiny_batches):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[0])
    expected = qnet(x).asnumpy()
    qnet.hybridize(active=False)                     # no CachedOp: Gluon runs the graph
    assert np.array_equal(qnet(x).asnumpy(), expected)
    qnet.hybridize(static_alloc=True, static_shape=True)
    seen = []
    qnet.register_op_hook(lambda name, op, array: seen.append(name))
    with pytest.warns(UserWarning, match="experimental"):
        assert np.array_equal(qnet(x).asnumpy(), expected)
    assert seen                                      # the hook ran: Gluon's path
