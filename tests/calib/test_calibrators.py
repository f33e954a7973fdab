"""The Calibrator contract, for every method and for user subclasses."""
import json

import numpy as np
import pytest

from gluon_quant.calib import (CALIBRATORS, ZERO_RANGE, CalibrationTable, Calibrator,
                               EntropyCalibrator, HistogramCalibrator, MinMaxCalibrator,
                               MSECalibrator, PercentileCalibrator, get_calibrator)
from gluon_quant.calib.statistics import SUBSAMPLE_MIN_SIZE
from gluon_quant.errors import (CalibrationDataError, ConfigError, EmptyCalibrationError,
                                GluonQuantError, NonFiniteDataError, UnknownNameError)

METHODS = [MinMaxCalibrator, EntropyCalibrator, PercentileCalibrator, MSECalibrator]


def stream(seed, n_batches=8):
    """(name, array) pairs of three tensors: ReLU output, signed, and one growing range."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        out.append(("relu", np.maximum(rng.standard_normal((4, 8, 9, 9)), 0)
                    .astype(np.float32) * (1 + i)))
        out.append(("signed", rng.laplace(scale=0.2, size=3000).astype(np.float32)))
        out.append(("growing", (rng.standard_normal(500) * 10.0 ** (i - 4)).astype(np.float32)))
    out.append(("big", rng.standard_normal(SUBSAMPLE_MIN_SIZE + 1).astype(np.float32)))
    return out


@pytest.mark.parametrize("cls", METHODS)
def test_merged_shards_equal_single_pass_exactly(cls):
    data = stream(0)
    single = cls()
    for name, values in data:
        single.collect(name, values)
    order = np.random.default_rng(1).permutation(len(data))
    shards = [cls() for _ in range(4)]
    for k, index in enumerate(order):
        shards[k % 4].collect(*data[index])
    merged = cls()
    for shard in (shards[2], shards[0], shards[3], shards[1]):
        merged.merge(shard)
    assert dict(merged.compute()) == dict(single.compute())  # zero tolerance
    assert merged.compute() == single.compute()
    for name in single.names:
        assert merged.statistics[name] == single.statistics[name]


@pytest.mark.parametrize("cls", METHODS)
def test_state_dict_round_trip(cls):
    cal = cls()
    for name, values in stream(2, n_batches=3):
        cal.collect(name, values)
    state = json.loads(json.dumps(cal.state_dict()))
    assert state["version"] == 2
    for loader in (cls, Calibrator):
        again = loader.from_state_dict(state)
        assert type(again) is cls
        assert again.names == cal.names
        assert again.compute() == cal.compute()
        assert again.state_dict() == cal.state_dict()


def test_state_dict_keeps_options():
    cal = PercentileCalibrator(percentile=99.5, bins=512, subsample=False)
    cal.collect("a", np.arange(100, dtype=np.float32))
    again = Calibrator.from_state_dict(json.loads(json.dumps(cal.state_dict())))
    assert (again.percentile, again.bins, again.subsample) == (99.5, 512, False)


def test_state_dict_refuses_newer_version_and_other_methods():
    cal = EntropyCalibrator()
    cal.collect("a", np.ones(4, np.float32))
    state = cal.state_dict()
    with pytest.raises(CalibrationDataError, match="upgrade gluon_quant"):
        EntropyCalibrator.from_state_dict(dict(state, version=3))
    with pytest.raises(CalibrationDataError, match="rescore"):
        PercentileCalibrator.from_state_dict(state)
    with pytest.raises(CalibrationDataError, match="not a gluon_quant|Not a gluon_quant"):
        EntropyCalibrator.from_state_dict({"tensors": []})


@pytest.mark.parametrize("target", [PercentileCalibrator, MSECalibrator, MinMaxCalibrator,
                                    EntropyCalibrator])
def test_rescore_equals_a_fresh_pass(target):
    data = stream(3, n_batches=4)
    source = EntropyCalibrator()
    fresh = target()
    for name, values in data:
        source.collect(name, values)
        fresh.collect(name, values)
    assert source.rescore(target).compute() == fresh.compute()
    assert target.from_statistics(source.statistics).compute() == fresh.compute()


def test_rescore_with_options_and_minmax_merges_histogram_statistics():
    data = stream(4, n_batches=2)
    source, fresh, minmax = MSECalibrator(), PercentileCalibrator(percentile=99.0), \
        MinMaxCalibrator()
    for name, values in data:
        source.collect(name, values)
        fresh.collect(name, values)
        minmax.collect(name, values)
    assert source.rescore(PercentileCalibrator, percentile=99.0).compute() == fresh.compute()
    other = MinMaxCalibrator()
    other.merge(source)  # histogram statistics are accepted, their min/max kept
    assert other.compute() == minmax.compute()
    exact = EntropyCalibrator(subsample=False)
    for name, values in data:
        exact.collect(name, values)
    other.merge(exact)  # the histogram settings do not matter to min/max
    assert other.compute() == minmax.compute()
    with pytest.raises(CalibrationDataError, match="histogram"):
        EntropyCalibrator.from_statistics(minmax.statistics)


@pytest.mark.parametrize("cls", METHODS)
def test_threshold_rule(cls):
    rng = np.random.default_rng(5)
    cal = cls()
    relu = np.maximum(rng.standard_normal(20000), 0).astype(np.float32)
    signed = rng.standard_normal(20000).astype(np.float32) + 3  # min barely below 0
    cal.collect("relu", relu)
    cal.collect("signed", signed)
    table = cal.compute()
    lo, hi = table["relu"]
    assert lo == 0.0 and 0 < hi <= relu.max()
    lo, hi = table["signed"]
    assert lo == -hi and 0 < hi <= np.abs(signed).max()
    assert table.method == cls.method


@pytest.mark.parametrize("cls", METHODS)
def test_zero_and_constant_tensors(cls):
    cal = cls()
    cal.collect("zeros", np.zeros((2, 3), np.float32))
    cal.collect("positive", np.full(1000, 2.5, np.float32))
    cal.collect("negative", np.full(1000, -0.75, np.float32))
    cal.collect("power_of_two", np.full(10, 4.0, np.float32))
    cal.collect("tiny", np.float32([1e-9, 0.0, 1e-9]))
    table = cal.compute()
    assert table["zeros"] == (0.0, ZERO_RANGE)
    assert table["positive"] == (0.0, 2.5)
    assert table["negative"] == (-0.75, 0.75)
    assert table["power_of_two"] == (0.0, 4.0)
    lo, hi = table["tiny"]
    assert lo == 0.0 and 0 < hi <= float(np.float32(1e-9))


@pytest.mark.parametrize("cls", METHODS)
def test_non_finite_data_names_the_tensor(cls):
    values = np.ones((3, 4), np.float32)
    values[1, 2] = np.nan
    with pytest.raises(NonFiniteDataError, match=r"'block3_relu0'.*1 NaN and 0 Inf"):
        cls().collect("block3_relu0", values)
    values[1, 2] = np.inf
    with pytest.raises(NonFiniteDataError, match=r"0 NaN and 1 Inf"):
        cls().collect("block3_relu0", values)


@pytest.mark.parametrize("cls", METHODS)
def test_empty_inputs(cls):
    with pytest.raises(EmptyCalibrationError, match="exhausted"):
        cls().compute()
    with pytest.raises(CalibrationDataError, match="empty"):
        cls().collect("x", np.zeros(0, np.float32))
    cal = cls()
    cal.collect("x", np.ones(3, np.float32))
    cal.reset()
    assert cal.names == []
    with pytest.raises(EmptyCalibrationError):
        cal.compute()


def test_names_in_first_seen_order_and_compute_is_pure():
    cal = EntropyCalibrator()
    for name in ["c", "a", "b", "a"]:
        cal.collect(name, np.arange(5, dtype=np.float32) - 1)
    assert cal.names == ["c", "a", "b"]
    first = cal.compute()
    assert list(first) == ["c", "a", "b"]
    assert cal.compute() == first


def test_registry_and_get_calibrator():
    assert set(CALIBRATORS) == {"minmax", "naive", "entropy", "kl", "percentile", "mse"}
    assert type(get_calibrator("naive")) is MinMaxCalibrator
    assert type(get_calibrator(" KL ")) is EntropyCalibrator
    cal = get_calibrator("percentile", percentile=99.9)
    assert cal.percentile == 99.9
    assert get_calibrator(cal) is cal
    assert type(get_calibrator(MSECalibrator, bins=256)) is MSECalibrator
    with pytest.raises(UnknownNameError) as info:
        get_calibrator("kld")
    message = str(info.value)
    assert "'entropy', 'kl', 'minmax', 'mse', 'naive', 'percentile'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ConfigError)
    with pytest.raises(ConfigError, match="no option 'percentil'"):
        get_calibrator("percentile", percentil=99)
    with pytest.raises(ConfigError, match="existing"):
        get_calibrator(cal, percentile=90)
    with pytest.raises(ConfigError):
        get_calibrator(42)


@pytest.mark.parametrize("make", [
    lambda: PercentileCalibrator(percentile=0),
    lambda: PercentileCalibrator(percentile=100.5),
    lambda: PercentileCalibrator(percentile=float("nan")),
    lambda: EntropyCalibrator(max_clip_fraction=-0.1),
    lambda: EntropyCalibrator(max_clip_fraction="0.1"),
    lambda: MSECalibrator(bins=1000),
    lambda: MSECalibrator(subsample="yes"),
])
def test_bad_options_are_refused(make):
    with pytest.raises(ConfigError):
        make()


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        PercentileCalibrator(99.9)


class HalfRange(Calibrator):
    """A user's direct subclass: half the observed magnitude."""

    method = "half"

    def _threshold(self, stats, unsigned):
        return stats.absmax / 2


