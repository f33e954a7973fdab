"""The ONNX Runtime peer of benchmarks/inference.py: choosing its interpreter, and skipping it.

None of this needs onnxruntime: the interpreters are stand-in scripts, and the benchmark is
stopped at its option check, before any model is built.
"""
import os
import stat
import sys

import pytest

_BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks")
sys.path.insert(0, _BENCH)

import _ort  # noqa: E402

# inference.py sets OMP_NUM_THREADS for the MXNet it loads; here MXNet is loaded already and
# the variable would only reach later tests' worker processes (calibrate_parallel's, with
# another thread count than this process: fp32 sums one ulp apart on AVX2).
_OMP = os.environ.get("OMP_NUM_THREADS")
import inference  # noqa: E402
if _OMP is None:
    os.environ.pop("OMP_NUM_THREADS", None)


def _interpreter(tmp_path, body):
    """A stand-in ``python``: a shell script with ``body``."""
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_default_is_this_interpreter_or_a_skip(monkeypatch):
    monkeypatch.setattr(_ort.importlib.util, "find_spec", lambda name: None)
    python, note = _ort.resolve_ort_python(None)
    assert python is None
    assert "skipped" in note and "--ort-python" in note and "docs/performance.md" in note
    monkeypatch.setattr(_ort.importlib.util, "find_spec", lambda name: object())
    assert _ort.resolve_ort_python(None)[0] == sys.executable


def test_a_given_interpreter_is_probed(tmp_path):
    good = _interpreter(tmp_path, 'echo "1.32.0 1.23.2"')
    python, note = _ort.resolve_ort_python(good)
    assert python == good
    assert note == "onnxruntime 1.32.0, onnx 1.23.2 from %s" % good


def test_a_given_interpreter_without_onnxruntime_is_an_error(tmp_path, capsys):
    bad = _interpreter(tmp_path, "echo \"ModuleNotFoundError: No module named "
                                 "'onnxruntime'\" >&2; exit 1")
    with pytest.raises(_ort.PeerUnavailable, match="No module named 'onnxruntime'"):
        _ort.resolve_ort_python(bad)
    missing = str(tmp_path / "no" / "python")
    with pytest.raises(_ort.PeerUnavailable, match="cannot be run"):
        _ort.resolve_ort_python(missing)
    # The benchmark refuses it before building any model (argparse's exit code 2).
    with pytest.raises(SystemExit) as exc:
        inference.main(["--models", "resnet18_v1", "--ort-python", bad])
    assert exc.value.code == 2
    assert "--ort-python %r cannot import onnxruntime" % bad in capsys.readouterr().err
