"""ONNX Runtime's side of ``benchmarks/inference.py --ort-python``: quantize, then time on request.

Runs under the ORT environment's interpreter and imports only numpy and onnxruntime (and
onnx through ORT's quantization tools), never MXNet: MXNet 1.9.1's ONNX exporter needs
``onnx<1.16`` while current ORT quantization tools need a newer onnx, so the export happens
in the benchmark's process and everything ORT does happens here.

``python _ort_worker.py DIR THREADS ACTIVATIONS`` reads ``DIR/model.onnx`` (fp32, dynamic
batch) and the calibration batches ``DIR/calib_*.npy``, writes ``DIR/model.int8.onnx`` with ORT's own flow
(``quant_pre_process``, then ``quantize_static``: QDQ, per-channel int8 weights, ``uint8`` or
``int8`` activations as ACTIVATIONS says, min-max over the same batches that calibrate
gluon_quant), opens both with ``THREADS`` intra-op threads, and answers
one JSON request per line on stdin with one JSON line on stdout:

* ``{"op": "time", "variant": "ort_fp32"|"ort_int8", "input": PATH, "calls": N}``
  -> ``{"seconds": S}``, the wall-clock time of N calls on the array in PATH (loaded once);
* ``{"op": "run", "variant": ..., "input": PATH, "output": PATH}`` -> ``{}``, the first output
  saved to the output path;
* end of input -> exit.

The exported model's weights are made constants first (see :func:`constant_weights`).

The first line written is ``{"ready": true, "onnxruntime": VERSION, "onnx": VERSION}``.
Errors are answered as ``{"error": MESSAGE}``.
"""
import glob
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process


#: ``--ort-activations``: uint8 (u8s8) or int8 (s8s8) activations; weights are int8.
ACTIVATIONS = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class NpyBatches(CalibrationDataReader):
    """The calibration batches, one ``{input_name: array}`` per ``get_next()``."""

    def __init__(self, input_name, paths):
        self._feeds = iter([{input_name: np.load(p)} for p in paths])

    def get_next(self):
        return next(self._feeds, None)


def constant_weights(src, dst):
    """``src`` with its initializers removed from the graph inputs.

    MXNet's exporter lists every weight as a graph input too, which makes ORT treat the
    weights as overridable: no constant folding (BatchNorm stays unfused in fp32, and the
    int8 model would dequantize its weights at every call). A peer must run at its best.
    """
    model = onnx.load(src)
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.save(model, dst)


def quantize(workdir, activations):
    """Write ``model.int8.onnx`` beside ``model.onnx`` with ORT's static QDQ flow."""
    exported = os.path.join(workdir, "model.onnx")
    fp32 = os.path.join(workdir, "model.fp32.onnx")
    prepared = os.path.join(workdir, "model.prep.onnx")
    int8 = os.path.join(workdir, "model.int8.onnx")
    constant_weights(exported, fp32)
    quant_pre_process(fp32, prepared)           # shape inference + fp32 graph optimization
    input_name = onnx.load(prepared).graph.input[0].name
    reader = NpyBatches(input_name, sorted(glob.glob(os.path.join(workdir, "calib_*.npy"))))
    quantize_static(prepared, int8, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=ACTIVATIONS[activations], weight_type=QuantType.QInt8)
    return {"ort_fp32": fp32, "ort_int8": int8}


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3              # errors only
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def serve(sessions, requests, reply):
    inputs = {}
    for line in requests:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            sess = sessions[req["variant"]]
            if req["input"] not in inputs:
                inputs[req["input"]] = np.load(req["input"])
            feed = {sess.get_inputs()[0].name: inputs[req["input"]]}
            if req["op"] == "time":
                start = time.perf_counter()
                for _ in range(int(req["calls"])):
                    sess.run(None, feed)
                reply({"seconds": time.perf_counter() - start})
            elif req["op"] == "run":
                np.save(req["output"], sess.run(None, feed)[0])
                reply({})
            else:
                reply({"error": "unknown op %r" % req["op"]})
        except Exception as err:                # answered, so that the caller can report it
            reply({"error": "%s: %s" % (type(err).__name__, err)})


def main():
    workdir, threads, activations = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        paths = quantize(workdir, activations)
        sessions = {key: session(path, threads) for key, path in paths.items()}
    except Exception as err:
        reply({"error": "%s: %s" % (type(err).__name__, err)})
        return 1
    reply({"ready": True, "onnxruntime": ort.__version__, "onnx": onnx.__version__})
    serve(sessions, sys.stdin, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
