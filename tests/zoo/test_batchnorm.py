"""BatchNorm statistics set from data (gluon_quant.zoo.batchnorm), for random-weight nets."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.zoo import batchnorm


def _net():
    net = nn.HybridSequential()
    net.add(nn.Conv3D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
            nn.Conv3D(8, 3, padding=1), nn.BatchNorm(), nn.GlobalAvgPool3D(), nn.Dense(4))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    return net


def _statistics(net):
    return [p.data().asnumpy() for name, p in sorted(net.collect_params().items())
            if name.endswith(("running_mean", "running_var"))]


def test_a_failing_training_pass_falls_back_to_forward_hooks(monkeypatch, caplog):
    """GluonCV's R(2+1)D and SlowFast fail in MXNet's backward ("Check failed: !is_view"):
    `gluon-quant quantize r2plus1d_resnet18_kinetics400 --no-pretrained` ended in an
    internal error. The statistics are then set by forward pre-hooks: the same ones."""
    x = mx.nd.array(np.random.RandomState(0).rand(4, 3, 4, 8, 8).astype("float32"))
    trained = _net()
    assert batchnorm.reestimate_batchnorm(trained, x) == 2

    def fails(*args):
        raise mx.base.MXNetError("Check failed: !is_view")

    monkeypatch.setattr(batchnorm, "_training_pass", fails)
    hooked = _net()
    with caplog.at_level("INFO", logger="gluon_quant"):
        assert batchnorm.reestimate_batchnorm(hooked, x) == 2
    assert "forward pre-hooks instead" in caplog.text and "MXNetError: Check failed: !is_view" in caplog.text
    untrained = _net()
    untrained(x)        # deferred shapes; inference: the statistics stay 0 and 1
    before = _statistics(untrained)
    for a, b, untouched in zip(_statistics(trained), _statistics(hooked), before):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
        assert not np.allclose(a, untouched)


def test_a_network_that_does_not_run_is_reported_as_such():
    net = _net()
    with pytest.raises(gq.ModelExecutionError, match=r"BatchNorm statistics.*\(4, 3, 8\)"):
        batchnorm.set_batchnorm_statistics(net, mx.nd.ones((4, 3, 8)))


@pytest.mark.parametrize("inside_symbol_block, setter", [
    (False, "set_batchnorm_statistics"), (True, "set_batchnorm_statistics"),
    (False, "reestimate_batchnorm")])
def test_a_layer_seeing_one_value_per_channel_is_left_alone(inside_symbol_block, setter,
                                                            caplog):
    """A BatchNorm after global pooling sees one value per channel in a batch of one (NASNet's
    auxiliary head): its variance would be 0, and every other input's deviation then came
    out 316x larger (1/sqrt(eps)): int8 noise there turned an all-zero fp32 output into
    values up to 4.6. Such layers keep their statistics, with a warning naming them."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
            nn.GlobalAvgPool2D(), nn.BatchNorm(), nn.Dense(4))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).rand(1, 3, 6, 6).astype("float32"))
    if inside_symbol_block:
        net.hybridize()
        net(x)
        wrapper = nn.HybridSequential()
        wrapper.add(mx.gluon.SymbolBlock(net(mx.sym.var("data")), mx.sym.var("data"),
                                         params=net.collect_params()))
        net = wrapper
    assert getattr(batchnorm, setter)(net, x) == 1
    names = sorted(n for n in net.collect_params() if n.endswith("running_var"))
    first, pooled = (net.collect_params()[n].data().asnumpy() for n in names)
    assert first.min() > 0 and np.array_equal(pooled, np.ones(8, "float32"))
    assert "1 BatchNorm layer(s) see one value per channel" in caplog.text
    assert batchnorm.set_batchnorm_statistics(net, mx.nd.concat(x, x * 2, dim=0)) == 2


@pytest.mark.parametrize("inside_symbol_block", [False, True])
@pytest.mark.parametrize("axis", [2, -1])
def test_statistics_of_a_batchnorm_over_another_axis(axis, inside_symbol_block):
    """``BatchNorm(axis=2)`` over the units of a per-position dense layer's ``(N, T, units)``
    output: its statistics are per unit (the hooks took axis 1 and failed: "Expected shape
    (12,) is incompatible with given shape (64,)")."""
    net = nn.HybridSequential()
    net.add(nn.Dense(64, flatten=False), nn.BatchNorm(axis=axis, in_channels=64))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(1).randn(16, 12, 10).astype("float32") * 2 + 1)
    if inside_symbol_block:
        net.hybridize()
        net(x)
        inputs = mx.sym.var("data")
        net = mx.gluon.SymbolBlock(net(inputs), inputs, params=net.collect_params())
    assert batchnorm.set_batchnorm_statistics(net, x) == 1
    params = net.collect_params()
    dense = [p for n, p in params.items() if n.endswith("weight")][0].data()
    bias = [p for n, p in params.items() if n.endswith("bias") and "dense" in n][0].data()
    units = (mx.nd.dot(x, dense, transpose_b=True) + bias).asnumpy().reshape(-1, 64)
    mean = [p for n, p in params.items() if n.endswith("running_mean")][0].data().asnumpy()
    var = [p for n, p in params.items() if n.endswith("running_var")][0].data().asnumpy()
    np.testing.assert_allclose(mean, units.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, units.var(axis=0), rtol=1e-4, atol=1e-5)
