"""TensorStatistics: exact binning, exact merging, bounded memory, validation."""
import json
import math

import numpy as np
import pytest

from gluon_quant.calib.statistics import (SUBSAMPLE_MIN_SIZE, SUBSAMPLE_STRIDE,
                                          TensorStatistics)
from gluon_quant.errors import (CalibrationDataError, ConfigError, NonFiniteDataError)


def brute_force_histogram(values, bins, exponent):
    """Signed histogram by the definition: position trunc(x * bins / 2**exponent) + bins."""
    scaled = np.asarray(values, np.float64) * bins / 2.0 ** exponent
    return np.bincount((np.trunc(scaled) + bins).astype(np.int64), minlength=2 * bins + 1)


def batches(seed, n=12, big=False):
    """Batches whose ranges grow and shrink, with zeros, ReLU'd and subnormal values."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = 10.0 ** rng.uniform(-3, 3)
        values = (rng.standard_normal(int(rng.integers(1, 5000))) * scale).astype(np.float32)
        if i % 3 == 0:
            values = np.maximum(values, 0)
        if i % 4 == 1:
            values[::7] = 0.0
        out.append(values)
    out.append(np.zeros(50, np.float32))
    out.append(np.array([1e-42, -1e-44, 2.0 ** -20, -(2.0 ** 3)], np.float32))
    if big:
        out.append(rng.laplace(size=SUBSAMPLE_MIN_SIZE + 12345).astype(np.float32))
    return out


@pytest.mark.parametrize("bins", [16, 2048])
def test_histogram_matches_the_definition(bins):
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 3,
                             np.float32([0.0, -0.0, 4.0, -4.0, 1e-40, -1e-40])])
    stats = TensorStatistics(bins=bins, subsample=False)
    stats.update(values)
    assert stats.exponent == math.ceil(math.log2(np.abs(values).max()))
    np.testing.assert_array_equal(stats.histogram,
                                  brute_force_histogram(values, bins, stats.exponent))
    assert stats.histogram.sum() == stats.count == values.size
    assert (stats.min, stats.max) == (float(values.min()), float(values.max()))


def test_growth_by_folding_equals_binning_at_the_final_range():
    rng = np.random.default_rng(2)
    parts = [rng.standard_normal(1000).astype(np.float32) * s for s in (1e-3, 1.0, 1e3)]
    stats = TensorStatistics(bins=64, subsample=False)
    for part in parts:
        stats.update(part)
    everything = np.concatenate(parts)
    np.testing.assert_array_equal(stats.histogram,
                                  brute_force_histogram(everything, 64, stats.exponent))


def test_growth_between_chunks_of_one_batch_is_exact():
    # 200,000 values whose magnitude grows along the array: the range widens chunk by chunk.
    rng = np.random.default_rng(7)
    values = (rng.standard_normal(200_000) * np.geomspace(1e-4, 1e4, 200_000)).astype(np.float32)
    for subsample in (False, True):
        stats = TensorStatistics(bins=512, subsample=subsample)
        stats.update(values)
        stride = SUBSAMPLE_STRIDE if subsample else 1
        expected = brute_force_histogram(values[::stride], 512, stats.exponent) * stride
        np.testing.assert_array_equal(stats.histogram, expected)
        assert (stats.min, stats.max) == (float(values.min()), float(values.max()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shards_merge_to_exactly_the_single_pass(seed):
    data = batches(seed, big=seed == 0)
    single = TensorStatistics()
    for values in data:
        single.update(values)
    order = np.random.default_rng(seed + 10).permutation(len(data))
    shards = [TensorStatistics() for _ in range(3)]
    for k, index in enumerate(order):
        shards[k % 3].update(data[index])
    merged = TensorStatistics()
    for shard in shards[::-1]:
        merged.merge(shard)
    assert merged == single
    np.testing.assert_array_equal(merged.histogram, single.histogram)
    assert merged.count == sum(v.size for v in data)


def test_memory_does_not_grow_with_batches():
    rng = np.random.default_rng(3)
    stats = TensorStatistics(bins=256)
    sizes = []
    for i in range(200):
        stats.update(rng.standard_normal(1000).astype(np.float32) * (i + 1))
        sizes.append((stats.histogram.nbytes, len(json.dumps(stats.to_dict()))))
    assert {s[0] for s in sizes} == {(2 * 256 + 1) * 8}
    # serialized size is bounded by the bin count, not the number of batches
    assert max(s[1] for s in sizes) < 25 * (2 * 256 + 1) + 500


def test_large_tensors_are_subsampled_deterministically():
    rng = np.random.default_rng(4)
    values = rng.standard_normal(SUBSAMPLE_MIN_SIZE + 7).astype(np.float32)
    values[-1] = 9.0  # min/max see every element even where the histogram does not
    a, b = TensorStatistics(), TensorStatistics()
    a.update(values)
    b.update(values.reshape(7, -1) if values.size % 7 == 0 else values.copy())
    assert a == b
    assert a.max == 9.0 and a.count == values.size
    expected = brute_force_histogram(values[::SUBSAMPLE_STRIDE], a.bins, a.exponent)
    np.testing.assert_array_equal(a.histogram, expected * SUBSAMPLE_STRIDE)
    full = TensorStatistics(subsample=False)
    full.update(values)
    np.testing.assert_array_equal(full.histogram, brute_force_histogram(values, a.bins,
                                                                        a.exponent))


def test_layout_does_not_change_statistics():
    rng = np.random.default_rng(5)
    values = rng.standard_normal((64, 50, 90)).astype(np.float32)
    a, b, c = TensorStatistics(), TensorStatistics(), TensorStatistics()
    a.update(values)
    b.update(np.asfortranarray(values))
    c.update(values.astype(np.float64))
    assert a == b == c


def test_non_finite_values_raise_and_leave_statistics_unchanged():
    stats = TensorStatistics()
    stats.update(np.arange(10, dtype=np.float32))
    before = stats.copy()
    bad = np.ones(1000, np.float32)
    bad[[3, 5]] = np.nan
    bad[7] = -np.inf
    with pytest.raises(NonFiniteDataError) as info:
        stats.update(bad, name="stage2_conv1_output")
    message = str(info.value)
    assert "'stage2_conv1_output'" in message
    assert "2 NaN" in message and "1 Inf" in message
    assert stats == before


def test_empty_array_raises():
    with pytest.raises(CalibrationDataError, match="'x'.*empty"):
        TensorStatistics().update(np.zeros((0, 3), np.float32), name="x")


@pytest.mark.parametrize("bins", [0, 3, 100, 2 ** 17, True, 2.0])
def test_bad_bins_are_refused(bins):
    with pytest.raises(ConfigError, match="power of two"):
        TensorStatistics(bins=bins)


def test_merging_different_settings_is_refused():
    a, b = TensorStatistics(bins=64), TensorStatistics(bins=128)
    a.update(np.ones(3, np.float32))
    b.update(np.ones(3, np.float32))
    with pytest.raises(CalibrationDataError, match="same settings"):
        a.merge(b)


def test_all_zero_then_values():
    stats = TensorStatistics(bins=32, subsample=False)
    stats.update(np.zeros(10, np.float32))
    assert stats.exponent is None and stats.absmax == 0.0
    counts, _ = stats.magnitude_histogram()
    assert counts.tolist() == [10]
    stats.update(np.float32([0.5, -3.0]))
    np.testing.assert_array_equal(
        stats.histogram,
        brute_force_histogram(np.float32([0] * 10 + [0.5, -3.0]), 32, stats.exponent))


def test_magnitude_histogram_folds_signs():
    stats = TensorStatistics(bins=16, subsample=False)
    stats.update(np.float32([-3.5, 3.5, 0.1, -0.1, 4.0, -2.0]))
    counts, width = stats.magnitude_histogram()
    assert width == 4.0 / 16
    assert counts.sum() == 6
    assert counts[0] == 2 and counts[14] == 2 and counts[15] == 1 and counts[8] == 1
    assert counts.size == 16  # 4.0 == R lands in the last bin


def test_dict_round_trip_is_exact_and_json_safe():
    stats = TensorStatistics(bins=128)
    for values in batches(6):
        stats.update(values)
    state = json.loads(json.dumps(stats.to_dict()))
    assert TensorStatistics.from_dict(state) == stats
    minmax = stats.without_histogram()
    assert TensorStatistics.from_dict(json.loads(json.dumps(minmax.to_dict()))) == minmax


@pytest.mark.parametrize("change", [
    {"count": -1}, {"min": float("nan")}, {"min": 5.0, "max": 1.0}, {"exponent": "3"},
    {"histogram": {"offset": 0, "counts": [1.5]}}, {"histogram": {"offset": 10 ** 6,
                                                                  "counts": [1]}},
    {"bins": 3}, {"extra": 1}, {"max": 1e30},
])
def test_malformed_dicts_are_refused(change):
    stats = TensorStatistics(bins=16)
    stats.update(np.float32([-1.0, 2.0]))
    state = dict(stats.to_dict(), **change)
    with pytest.raises(CalibrationDataError, match="Malformed"):
        TensorStatistics.from_dict(state)
