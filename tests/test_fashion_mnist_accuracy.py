"""The Fashion-MNIST accuracy table of benchmarks/fashion_mnist.py (slow: trains a ResNet)."""
import importlib.util
import os

import pytest

from gluon_quant.datasets import FASHION_MNIST_DIR

pytestmark = pytest.mark.slow

_SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "fashion_mnist.py")


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Fashion-MNIST not installed")
def test_default_settings_lose_at_most_0_3_points():
    spec = importlib.util.spec_from_file_location("fashion_mnist_benchmark", _SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fp32, rows = bench.run(epochs=3, seed=0)
    table = {(name, gran): acc for name, gran, acc in rows}
    assert fp32 > 88.0
    assert fp32 - table[("mse", "channel")] <= 0.3
    assert len(table) == 8
    assert all(fp32 - acc <= 1.0 for acc in table.values()), table
