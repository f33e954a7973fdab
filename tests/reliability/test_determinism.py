"""Same data, same thresholds and outputs: across runs, processes and shard orders."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant.calib import get_calibrator
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from conftest import build_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALIBRATORS = ["minmax", "entropy", "percentile", "mse"]

# Builds the same net and data from seeds, quantizes and prints thresholds and outputs
# as exact hex floats.
SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
import numpy as np, mxnet as mx
import gluon_quant as gq
from conftest import build_cnn
from gluon_quant.zoo.batchnorm import reestimate_batchnorm
mx.random.seed(21)
rs = np.random.RandomState(21)
net = build_cnn()
net.initialize(mx.init.Xavier())
data = rs.rand(32, 1, 28, 28).astype("float32")
reestimate_batchnorm(net, mx.nd.array(data))
out = {}
for cal in sys.argv[1:]:
    q = gq.quantize(net, [data[i:i + 8] for i in range(0, 32, 8)], calibrator=cal,
                    progress=False)
    table = {k: [float(v).hex() for v in r] for k, r in q.calibration_table.items()}
    y = q(mx.nd.array(data[:8])).asnumpy()
    out[cal] = {"table": table, "out": y.tobytes().hex()}
print("RESULT " + json.dumps(out, sort_keys=True))
"""


def _run_child():
    proc = subprocess.run([sys.executable, "-c", SCRIPT] + CALIBRATORS, capture_output=True,
                          text=True, cwd=ROOT, timeout=300, check=True)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[7:])


def test_bit_identical_across_processes_and_runs():
    first, second = _run_child(), _run_child()
    assert first == second
    assert set(first) == set(CALIBRATORS)
    assert all(len(r["table"]) >= 5 for r in first.values())


def _net_and_data():
    mx.random.seed(22)
    rs = np.random.RandomState(22)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    data = rs.rand(32, 1, 28, 28).astype("float32")
    reestimate_batchnorm(net, mx.nd.array(data))
    return net, [data[i:i + 8] for i in range(0, 32, 8)]


@pytest.mark.parametrize("calibrator", CALIBRATORS)
def test_bit_identical_across_runs_in_process(calibrator):
    net, batches = _net_and_data()
    x = mx.nd.array(batches[0])
    runs = [gq.quantize(net, batches, calibrator=calibrator, progress=False) for _ in range(2)]
    assert dict(runs[0].calibration_table) == dict(runs[1].calibration_table)
    assert np.array_equal(runs[0](x).asnumpy(), runs[1](x).asnumpy())
    # Calling the same block repeatedly is deterministic too.
    assert np.array_equal(runs[0](x).asnumpy(), runs[0](x).asnumpy())


@pytest.mark.parametrize("calibrator", CALIBRATORS)
def test_shard_order_does_not_change_merged_thresholds(calibrator):
    rs = np.random.RandomState(23)
    # Shards with different ranges, so merging has to grow histograms.
    shards = [{"t": rs.randn(4000).astype("float32") * scale, "u": rs.rand(500) * scale}
              for scale in (0.5, 3.0, 1.0, 7.0)]
    merged = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        parts = []
        for i in order:
            cal = get_calibrator(calibrator)
            for name, values in shards[i].items():
                cal.collect(name, values)
            parts.append(cal)
        total = parts[0]
        for part in parts[1:]:
            total.merge(part)
        merged.append(dict(total.compute()))
    single = get_calibrator(calibrator)
    for shard in shards:
        for name, values in shard.items():
            single.collect(name, values)
    assert merged[0] == merged[1] == merged[2] == dict(single.compute())
