"""Bias correction: measured on calibration samples, stored in the table, reproducible."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.bias import META_KEY


def _projection_net():
    """Depthwise + linear projection chains, the pattern where int8 mean errors pile up."""
    net = nn.HybridSequential(prefix="proj_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
        for _ in range(3):
            net.add(nn.Conv2D(16, 3, padding=1, groups=16), nn.BatchNorm(),
                    nn.Activation("relu"), nn.Conv2D(16, 1), nn.BatchNorm())
        net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net


@pytest.fixture
def proj():
    from gluon_quant.zoo.batchnorm import reestimate_batchnorm
    mx.random.seed(3)
    net = _projection_net()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randn(8, 3, 16, 16).astype("float32") for _ in range(4)]
    reestimate_batchnorm(net, mx.nd.array(np.concatenate(batches)))
    return net, batches


def _mean_abs_bias(net, qnet, x):
    ref, out = net(x).asnumpy(), qnet(x).asnumpy()
    return float(np.abs((ref - out).mean(axis=0)).mean())


def test_correction_removes_the_mean_error_and_is_stored(proj):
    net, batches = proj
    x = mx.nd.array(np.concatenate(batches))
    plain = gq.quantize(net, batches, bias_correction=False, progress=False)
    fixed = gq.quantize(net, batches, progress=False)
    assert META_KEY not in plain.calibration_table.meta
    stored = fixed.calibration_table.meta[META_KEY]
    # the three projection convs and the four conv+ReLU layers (depthwise included), not
    # the output layer
    assert len(stored["params"]) == 7
    assert all(p.endswith(("_beta", "_bias")) for p in stored["params"])
    assert _mean_abs_bias(net, fixed, x) < 0.5 * _mean_abs_bias(net, plain, x)


def test_saved_table_rebuilds_the_same_corrected_model(proj, tmp_path):
    net, batches = proj
    x = mx.nd.array(batches[0])
    first = gq.quantize(net, batches, progress=False)
    path = str(tmp_path / "table.json")
    first.calibration_table.save(path)
    again = gq.quantize(net, calib_table=gq.CalibrationTable.load(path), progress=False)
    np.testing.assert_array_equal(first(x).asnumpy(), again(x).asnumpy())


def test_corrections_are_remeasured_when_other_layers_are_int8(proj):
    net, batches = proj
    first = gq.quantize(net, batches, progress=False)
    excluded = first.clone(exclude=["proj_conv2"])
    excluded.finalize(first.calibration_table)
    nodes = excluded.calibration_table.meta[META_KEY]["nodes"]
    assert nodes != first.calibration_table.meta[META_KEY]["nodes"]
    assert len(nodes) == len(first.calibration_table.meta[META_KEY]["nodes"]) - 1


def test_only_piecewise_linear_activations_are_corrected():
    from gluon_quant.bias import _correctable
    from gluon_quant.graph.inspect import GraphNode

    def node(*labels):
        members = (("c", "Convolution", "Convolution"),) + tuple(
            ("a", label.split("(")[0], label) for label in labels)
        return GraphNode(name="n", op="_sg_mkldnn_conv", members=members, attrs=(),
                         inputs=())

    assert _correctable(node()) and _correctable(node("clip"))
    assert _correctable(node("Activation(relu)"))
    assert not _correctable(node("Activation(sigmoid)"))
    assert not _correctable(node("LeakyReLU(leaky)"))

