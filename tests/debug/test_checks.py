"""gluon_quant.debug.checks: known pitfalls found, each with a fix."""
import json
import logging

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.debug import run_checks
from gluon_quant.errors import UnsupportedDtypeError


def _depthwise_net():
    net = nn.HybridSequential(prefix="dw_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1, in_channels=1), nn.Activation("relu"),
                nn.Conv2D(8, 3, padding=1, groups=8, in_channels=8), nn.Activation("relu"),
                nn.GlobalAvgPool2D(), nn.Dense(4, in_units=8))
    net.initialize(mx.init.Xavier())
    return net


def test_signed_input_into_uint8_is_an_error_with_a_fix(fragile_mlp):
    qnet = gq.QuantizedHybridBlock(fragile_mlp["net"], dtype="uint8", progress=False)
    qnet.calibrate(fragile_mlp["calib"])
    with pytest.raises(UnsupportedDtypeError):
        qnet.finalize()
    found = run_checks(qnet).by_check("signed-uint8")
    assert found and found[0].severity == "error"
    assert "dtype='auto'" in found[0].fix


def test_outlier_dominated_range_suggests_clipping(tiny_cnn, tiny_batches, caplog):
    batches = [b.copy() for b in tiny_batches]
    batches[0][0, 0, 0, 0] = 500.0  # one pixel among 25,088
    # Percentile 100 keeps min-max ranges and the histogram the check reads.
    qnet = gq.quantize(tiny_cnn, batches, calibrator=gq.PercentileCalibrator(percentile=100),
                       progress=False)
    with caplog.at_level(logging.WARNING, logger="gluon_quant"):
        report = run_checks(qnet)
    found = report.by_check("outlier-range")
    assert found[0].subject == "data"  # where the outlier enters (and what it spreads to)
    assert "percentile" in found[0].fix
    assert "outlier-range" in caplog.text
    # The suggested fix works: percentile clips it, no outlier finding on the input.
    clipped = gq.quantize(tiny_cnn, batches, calibrator="percentile", progress=False)
    assert "data" not in [f.subject for f in run_checks(clipped).by_check("outlier-range")]


def test_depthwise_per_tensor_suggests_per_channel(tiny_batches):
    net = _depthwise_net()
    tensor = gq.quantize(net, tiny_batches, granularity="tensor", progress=False)
    found = run_checks(tensor).by_check("depthwise-per-tensor")
    assert len(found) == 1 and "granularity='channel'" in found[0].fix
    channel = gq.quantize(net, tiny_batches, progress=False)
    assert not run_checks(channel).by_check("depthwise-per-tensor")


def test_small_calibration_set(tiny_cnn, tiny_batches):
    few = gq.quantize(tiny_cnn, tiny_batches[:1], progress=False)
    found = run_checks(few).by_check("small-calibration")
    assert len(found) == 1 and "1 batch(es), 8 sample(s)" in found[0].message
    enough = [np.concatenate(tiny_batches)] * 2
    assert not run_checks(gq.quantize(tiny_cnn, enough, progress=False)) \
        .by_check("small-calibration")


def test_report_text_and_json(tiny_cnn, tiny_batches):
    report = run_checks(gq.quantize(tiny_cnn, tiny_batches[:1], progress=False), log=False)
    data = json.loads(report.to_json())
    assert [f["check"] for f in data["findings"]] == [f.check for f in report]
    assert "fix:" in str(report)
    assert str(type(report)("")) == "gluon_quant checks: no problem found."


def test_quantize_refuses_to_run_without_calibration(tiny_cnn):
    # What "uint8 without calibration" would check cannot happen: there is no such mode.
    with pytest.raises(gq.ConfigError, match="Calibration-free"):
        gq.quantize(tiny_cnn)


def test_batches_given_as_to_the_other_tools_are_refused_with_what_to_call(tiny_cnn,
                                                                           tiny_batches):
    """``run_checks(qnet, batches)``, the call the doctor's other tools take: it was a bare
    TypeError (takes 1 positional argument but 2 were given)."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    with pytest.raises(gq.ConfigError, match=r"run_checks\(\) takes no batches \(got list\).*"
                       r"Call run_checks\(qnet\).*debug.compare\(qnet, batches\)"):
        run_checks(qnet, tiny_batches)
    assert str(run_checks(qnet, log=False)) == "gluon_quant checks: no problem found."
