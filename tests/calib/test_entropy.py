"""EntropyCalibrator against slow loop-based references, and its two clipping guards."""
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from gluon_quant.calib import Calibrator, EntropyCalibrator, quantization_levels
from gluon_quant.calib.entropy import first_allowed, kl_divergences
from gluon_quant.errors import ConfigError

#: Bins per side of the constructed histograms; values at bin centres ``(k + 0.5) / BINS``
#: (exactly representable) land in bin ``k`` of a histogram over ``[-1, 1]``.
BINS = 512


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


def reference_first_allowed(counts, levels, max_clip_fraction, max_clip_error, top):
    """The first candidate i (bins kept) that both guards allow, in exact rational maths.

    Keeping i bins clips at tau = min(i, top) bin widths; each kept value adds the rounding
    noise (tau / levels)**2 / 12, each clipped value in bin k the squared distance from its
    bin centre, (k + 1/2 - tau)**2.  The share rule is the calibrator's own: the kept count
    must reach (1 - max_clip_fraction) of the total.
    """
    counts = [int(c) for c in counts]
    total = sum(counts)
    top = Fraction(top)
    for i in range(1, len(counts) + 1):
        tau = min(Fraction(i), top)
        if sum(counts[:i]) < (1.0 - max_clip_fraction) * total:
            continue
        if max_clip_error is not None:
            rounding = sum(counts[:i]) * (tau / levels) ** 2 / 12
            clipping = sum(c * (k + Fraction(1, 2) - tau) ** 2
                           for k, c in enumerate(counts) if k >= i)
            if clipping > Fraction(max_clip_error) * rounding:
                continue
        return i
    raise AssertionError("no candidate allowed")


def at_bin_centres(counts):
    """Signed values whose |x| histogram (bins=BINS, range [-1, 1]) is exactly ``counts``."""
    values = np.repeat((np.arange(len(counts)) + 0.5) / BINS, counts).astype(np.float32)
    values[::2] *= -1
    return values


def power_tail():
    """Counts of |x| falling as (1 + k/20)**-3 over all 512 bins: a long, thin tail."""
    k = np.arange(BINS)
    return np.floor(20000 / (1 + k / 20) ** 3).astype(np.int64)


def distributions():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal(200_000).astype(np.float32)
    laplace = rng.laplace(size=200_000).astype(np.float32)
    relu = np.maximum(gauss, 0)
    gappy = np.concatenate([gauss * 0.1, np.float32([3.0, 3.5, -4.0])])  # empty bins
    return {"gaussian": gauss, "laplace": laplace, "relu_gaussian": relu, "gappy": gappy}


def scaled_relu(seed, size=50_000):
    """ReLU'd gaussian times a lognormal scale: activations of channels of very different
    sizes, whose few large values carry much of the signal (a long, heavy tail)."""
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.standard_normal(size), 0) * rng.lognormal(0, 1, size)) \
        .astype(np.float32)


def error_ratio(values, threshold):
    """Squared error clipping adds over squared rounding error, on the values themselves."""
    magnitude = np.abs(values.astype(np.float64))
    levels = quantization_levels(values.min() >= 0)
    clipping = np.sum((magnitude[magnitude > threshold] - threshold) ** 2)
    rounding = np.sum(magnitude <= threshold) * (threshold / levels) ** 2 / 12
    return clipping / rounding


@pytest.mark.parametrize("name", ["gaussian", "laplace", "relu_gaussian", "gappy"])
def test_divergences_match_the_loop_reference(name):
    values = distributions()[name]
    cal = EntropyCalibrator(bins=512, max_clip_fraction=1.0, max_clip_error=None,
                            subsample=False)
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


@pytest.mark.parametrize("max_clip_fraction", [1.0, 0.01, 1e-3, 0.0])
@pytest.mark.parametrize("max_clip_error", [None, 4.0, 1.0, 0.25, 0.0])
def test_first_allowed_matches_exact_maths(max_clip_fraction, max_clip_error):
    counts = np.array([9, 0, 7, 12, 5, 0, 3, 1, 0, 0, 2, 1, 0, 1], np.int64)
    for levels, top in ((3, 13.75), (2, 14.0), (5, 13.5)):
        assert first_allowed(counts, levels, max_clip_fraction=max_clip_fraction,
                             max_clip_error=max_clip_error, top=top) \
            == reference_first_allowed(counts, levels, max_clip_fraction, max_clip_error, top)


