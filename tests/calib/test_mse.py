"""MSECalibrator against brute-force quantization error on the data itself."""
import numpy as np
import pytest

from gluon_quant.calib import MSECalibrator, quantization_levels
from gluon_quant.calib.mse import quantization_errors


def fake_quantize_error(values, threshold, unsigned):
    levels = quantization_levels(unsigned)
    step = threshold / levels
    clipped = np.clip(values, 0 if unsigned else -threshold, threshold)
    return float(np.mean((np.round(clipped / step) * step - values) ** 2))


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "relu"])
def test_threshold_is_near_the_true_mse_optimum(kind):
    rng = np.random.default_rng(0)
    values = (rng.laplace(size=300_000) if kind == "laplace"
              else rng.standard_normal(300_000)).astype(np.float32)
    if kind == "relu":
        values = np.maximum(values, 0)
    unsigned = kind == "relu"
    cal = MSECalibrator(subsample=False)
    cal.collect(kind, values)
    ours = cal.compute()[kind][1]
    absmax = float(np.abs(values).max())
    grid = np.linspace(0.2, 1.0, 161) * absmax
    errors = [fake_quantize_error(values, t, unsigned) for t in grid]
    ours_error = fake_quantize_error(values, ours, unsigned)
    assert ours_error <= 1.05 * min(errors)
    assert ours_error < fake_quantize_error(values, absmax, unsigned)


def test_errors_match_a_loop_reference():
    counts = np.array([5, 0, 3, 7, 1, 0, 0, 2, 1], np.int64)
    levels, top = 3, 8.6
    taus, errors = quantization_errors(counts, levels, top=top)
    for i, (tau, error) in enumerate(zip(taus, errors), start=1):
        assert tau == min(i, top)
        expected = 0.0
        for k, c in enumerate(counts):
            centre = k + 0.5
            expected += c * ((tau / levels) ** 2 / 12 if k < i else (centre - tau) ** 2)
        assert error == pytest.approx(expected / counts.sum(), rel=1e-12)
