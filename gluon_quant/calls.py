"""A runtime block's calls: its arguments made the arrays the int8 graph takes, its outputs
given back as the fp32 net gives them, and an MXNet failure told as the user's or MXNet's.

Shared by :class:`gluon_quant.QuantizedHybridBlock` and
:class:`gluon_quant.QuantizedSymbolBlock`, whose ``forward`` are these three steps.
"""
import logging

import mxnet as mx
import numpy as np

from . import _mxnet
from .data import describe, input_labels, nest
from .errors import InputMismatchError, ModelExecutionError

__all__ = ["as_tuples", "call_inputs", "call_outputs", "run_error"]

_log = logging.getLogger(__name__)


def as_tuples(value):
    """Nested lists of outputs as nested tuples (how fp32 Gluon nets return them)."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(v) for v in value)
    return value


_recording_noted = []


def _note_recording():
    """Say once, when an int8 net is first called inside ``autograd.record()``, that its
    outputs carry no gradient: a loss made of them alone fails in ``backward()`` with
    MXNet's "Cannot differentiate node because it is not in a computational graph",
    which reads as if ``record()`` had not been called. A distillation step (an int8
    teacher beside a trained student) works, and is told once."""
    if _recording_noted or not mx.autograd.is_recording():
        return
    _recording_noted.append(True)
    _log.warning("An int8 network was called inside autograd.record(): it is inference only "
                 "and its outputs carry no gradient (a loss computed from them alone fails "
                 "in backward() with 'Cannot differentiate node'). To train or fine-tune, "
                 "train the fp32 network and quantize it again; as a fixed teacher for "
                 "distillation it is fine.")


def call_inputs(values, watch=None):
    """``(flat, np_in)``: the arrays of a call's (nested) arguments as legacy NDArrays, and
    whether any was an ``mxnet.np`` array (then :func:`call_outputs` gives NumPy ones).

    Arrays in shared or pinned CPU memory (``cpu_shared``: what a ``DataLoader`` with
    ``num_workers`` yields; ``cpu_pinned``: ``ImageRecordIter``'s) are copied to ``cpu``:
    MXNet's cached graphs refuse them, and an evaluation loop over such data failed.
    Numeric arrays of any other dtype (uint8 images, int64 token ids, masks, float16 and
    float64 data) and numpy arrays are made float32 NDArrays, as calibration batches are
    (:class:`BatchConverter`): an input the graph quantizes read uint8 bytes as already
    quantized (images came out scaled by the calibrated range over 255) and failed on
    int32 or float16 ("data_quantize: Check failed"); the fp32 net's own float32 graph
    refuses the others.

    ``watch`` (a :class:`gluon_quant.watch.InputWatch`) sees the arrays: inputs unlike the
    calibration data are reported on an int8 net's first calls.
    """
    _note_recording()
    flat = nest(values)[0]
    np_in = any(_mxnet.is_np_array(v) for v in flat)
    flat = [_mxnet.as_legacy(v) for v in flat] if np_in else flat
    flat = [_as_float32(v) for v in flat]
    if watch is not None:
        watch.see(flat)
    return flat, np_in


def _as_float32(value):
    """A call's array as a float32 NDArray (numpy arrays on ``cpu``), anything else, and
    arrays of no numeric dtype, as it is (the run's error names them)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return mx.nd.array(value, dtype="float32")
    if isinstance(value, mx.nd.NDArray) and value.dtype != np.float32 \
            and np.dtype(value.dtype).kind in "fiub":
        value = value.astype("float32")
    return _mxnet.unshared(value)


def call_outputs(out, np_in):
    """A runtime block's outputs as the fp32 net gives them: Gluon's lists of outputs as
    tuples, ``mxnet.np`` arrays for a caller that gave them or runs in NumPy mode (where
    Gluon refuses a block's legacy outputs)."""
    out = as_tuples(out) if isinstance(out, list) else out
    return _mxnet.as_np(out) if np_in or _mxnet.is_np_mode() else out


def run_error(err, inputs, spec, calibration, ctx=None, built="quantize with ctx="):
    """The package error for an MXNet failure of the int8 network on ``inputs``.

    The inputs are blamed only when they differ from the calibration batches in count,
    rank or per-sample shape, or live on another context than ``ctx`` (where the network
    runs); otherwise the failure is MXNet's own, reported as such. ``built`` names the
    call that takes ``ctx=`` (``quantize``'s, or ``imports``' for a loaded export).
    """
    inputs = nest(inputs)[0]
    elsewhere = sorted({str(a.context) for a in inputs if isinstance(a, mx.nd.NDArray)
                        and ctx is not None and a.context != ctx})
    if elsewhere:
        return InputMismatchError(
            "The inputs (%s) are on %s but the int8 network runs on %s: move them there "
            "(x.as_in_context(mx.%s)), or %s where they live."
            % (describe(inputs), ", ".join(elsewhere), ctx, ctx, built))
    shapes = [tuple(getattr(a, "shape", ())) for a in inputs]
    seen = list(calibration.input_shapes) if calibration is not None else None
    arrays = all(isinstance(a, (mx.nd.NDArray, np.ndarray))
                 and np.dtype(a.dtype).kind in "fiub" for a in inputs)     # run as float32
    if arrays and seen is not None and len(shapes) == len(seen) and all(
            len(a) == len(b) and a[1:] == b[1:] for a, b in zip(shapes, seen)):
        return ModelExecutionError(
            "The int8 network failed inside MXNet on inputs shaped like its calibration "
            "batches (%s): %s. This is not a problem with your inputs; please report it "
            "with the network." % (describe(inputs), _mxnet.first_line(err)))
    layout = spec.layout or [0] * len(spec.arg_names)
    nones = [name for name, sub in zip(spec.arg_names, layout) if sub == -1]
    # a net taking *args, calibrated on (x, y) batches: y was read as a label
    more = (" It was built to take %d input(s), the calibration batches' other elements "
            "read as labels: to feed %d, quantize it with num_inputs=%d."
            % (spec.count, len(inputs), len(inputs)) if len(inputs) > spec.count else "")
    return InputMismatchError(
        "Running the int8 network on %s failed: %s. Pass %d mx.nd.NDArray input(s) (%s%s) "
        "with the rank and per-sample shape of the calibration batches%s.%s"
        % (describe(inputs), _mxnet.first_line(err).rstrip("."), spec.count,
           ", ".join(input_labels(spec.arg_names, layout)),
           "; None for %s, as calibrated" % ", ".join(nones) if nones else "",
           " (%s)" % seen if seen else "", more))