class Median(HistogramCalibrator):
    """A user's histogram subclass with no method name: the median of |x|."""

    def _threshold(self, stats, unsigned):
        counts, width = stats.magnitude_histogram()
        return (int(np.searchsorted(np.cumsum(counts), counts.sum() / 2)) + 1) * width


def test_user_subclasses_need_no_registration():
    data = np.linspace(-4, 4, 8001, dtype=np.float32)
    half = get_calibrator(HalfRange)
    half.collect("x", data)
    assert half.compute()["x"] == (-2.0, 2.0)
    assert half.compute().method == "half"
    median = Median(bins=1024)
    median.collect("x", data)
    lo, hi = median.compute()["x"]
    assert abs(hi - 2.0) <= 4.0 / 1024 and median.compute().method == "Median"
    for cal in (half, median):
        state = json.loads(json.dumps(cal.state_dict()))
        assert Calibrator.from_state_dict(state).compute() == cal.compute()
        assert type(cal).from_state_dict(state).compute() == cal.compute()
    assert median.rescore(PercentileCalibrator, percentile=50.0).compute()["x"] == (lo, hi)


def test_bad_user_threshold_is_reported():
    class Broken(Calibrator):
        def _threshold(self, stats, unsigned):
            return float("nan")

    cal = Broken()
    cal.collect("x", np.float32([1, 2]))
    with pytest.raises(GluonQuantError, match="Broken._threshold returned nan for tensor 'x'"):
        cal.compute()


def test_collect_accepts_arrays_with_asnumpy():
    class FakeNDArray:
        def __init__(self, values):
            self._values = values

        def asnumpy(self):
            return self._values

    cal, reference = MinMaxCalibrator(), MinMaxCalibrator()
    cal.collect("x", FakeNDArray(np.float32([-1, 3])))
    reference.collect("x", np.float32([-1, 3]))
    assert cal.compute() == reference.compute() == CalibrationTable({"x": (-3.0, 3.0)},
                                                                    method="minmax")
