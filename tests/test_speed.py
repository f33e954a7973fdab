"""Speed plumbing, checked for correctness only (never wall-clock): the profile benchmark's
smoke run, and the loaded int8 model running without per-call weight reorders."""
import os
import re
import subprocess
import sys
from conftest import PAIRS_SATURATE

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
_PROFILE = os.path.join(_ROOT, "benchmarks", "op_profile.py")


def _profile(*args):
    env = dict(os.environ, PYTHONPATH=_ROOT, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, _PROFILE, "--quick", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                          check=False)
    text = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, text[-3000:]
    return text


def test_profile_quick_bert_reports_groups_reorders_and_sweep():
    text = _profile("--models", "bert")
    shares = [float(s) for s in re.findall(r"^  \S[^\n]*?\s([\d.]+)%$", text, re.M)]
    # The operator groups' shares add up to the whole.
    assert abs(sum(shares) - 100.0) < 0.5, text
    assert "qdq" in text and "dense" in text and "attention" in text
    # 40 nodes per call (the two residual sums run fp32, fed by the dense layers' fp32
    # outputs: 45 with them in int8; the pooler, a dense layer alone between fp32 layers,
    # too small to gain from int8, runs fp32: 43 with it in int8); the last is its tanh.
    # Where int8 pairs saturate (no VNNI) each of the 4 dense layers with int8 input reads
    # it shifted into 7-bit uint8 codes (dequantize, + range, quantize): 52 nodes.
    nodes = 52 if PAIRS_SATURATE else 40
    assert re.search(r"\(of %d\):\n(.*\n){5}\s+#%d\s+Activation" % (nodes, nodes - 1),
                     text), text
    # The loaded int8 BERT runs 5 dense layers (oneDNN inner products) per call and no
    # more reorders than its 11 layout/type conversions: its weights are not reordered
    # (quantized) again at every call.
    assert re.search(r"inner_product\s+[\d.]+\s+[\d.]+%\s+5\.0 calls", text), text
    reorders = float(re.search(r"reorder\s+[\d.]+\s+[\d.]+%\s+([\d.]+) calls", text).group(1))
    assert reorders <= (14.0 if PAIRS_SATURATE else 11.0), text
    assert re.search(r"omp2 NaiveEngine\s+[\d.]+ ms\s+[\d.]+x", text), text


def test_profile_quick_convnet_has_no_per_call_weight_reorders():
    text = _profile("--models", "mobilenetv2_0.25", "--no-sweep")
    # 53 convolutions and 5 reorders per call (input, output and flatten layouts, and the
    # fp32 depthwise convolution's output to the quantize node's layout: at 32 pixels the
    # stem and its depthwise reader do 4.0% of the multiply-adds, the 1280-channel head the
    # most, so graph/stem.py keeps them fp32); before the loaded block was hybridized, 107
    # reorders (every weight quantized at every call).
    assert re.search(r"convolution\s+[\d.]+\s+[\d.]+%\s+53\.0 calls", text), text
    # Where int8 pairs saturate (no VNNI), each of the 17 projections reads a 7-bit copy of
    # its ReLU6 input (dequantize and quantize: two reorders each; graph/saturation.py).
    assert re.search(r"reorder\s+[\d.]+\s+[\d.]+%%\s+%d\.0 calls"
                     % (38 if PAIRS_SATURATE else 5), text), text