@pytest.mark.parametrize("options", [
    {"max_clip_fraction": 1.0, "max_clip_error": None},   # KL alone
    {"max_clip_error": None},                             # the share guard (default 1 %)
    {},                                                   # both guards, as by default
    {"max_clip_error": 0.25},
])
def test_long_tail_is_clipped_exactly_where_the_references_say(options):
    counts = power_tail()
    cal = EntropyCalibrator(bins=BINS, subsample=False, **options)
    cal.collect("x", at_bin_centres(counts))
    stats = cal.statistics["x"]
    assert (stats.magnitude_histogram()[0] == counts).all() and stats.bin_width == 1 / BINS
    levels = quantization_levels(False)
    first = reference_first_allowed(counts, levels, cal.max_clip_fraction, cal.max_clip_error,
                                    stats.absmax * BINS)
    divergences = reference_divergences(counts, levels)
    best = min((i for i in divergences if i >= first), key=divergences.get)
    assert cal.compute()["x"] == (-best / BINS, best / BINS)  # zero tolerance


def test_long_tail_thresholds():
    # The numbers the references above give, so that a change of either shows here.
    thresholds = {}
    for max_clip_error in (None, 1.0, 0.25):
        cal = EntropyCalibrator(bins=BINS, max_clip_error=max_clip_error, subsample=False)
        cal.collect("x", at_bin_centres(power_tail()))
        thresholds[max_clip_error] = cal.compute()["x"][1] * BINS
    # KL clips 101 of the 512 bins; that clipping adds 1.9 times the rounding error, so
    # the default guard moves the threshold up to the first that adds at most 1 times.
    assert thresholds == {None: 411.0, 1.0: 444.0, 0.25: 507.0}


@pytest.mark.parametrize("seed", range(4))
def test_heavy_tail_keeps_its_large_values(seed):
    # The failure this guard fixes: KL alone clips at about half of the maximum here, and
    # the few values it clips add 11 to 84 times the rounding error (measured on the data).
    values = scaled_relu(seed)
    unguarded = EntropyCalibrator(max_clip_error=None)
    unguarded.collect("x", values)
    assert error_ratio(values, unguarded.compute()["x"][1]) > 10
    cal = EntropyCalibrator()
    cal.collect("x", values)
    lo, hi = cal.compute()["x"]
    assert lo == 0.0
    assert error_ratio(values, hi) <= 1.0
    assert hi > 0.8 * float(values.max())


def test_thresholds_on_smooth_distributions_are_sensible():
    for name, values in distributions().items():
        cal = EntropyCalibrator(subsample=False)
        cal.collect(name, values)
        hi = cal.compute()[name][1]
        clipped = np.mean(np.abs(values) > hi)
        assert clipped < 1e-3, (name, hi, clipped)
        assert hi > 0.5 * np.abs(values).max() or name == "gappy"


def test_error_guard_leaves_kl_alone_on_smooth_distributions():
    # KL's own choice clips far less than the error bound on these (clipping/rounding
    # error 2e-4 to 0.15): the guard must not move it.  ("gappy" is not smooth: KL clips
    # its three isolated outliers, 30 to 40 standard deviations out, at 0.39.)
    for name, values in distributions().items():
        if name == "gappy":
            continue
        guarded, unguarded = EntropyCalibrator(), EntropyCalibrator(max_clip_error=None)
        guarded.collect(name, values)
        unguarded.collect(name, values)
        assert guarded.compute() == unguarded.compute(), name


