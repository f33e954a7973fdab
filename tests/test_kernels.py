"""AMX: left off by default (oneDNN 2.4.4's AMX int8 kernels crash on some shapes); a
user's own DNNL_MAX_CPU_ISA naming AMX gets the permission Linux requires and a warning,
not a SIGILL at the first layer."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from gluon_quant import _mxnet, kernels

HAS_AMX = {"amx_int8", "amx_tile"} <= _mxnet.isa.cpu_flags()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="the CPU has no AMX int8")

#: Quantizes a small CNN on fixed data (shapes oneDNN 2.4.4's AMX kernels run right), saves
#: the int8 outputs (``sys.argv[1]``) and prints what gluon_quant says of the kernels.
_CHILD = r"""
import sys
import numpy as np, mxnet as mx
import gluon_quant as gq
from mxnet.gluon import nn
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(32, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
        nn.Conv2D(64, 3, strides=2), nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Dense(10))
net.initialize(mx.init.Xavier())
rs = np.random.RandomState(0)
batches = [mx.nd.array(rs.rand(4, 16, 24, 24).astype("float32")) for _ in range(2)]
qnet = gq.quantize(net, batches, progress=False)
np.save(sys.argv[1], qnet(batches[0]).asnumpy())
print("KERNELS", gq.kernels.describe())
"""


def _run_child(tmp_path, name, **env):
    out = str(tmp_path / (name + ".npy"))
    environ = {k: v for k, v in os.environ.items() if k not in _mxnet.isa.ISA_VARIABLES}
    environ.update(env, DNNL_VERBOSE="1")
    done = subprocess.run([sys.executable, "-c", _CHILD, out], env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    return np.load(out), done.stdout + done.stderr


@needs_amx
def test_amx_stays_off_unless_the_user_asks_and_then_runs_without_sigill(tmp_path):
    default, log = _run_child(tmp_path, "default")
    assert "KERNELS AMX int8 tiles off (oneDNN 2.4.4's AMX int8 kernels crash" in log
    assert "amx" not in log.replace("KERNELS AMX", "").replace("AMX int8 kernels", "")
    assert "avx512_core_vnni" in log                  # oneDNN's own words
    # Without gluon_quant's arch_prctl this child is killed by SIGILL at its first layer.
    amx, log = _run_child(tmp_path, "amx", DNNL_MAX_CPU_ISA="AVX512_CORE_AMX")
    assert "KERNELS AMX int8 tiles on (DNNL_MAX_CPU_ISA=AVX512_CORE_AMX, set by the user)" in log
    assert "avx512_core_amx_int8" in log and "segmentation fault" in log
    np.testing.assert_array_equal(amx, default)


def test_nothing_is_set_for_this_process_or_its_children():
    assert not kernels.describe().startswith("AMX int8 tiles on")
    assert not any(os.environ.get(v) for v in _mxnet.isa.ISA_VARIABLES)


def _fresh(monkeypatch, flags=frozenset(), user=None, granted=True):
    latched = []
    monkeypatch.setattr(kernels, "_STATE", {"amx": None, "why": "before"})
    for name in _mxnet.isa.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if user is not None:
        monkeypatch.setenv("DNNL_MAX_CPU_ISA", user)
    monkeypatch.setattr(_mxnet.isa, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(_mxnet.isa, "request_amx_permission", lambda: granted)
    monkeypatch.setattr(_mxnet.isa, "latch_isa", latched.append)
    return latched


def test_a_user_amx_setting_without_the_permission_falls_back(monkeypatch, caplog):
    latched = _fresh(monkeypatch, {"amx_int8", "amx_tile"}, "AVX512_CORE_AMX", granted=False)
    with caplog.at_level(logging.WARNING, logger="gluon_quant.kernels"):
        assert kernels.check_isa() is False
    assert latched == ["ALL"]
    assert "SIGILL" in caplog.text and "DNNL_MAX_CPU_ISA=AVX512_CORE_AMX" in caplog.text
    assert kernels.describe().startswith(
        "AMX int8 tiles off (DNNL_MAX_CPU_ISA=AVX512_CORE_AMX, set by the user, not granted); ")


def test_a_granted_user_amx_setting_is_kept_with_a_warning(monkeypatch, caplog):
    latched = _fresh(monkeypatch, {"amx_int8", "amx_tile"}, "avx512_core_amx", granted=True)
    with caplog.at_level(logging.WARNING, logger="gluon_quant.kernels"):
        assert kernels.check_isa() is True
    assert latched == []
    assert "segmentation fault" in caplog.text and "6x6 pixels" in caplog.text


@pytest.mark.parametrize("flags, user, expected", [
    ({"avx512_vnni"}, None, "AMX int8 tiles off (the CPU has no AMX int8)"),
    ({"amx_int8", "amx_tile"}, None, "AMX int8 tiles off (oneDNN 2.4.4's AMX int8 kernels "
                                     "crash on some shapes; not turned on)"),
    ({"amx_int8", "amx_tile"}, "AVX512_CORE_VNNI",
     "AMX int8 tiles off (DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI, set by the user)"),
])
def test_amx_is_never_turned_on_by_gluon_quant(monkeypatch, caplog, flags, user, expected):
    latched = _fresh(monkeypatch, flags, user)
    with caplog.at_level(logging.WARNING, logger="gluon_quant.kernels"):
        assert kernels.check_isa() is False
    assert latched == [] and caplog.text == ""
    assert kernels.describe().startswith(expected + "; ")


def test_describe_says_whether_int8_pairs_saturate(monkeypatch):
    for value, said in ((True, "quantized to 7 bits"), (False, "int32 (VNNI or wider)")):
        monkeypatch.setattr(kernels, "int16_pair_sums", lambda value=value: value)
        assert kernels.describe().endswith(said)
