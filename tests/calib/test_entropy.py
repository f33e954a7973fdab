"""EntropyCalibrator against a slow loop-based reference, and its saturation guard."""
import math

import numpy as np
import pytest

from gluon_quant.calib import EntropyCalibrator, quantization_levels
from gluon_quant.calib.entropy import kl_divergences


def reference_divergences(counts, levels):
    """KL(P || Q) for every candidate, written as plainly as possible (slow).

    P: the first i bins, outliers added to the last one.  Q: bin 0 alone, then groups
    [floor(j*i/levels), floor((j+1)*i/levels)); each group's raw count is spread evenly
    over the bins of the group where P is non-zero.  KL is infinite where Q is 0 and P > 0.
    """
    counts = [int(c) for c in counts]
    n = len(counts)
    result = {}
    for i in range(levels, n + 1):
        p = counts[:i]
        p[-1] += sum(counts[i:])
        edges = sorted({0, min(1, i // levels)} | {j * i // levels for j in range(1, levels + 1)})
        q = [0.0] * i
        for start, stop in zip(edges[:-1], edges[1:]):
            support = [k for k in range(start, stop) if p[k] > 0]
            for k in support:
                q[k] = sum(counts[start:stop]) / len(support)
        p_total, q_total = sum(p), sum(q)
        kl = 0.0
        for pk, qk in zip(p, q):
            if pk > 0 and qk == 0:
                kl = math.inf
            elif pk > 0:
                kl += pk / p_total * math.log((pk / p_total) / (qk / q_total))
        result[i] = kl
    return result


def distributions():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal(200_000).astype(np.float32)
    laplace = rng.laplace(size=200_000).astype(np.float32)
    relu = np.maximum(gauss, 0)
    gappy = np.concatenate([gauss * 0.1, np.float32([3.0, 3.5, -4.0])])  # empty bins
    return {"gaussian": gauss, "laplace": laplace, "relu_gaussian": relu, "gappy": gappy}


@pytest.mark.parametrize("name", ["gaussian", "laplace", "relu_gaussian", "gappy"])
def test_divergences_match_the_loop_reference(name):
    values = distributions()[name]
    cal = EntropyCalibrator(bins=512, max_clip_fraction=1.0, subsample=False)
    cal.collect(name, values)
    stats = cal.statistics[name]
    counts, width = stats.magnitude_histogram()
    unsigned = stats.min >= 0
    levels = quantization_levels(unsigned)
    candidates, divergences = kl_divergences(counts, levels)
    reference = reference_divergences(counts, levels)
    assert list(candidates) == list(reference)
    expected = np.array(list(reference.values()))
    assert np.array_equal(np.isinf(divergences), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(divergences[finite], expected[finite], rtol=1e-9, atol=1e-12)
    # and the calibrator's threshold is the reference's argmin, within one bin width
    best = list(reference)[int(np.argmin(expected))]
    lo, hi = cal.compute()[name]
    assert abs(hi - min(best * width, stats.absmax)) <= width
    assert lo == (0.0 if unsigned else -hi)


def test_thresholds_on_smooth_distributions_are_sensible():
    for name, values in distributions().items():
        cal = EntropyCalibrator(subsample=False)
        cal.collect(name, values)
        hi = cal.compute()[name][1]
        clipped = np.mean(np.abs(values) > hi)
        assert clipped < 1e-3, (name, hi, clipped)
        assert hi > 0.5 * np.abs(values).max() or name == "gappy"


def test_saturated_relu6_keeps_its_maximum():
    # Mostly saturated ReLU6 output: 60 % at 6, the rest small.  MXNet's KL gives 0.08-0.8
    # on such data (0.38 was measured on a real network).
    rng = np.random.default_rng(1)
    values = np.maximum(rng.standard_normal(100_000).astype(np.float32) * 0.3, 0)
    values[:60_000] = 6.0
    for fraction in (0.01, 1.0):
        cal = EntropyCalibrator(max_clip_fraction=fraction)
        cal.collect("relu6", values)
        assert cal.compute()["relu6"] == (0.0, 6.0)


def test_max_clip_fraction_guards_spiky_distributions():
    # Two spikes (30 % at 1.5, 50 % at 6) over a uniform floor: plain KL prefers to clip
    # the spike at 6, i.e. half of the values.
    rng = np.random.default_rng(2)
    values = rng.uniform(0, 6, 100_000).astype(np.float32)
    values[:30_000] = 1.5
    values[30_000:80_000] = 6.0
    unguarded = EntropyCalibrator(max_clip_fraction=1.0)
    unguarded.collect("x", values)
    assert unguarded.compute()["x"][1] < 2.0
    guarded = EntropyCalibrator()
    guarded.collect("x", values)
    assert guarded.compute()["x"] == (0.0, 6.0)
    for fraction in (0.05, 0.2):
        cal = EntropyCalibrator(max_clip_fraction=fraction)
        cal.collect("x", values)
        assert np.mean(values > cal.compute()["x"][1]) <= fraction


def test_zero_clip_fraction_gives_the_observed_range():
    values = np.random.default_rng(3).laplace(size=50_000).astype(np.float32)
    cal = EntropyCalibrator(max_clip_fraction=0.0)
    cal.collect("x", values)
    absmax = float(np.abs(values).max())
    assert cal.compute()["x"] == (-absmax, absmax)


def test_few_bins_used_gives_the_observed_range():
    # 100 distinct magnitudes spread over fewer bins than the 127 levels: nothing to clip.
    cal = EntropyCalibrator(bins=64)
    cal.collect("x", np.linspace(-1, 1, 101, dtype=np.float32))
    assert cal.compute()["x"] == (-1.0, 1.0)