def test_saturated_relu6_keeps_its_maximum():
    # Mostly saturated ReLU6 output: 60 % at 6, the rest small.  MXNet's KL gives 0.08-0.8
    # on such data (0.38 was measured on a real network).
    rng = np.random.default_rng(1)
    values = np.maximum(rng.standard_normal(100_000).astype(np.float32) * 0.3, 0)
    values[:60_000] = 6.0
    for fraction in (0.01, 1.0):
        for max_clip_error in (None, 1.0):
            cal = EntropyCalibrator(max_clip_fraction=fraction, max_clip_error=max_clip_error)
            cal.collect("relu6", values)
            assert cal.compute()["relu6"] == (0.0, 6.0)


def test_max_clip_fraction_guards_spiky_distributions():
    # Two spikes (30 % at 1.5, 50 % at 6) over a uniform floor: plain KL prefers to clip
    # the spike at 6, i.e. half of the values.
    rng = np.random.default_rng(2)
    values = rng.uniform(0, 6, 100_000).astype(np.float32)
    values[:30_000] = 1.5
    values[30_000:80_000] = 6.0
    unguarded = EntropyCalibrator(max_clip_fraction=1.0, max_clip_error=None)
    unguarded.collect("x", values)
    assert unguarded.compute()["x"][1] < 2.0
    for options in ({"max_clip_error": None}, {"max_clip_fraction": 1.0}, {}):
        guarded = EntropyCalibrator(**options)
        guarded.collect("x", values)
        assert guarded.compute()["x"] == (0.0, 6.0), options
    for fraction in (0.05, 0.2):
        cal = EntropyCalibrator(max_clip_fraction=fraction, max_clip_error=None)
        cal.collect("x", values)
        assert np.mean(values > cal.compute()["x"][1]) <= fraction


@pytest.mark.parametrize("options", [{"max_clip_fraction": 0.0},
                                     {"max_clip_error": 0.0, "max_clip_fraction": 1.0}])
def test_zero_clipping_gives_the_observed_range(options):
    values = np.random.default_rng(3).laplace(size=50_000).astype(np.float32)
    cal = EntropyCalibrator(**options)
    cal.collect("x", values)
    absmax = float(np.abs(values).max())
    assert cal.compute()["x"] == (-absmax, absmax)


def test_few_bins_used_gives_the_observed_range():
    # 100 distinct magnitudes spread over fewer bins than the 127 levels: nothing to clip.
    cal = EntropyCalibrator(bins=64)
    cal.collect("x", np.linspace(-1, 1, 101, dtype=np.float32))
    assert cal.compute()["x"] == (-1.0, 1.0)


@pytest.mark.parametrize("max_clip_error", [None, 0.5, 1.0])
def test_state_dict_round_trip_keeps_the_guards(max_clip_error):
    cal = EntropyCalibrator(max_clip_fraction=0.05, max_clip_error=max_clip_error, bins=1024)
    for seed in range(3):
        cal.collect("tail", scaled_relu(seed, 20_000))
    cal.collect("signed", at_bin_centres(power_tail()))
    state = json.loads(json.dumps(cal.state_dict(), allow_nan=False))
    assert state["version"] == 2
    assert state["options"] == {"max_clip_fraction": 0.05, "max_clip_error": max_clip_error,
                                "bins": 1024, "subsample": True}
    for loader in (EntropyCalibrator, Calibrator):
        again = loader.from_state_dict(state)
        assert (again.max_clip_fraction, again.max_clip_error) == (0.05, max_clip_error)
        assert again.compute() == cal.compute()
        assert again.state_dict() == cal.state_dict()


def test_version_1_state_keeps_its_thresholds():
    # Version 1 had no error guard: its states load with max_clip_error=None, so that they
    # compute the table they computed when saved.
    old = EntropyCalibrator(max_clip_error=None)
    for seed in range(4):
        old.collect(str(seed), scaled_relu(seed))
    state = old.state_dict()
    del state["options"]["max_clip_error"]
    state["version"] = 1
    loaded = Calibrator.from_state_dict(json.loads(json.dumps(state)))
    assert loaded.max_clip_error is None
    assert loaded.compute() == old.compute()
    assert loaded.rescore(EntropyCalibrator).compute() != old.compute()  # the new default


@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan, True, "1"])
def test_bad_max_clip_error_is_refused(value):
    with pytest.raises(ConfigError, match="max_clip_error"):
        EntropyCalibrator(max_clip_error=value)
