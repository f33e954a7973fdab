"""ONNX Runtime as an optional peer in ``benchmarks/inference.py``.

The fp32 Gluon model is exported here with MXNet's own exporter (``mx.onnx.export_model``,
which needs ``onnx<1.16`` in this environment); quantizing and running it happens in a
worker process (``_ort_worker.py``) under the interpreter of an environment with
onnxruntime and a recent onnx, so the two onnx versions never meet. Model, calibration
batches and inputs travel through a temporary directory; requests and timings through the
worker's stdin/stdout, one JSON line each. The worker measures the calls itself, so the
pipe is not in the times.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

__all__ = ["OrtPeer", "PeerUnavailable", "resolve_ort_python"]

VARIANTS = ("ort_fp32", "ort_int8")
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ort_worker.py")
SETUP_HINT = ("see docs/performance.md, 'ONNX Runtime as the peer': e.g. python -m venv "
              "ortvenv && ortvenv/bin/pip install onnxruntime onnx numpy sympy, then "
              "--ort-python ortvenv/bin/python")


class PeerUnavailable(Exception):
    """The ONNX Runtime column cannot be measured (the message says why and what to do)."""


def resolve_ort_python(path):
    """The interpreter to run ONNX Runtime with, or ``(None, why)`` when it is skipped.

    Parameters
    ----------
    path : str or None
        ``--ort-python``. ``None``: this interpreter if it can import onnxruntime,
        otherwise the peer is skipped (not an error: it is optional).

    Returns
    -------
    tuple of (str or None, str)
        The interpreter, and a note for the report.

    Raises
    ------
    PeerUnavailable
        ``path`` was given but is not an interpreter that imports onnxruntime.
    """
    if path is None:
        if importlib.util.find_spec("onnxruntime") is None:
            return None, ("ONNX Runtime peer skipped: onnxruntime is not importable here and "
                          "--ort-python was not given (%s)" % SETUP_HINT)
        return sys.executable, "ONNX Runtime from this interpreter"
    probe = "import onnxruntime, onnx; print(onnxruntime.__version__, onnx.__version__)"
    try:
        found = subprocess.run([path, "-c", probe], capture_output=True, text=True,
                               timeout=120, check=False)
    except OSError as err:
        raise PeerUnavailable("--ort-python %r cannot be run (%s); give the python of an "
                              "environment with onnxruntime and onnx, %s"
                              % (path, err, SETUP_HINT)) from None
    if found.returncode != 0:
        raise PeerUnavailable("--ort-python %r cannot import onnxruntime and onnx (%s); %s"
                              % (path, found.stderr.strip().splitlines()[-1:], SETUP_HINT))
    ort_version, onnx_version = found.stdout.split()
    return path, "onnxruntime %s, onnx %s from %s" % (ort_version, onnx_version, path)


def export_onnx(block, size, path):
    """Export the hybridized, already-run fp32 ``block`` to ONNX with a dynamic batch axis."""
    if importlib.util.find_spec("onnx") is None:
        raise PeerUnavailable("MXNet's ONNX export needs the onnx package: pip install "
                              "'onnx<1.16' in the MXNet environment (MXNet 1.9.1's exporter "
                              "imports onnx.mapping, removed in 1.16)")
    mx_onnx = importlib.import_module("mxnet.onnx")
    prefix = os.path.join(os.path.dirname(path), "gluon")
    block.export(prefix)
    try:
        mx_onnx.export_model(prefix + "-symbol.json", prefix + "-0000.params",
                             in_shapes=[(1, 3, size, size)], in_types=[np.float32],
                             onnx_file_path=path, dynamic=True,
                             dynamic_input_shapes=[(None, 3, size, size)])
    except Exception as err:                    # mx2onnx lacks converters for some ops
        raise PeerUnavailable("mx.onnx.export_model failed: %s: %s"
                              % (type(err).__name__, str(err).splitlines()[0][:200])) from None


class OrtPeer:
    """ORT fp32 and ORT int8 of one model, served by a worker process.

    Parameters
    ----------
    python : str
        Interpreter of the ONNX Runtime environment.
    block : mxnet.gluon.HybridBlock
        The fp32 model, hybridized and run once (so that it can be exported).
    calib : list of numpy.ndarray
        The calibration batches, float32 ``(N, 3, size, size)``; the same ones gluon_quant
        and MXNet calibrate on.
    threads : int
        ONNX Runtime's intra-op threads.
    activations : {'uint8', 'int8'}
        The int8 model's activation type (weights are int8, per channel).
    """

    def __init__(self, python, block, calib, threads, activations="uint8"):
        self._dir = tempfile.mkdtemp(prefix="gq_ort_")
        self._inputs = {}
        self._proc = None
        try:
            size = calib[0].shape[-1]
            export_onnx(block, size, os.path.join(self._dir, "model.onnx"))
            for i, batch in enumerate(calib):
                np.save(os.path.join(self._dir, "calib_%03d.npy" % i),
                        np.ascontiguousarray(batch, dtype=np.float32))
            self._proc = subprocess.Popen([python, _WORKER, self._dir, str(threads), activations],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True, bufsize=1)
            ready = self._reply()
            self.versions = "onnxruntime %s, onnx %s" % (ready["onnxruntime"], ready["onnx"])
        except BaseException:
            self.close()
            raise

    def _reply(self):
        line = self._proc.stdout.readline()
        if not line:
            raise PeerUnavailable("the ONNX Runtime worker exited (code %s); its messages "
                                  "are above" % self._proc.wait())
        reply = json.loads(line)
        if "error" in reply:
            raise PeerUnavailable("ONNX Runtime worker: %s" % reply["error"])
        return reply

    def _request(self, **req):
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def _input(self, x):
        """The path of ``x`` (a numpy array) in the exchange directory, written once."""
        key = (x.shape, hash(x.tobytes()))
        if key not in self._inputs:
            path = os.path.join(self._dir, "input_%d.npy" % len(self._inputs))
            np.save(path, np.ascontiguousarray(x, dtype=np.float32))
            self._inputs[key] = path
        return self._inputs[key]

    def timer(self, variant, x):
        """A timer for :func:`inference.time_calls`: ``n`` -> seconds of ``n`` calls on ``x``."""
        path = self._input(x)
        return lambda n: self._request(op="time", variant=variant, input=path,
                                       calls=n)["seconds"]

    def output(self, variant, x):
        """The first output of ``variant`` on ``x``, as a numpy array."""
        out = os.path.join(self._dir, "output.npy")
        self._request(op="run", variant=variant, input=self._input(x), output=out)
        return np.load(out)

    def close(self):
        """Stop the worker and remove the exchange directory."""
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
