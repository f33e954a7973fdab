"""Micro-benchmark of the calibration kernels.

Prints, per float32 array size and distribution, the cost of ``collect()`` per element
next to a bare ``arr.copy()`` (what ``NDArray.asnumpy()`` costs anyway) and next to the
``np.histogram`` approach of MXNet; then the time to compute thresholds for 55 tensors
(a resnet50's worth) with each method.  Timings are medians of a few runs on whatever
machine runs it: compare the ratios, not the absolute numbers.

    python benchmarks/calib_kernels.py [--sizes 10e6 50e6] [--repeat 5]
"""
import argparse

import numpy as np

from _common import median_seconds
from gluon_quant.calib import EntropyCalibrator, MinMaxCalibrator, get_calibrator


def _np_histogram_stats(array):
    """What MXNet's entropy collector does per batch: min, max and np.histogram."""
    lo, hi = float(array.min()), float(array.max())
    absmax = max(abs(lo), abs(hi))
    return np.histogram(array, bins=8001, range=(-absmax, absmax))


def bench_collect(sizes, repeat, rng):
    print("collect() cost per element (median of %d), ratio to arr.copy():" % repeat)
    print("%-10s %-9s %9s %22s %22s %22s %22s" % (
        "elements", "data", "copy ns", "minmax", "histogram(sampled)", "histogram(full)",
        "np.histogram 8001"))
    for size in sizes:
        gauss = rng.standard_normal(size, dtype=np.float32)
        for label, array in (("gaussian", gauss), ("relu", np.maximum(gauss, 0))):
            def collector(cls, **options):
                return lambda: cls(**options).collect("t", array)
            copy = median_seconds(array.copy, repeat)
            cells = []
            for func in (collector(MinMaxCalibrator),
                         collector(EntropyCalibrator, subsample=True),
                         collector(EntropyCalibrator, subsample=False),
                         lambda: _np_histogram_stats(array)):
                seconds = median_seconds(func, repeat)
                cells.append("%6.2f ns (%5.2fx)" % (seconds / size * 1e9, seconds / copy))
            row = " ".join("%22s" % cell for cell in cells)
            print("%-10d %-9s %9.2f %s" % (size, label, copy / size * 1e9, row))
        del gauss


def _resnet50_like(rng, n_tensors, size):
    """Statistics of ``n_tensors`` activations: mostly ReLU outputs, some signed."""
    cal = EntropyCalibrator()
    for i in range(n_tensors):
        scale = 0.1 * (1 + i % 7)
        if i % 5 == 4:  # residual sums and the input are signed
            values = rng.laplace(scale=scale, size=size).astype(np.float32)
        else:
            values = np.maximum(rng.standard_normal(size, dtype=np.float32) * scale, 0)
        cal.collect("layer%02d" % i, values)
    return cal


def bench_thresholds(repeat, rng, n_tensors=55):
    cal = _resnet50_like(rng, n_tensors, 200_000)
    print("\nthreshold search for %d tensors (median of %d):" % (n_tensors, repeat))
    base = None
    for name in ("minmax", "percentile", "mse", "entropy"):
        scorer = cal.rescore(type(get_calibrator(name)))
        seconds = median_seconds(scorer.compute, repeat)
        base = base or seconds
        print("  %-10s %8.1f ms total, %6.2f ms per tensor (%6.1fx minmax)"
              % (name, seconds * 1e3, seconds / n_tensors * 1e3, seconds / base))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 10e6, 50e6])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    bench_collect([int(s) for s in args.sizes], args.repeat, rng)
    bench_thresholds(args.repeat, rng)


if __name__ == "__main__":
    main()
