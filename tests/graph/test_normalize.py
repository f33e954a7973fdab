"""QuantConfig.input_normalization: raw inputs in, the normalization folded into the first
convolutions (gluon_quant/graph/normalize.py)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq

MEAN, STD = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)


def _net(first):
    net = nn.HybridSequential()
    net.add(first, nn.BatchNorm(), nn.Activation("relu"), nn.Conv2D(16, 3, padding=1),
            nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    return net


def _data():
    rs = np.random.RandomState(0)
    raw = [mx.nd.array(rs.randint(0, 256, (8, 3, 16, 16)).astype("float32")) for _ in range(3)]
    mean = mx.nd.array(MEAN).reshape((1, 3, 1, 1))
    std = mx.nd.array(STD).reshape((1, 3, 1, 1))
    return raw, [mx.nd.broadcast_div(mx.nd.broadcast_sub(x, mean), std) for x in raw]


def _cos(a, b):
    a, b = a.asnumpy().ravel().astype(np.float64), b.asnumpy().ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ops(qnet):
    return [n["op"] for n in json.loads(qnet.fused.symbol.tojson())["nodes"]]


@pytest.mark.parametrize("first, subtracts", [
    (nn.Conv2D(16, 3, padding=0, use_bias=False), 0),   # mean folded into a new bias
    (nn.Conv2D(16, 3, padding=1), 1),                   # padded: the mean stays, exact
    (nn.Conv2D(16, 3, padding=1, groups=1, strides=2), 1),
])
def test_raw_inputs_match_the_normalized_net(first, subtracts):
    raw, norm = _data()
    net = _net(first)
    ref = net(norm[0])
    # fp32 (every layer excluded): the folded graph computes the same as the normalized net.
    fp32 = gq.quantize(net, raw, input_normalization=(MEAN, STD), progress=False,
                       exclude=["Convolution", "Dense", "Pooling"])
    assert np.abs(fp32(raw[0]).asnumpy() - ref.asnumpy()).max() < 2e-5 * np.abs(
        ref.asnumpy()).max()
    assert _ops(fp32).count("broadcast_sub") == subtracts
    assert "broadcast_mul" not in _ops(fp32)       # 1/std folded into the weights
    # int8: as close to fp32 as the int8 model calibrated on normalized inputs.
    qraw = gq.quantize(net, raw, input_normalization=(MEAN, STD), progress=False)
    qnorm = gq.quantize(net, norm, progress=False)
    assert _cos(qraw(raw[0]), ref) > 0.9995
    assert _cos(qraw(raw[0]), qnorm(norm[0])) > 0.9995


def test_readers_that_are_not_convolutions_get_it_explicitly():
    net = nn.HybridSequential()
    net.add(nn.Dense(32, activation="relu"), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(1)
    raw = [mx.nd.array(rs.randint(0, 256, (8, 3)).astype("float32")) for _ in range(2)]
    norm = (raw[0] - mx.nd.array(MEAN).reshape((1, 3))) / mx.nd.array(STD).reshape((1, 3))
    ref = net(norm)
    qnet = gq.quantize(net, raw, input_normalization=(MEAN, STD), progress=False,
                       exclude=["Dense"])
    assert np.abs(qnet(raw[0]).asnumpy() - ref.asnumpy()).max() < 1e-4
    assert _ops(qnet).count("broadcast_mul") == 1


def test_channel_count_must_match_the_first_layer():
    raw, _ = _data()
    known = _net(nn.Conv2D(4, 3))
    known(raw[0])
    with pytest.raises(gq.ConfigError, match="2 channel.*weight.*3 input channels"):
        gq.quantize(known, raw, input_normalization=((1, 2), (1, 1)), progress=False)
    # Shapes deferred until data runs are inferred from the first batch: the same message.
    deferred = _net(nn.Conv2D(4, 3))
    with pytest.raises(gq.ConfigError, match="2 channel.*weight.*3 input channels"):
        gq.quantize(deferred, raw, input_normalization=((1, 2), (1, 1)), progress=False)


def test_saved_model_and_config_rebuild_identically(tmp_path):
    raw, _ = _data()
    qnet = gq.quantize(_net(nn.Conv2D(16, 3, padding=1)), raw, progress=False,
                       input_normalization=(MEAN, STD), calibrator="minmax")
    data = qnet.config.to_dict()
    assert data["input_normalization"] == [list(MEAN), list(STD)]
    assert gq.QuantConfig.from_dict(json.loads(json.dumps(data))) == qnet.config.replace(
        input_fn=None, ctx=None)
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    assert np.array_equal(loaded(raw[1]).asnumpy(), qnet(raw[1]).asnumpy())
    again = gq.quantize(qnet.net, calib_table=qnet.calibration_table, config=qnet.config)
    assert np.array_equal(again(raw[1]).asnumpy(), qnet(raw[1]).asnumpy())
