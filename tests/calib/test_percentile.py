"""PercentileCalibrator against np.percentile."""
import numpy as np
import pytest

from gluon_quant.calib import PercentileCalibrator


@pytest.mark.parametrize("percentile", [50.0, 99.0, 99.99, 100.0])
@pytest.mark.parametrize("relu", [False, True])
def test_within_one_bin_above_the_exact_percentile(percentile, relu):
    values = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    if relu:
        values = np.maximum(values, 0)
    cal = PercentileCalibrator(percentile=percentile, subsample=False)
    cal.collect("x", values)
    lo, hi = cal.compute()["x"]
    width = cal.statistics["x"].bin_width
    exact = float(np.percentile(np.abs(values), percentile))
    assert exact <= hi <= exact + width
    assert lo == (0.0 if relu else -hi)
    if percentile == 100.0:
        assert hi == float(np.abs(values).max())
