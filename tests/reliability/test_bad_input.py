"""The bad-input matrix: every misuse of the public API and the CLI ends in a GluonQuantError.

Each case sets up its files, snapshots the working directory, performs one bad call and
checks that it raised the package's own exception (a :class:`GluonQuantError` subclass)
whose message names the bad value and says what to do, and that the directory is exactly
as it was: nothing half-written, no temporary file left behind.  Degenerate but valid
inputs (all-zero or constant activations, a net with no convolution or dense layer) must
quantize, with a warning where nothing useful can be done.
"""
import io
import itertools
import json
import os
import tempfile

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import cli
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from conftest import build_cnn, coverage

RS = np.random.RandomState(11)
BATCHES = [RS.rand(8, 1, 28, 28).astype("float32") for _ in range(3)]


# ------------------------------------------------------------------------ models
class TwoInputs(gluon.HybridBlock):
    def __init__(self):
        super().__init__(prefix="two_")
        with self.name_scope():
            self.dense = nn.Dense(4, in_units=3)

    def hybrid_forward(self, F, x, y):
        return self.dense(x + y)


class RaisesInForward(gluon.HybridBlock):
    def hybrid_forward(self, F, x):
        raise RuntimeError("sensor offline")


class PairByArgs(gluon.HybridBlock):
    """Two inputs taken as ``*args``: the signature does not say how many."""

    def hybrid_forward(self, F, x, *args):
        return x + args[0]


class NumpyInForward(gluon.HybridBlock):
    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.dense = nn.Dense(2, in_units=2)

    def hybrid_forward(self, F, x):
        return self.dense(x) * float(x.asnumpy().mean())


class NotHybrid(gluon.Block):
    def forward(self, x):
        return mx.nd.relu(x) * 2


class NoLayers(gluon.HybridBlock):
    """Elementwise maths only: nothing with an int8 kernel."""

    def hybrid_forward(self, F, x):
        return F.tanh(x) * 2 + 1


def _cnn():
    mx.random.seed(5)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    reestimate_batchnorm(net, mx.nd.array(np.concatenate(BATCHES)))
    return net


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Nets, a quantized net, a saved table and an export shared by the cases (read-only)."""
    cnn = _cnn()
    two = TwoInputs()
    two.initialize()
    qnet = gq.quantize(cnn, BATCHES, progress=False)
    other = nn.HybridSequential(prefix="other_")
    other.add(nn.Dense(3, in_units=4))
    other.initialize()
    qother = gq.quantize(other, [np.ones((2, 4), "float32")], progress=False)
    root = tmp_path_factory.mktemp("bad_input_assets")
    qnet.export(str(root / "good"))
    qother.export(str(root / "other"))
    fp32 = _cnn()
    fp32.hybridize()
    fp32(mx.nd.array(BATCHES[0]))
    fp32.export(str(root / "fp32"))
    np.save(root / "calib.npy", np.concatenate(BATCHES))
    return {"cnn": cnn, "two": two, "qnet": qnet, "qother": qother, "root": root}


class Env:
    """What a case sees: the shared models and a fresh, empty working directory."""

    def __init__(self, models, tmp):
        self.__dict__.update(models)
        self.tmp = tmp

    def copy_export(self, name="good", folder="."):
        """Copy an export's three files into the working directory; return the prefix."""
        (self.tmp / folder).mkdir(exist_ok=True)
        for suffix in ("-symbol.json", "-int8.params", "-meta.json"):
            data = (self.root / (name + suffix)).read_bytes()
            (self.tmp / folder / (name + suffix)).write_bytes(data)
        return str(self.tmp / folder / name)

    def save_table(self, name="table.json"):
        path = self.tmp / name
        self.qnet.calibration_table.save(str(path))
        return path


def _listing(root):
    """Every file under ``root`` with its size and content hash (hidden files included)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hash(handle.read())
    return out


# ------------------------------------------------------------------------ the matrix
CASES = []


def case(exc, match):
    """Register a case: ``fn(env)`` prepares files and returns the bad call (no arguments)."""
    def register(fn):
        CASES.append(pytest.param(fn, exc, match, id=fn.__name__[len("case_"):]))
        return fn
    return register


def q(net, data, **kwargs):
    return lambda: gq.quantize(net, data, progress=False, **kwargs)


# --- calibration data ---------------------------------------------------------------
@case(gq.EmptyCalibrationError, r"yielded no batch.*non-empty iterable")
def case_empty_list(env):
    return q(env.cnn, [])


@case(gq.InputMismatchError, r"Input 'x' is empty \(shape \(0, 1, 28, 28\)\).*Drop empty "
                             r"batches")
def case_empty_batch_after_good_ones(env):
    # It reached MXNet: "Cannot find attribute forward_mem_plan", reported as MXNet's own
    # failure ("not a problem with your inputs"); alone, a raw MXNetError from _copyto.
    return q(env.cnn, [BATCHES[0], np.zeros((0, 1, 28, 28), "float32")])


@case(gq.EmptyCalibrationError, r"exhausted.*fresh generator")
def case_exhausted_generator(env):
    gen = (b for b in BATCHES)
    list(gen)
    return q(env.cnn, gen)


@case(gq.EmptyCalibrationError, r"yielded no batch")
def case_exhausted_iterator_of_list(env):
    it = iter(BATCHES)
    list(it)
    return q(env.cnn, it)


@case(gq.CalibrationDataError, r"endless itertools.cycle: calibration would never finish\. "
                                 r"Pass num_calib_batches=N")
def case_endless_cycle(env):
    # It ran forever without a word (and tune() filled the memory).
    return q(env.cnn, itertools.cycle(BATCHES))


@case(gq.CalibrationDataError, r"endless itertools.repeat.*num_calib_batches=N")
def case_endless_repeat_in_tune(env):
    return lambda: gq.tune(env.cnn, itertools.repeat(BATCHES[0]), lambda m: 1.0,
                           tolerance=0.01, progress=False)


@case(gq.ConfigError, r"needs calibration data \(calib_data=.*calib_table=")
def case_no_calibration_data(env):
    return lambda: gq.quantize(env.cnn, progress=False)


@case(gq.CalibrationDataError, r"single ndarray\(8, 1, 28, 28\).*Wrap it in a list")
def case_single_array_instead_of_batches(env):
    return q(env.cnn, BATCHES[0])


@case(gq.CalibrationDataError, r"type int is not iterable.*DataLoader")
def case_not_iterable(env):
    return q(env.cnn, 42)


@case(gq.CalibrationDataError, r"num_calib_batches.*positive int.*got 0")
def case_zero_calib_batches(env):
    return q(env.cnn, BATCHES, num_calib_batches=0)


@case(gq.InputMismatchError, r"NDArray\(8, 28, 28\).*expected shapes")
def case_batch_of_wrong_rank(env):
    return q(env.cnn, [RS.rand(8, 28, 28).astype("float32")])


@case(gq.InputMismatchError, r"NDArray\(1, 28, 28\).*one sample without its batch axis "
                             r"\(the network takes \(1, 1, 28, 28\)\).*DataLoader.*expand_dims")
def case_single_samples_as_batches(env):
    """A list of ``dataset[i]`` images: samples without the batch axis."""
    return q(env.cnn, [image for image in BATCHES[0][:4]])


@case(gq.InputMismatchError, r"NDArray\(4, 3, 28, 28\).*expected shapes")
def case_batch_of_wrong_shape(env):
    return q(env.cnn, [np.zeros((4, 3, 28, 28), "float32")])


@case(gq.InputMismatchError, r"NDArray\(4, 28, 28, 1\).*Input 0, shaped \(4, 28, 28, 1\), "
                             r"looks like channels-last images.*ToTensor\(\).*transpose")
def case_batch_of_channels_last_images(env):
    """An ImageFolderDataset read without ToTensor() yields (N, H, W, C) uint8 images."""
    return q(env.cnn, [RS.randint(0, 255, (4, 28, 28, 1)).astype("uint8")])


@case(gq.InputMismatchError, r"ranks \[3\] but earlier batches had ranks \[4\].*same layout")
def case_batches_of_changing_rank(env):
    return q(env.cnn, [BATCHES[0], BATCHES[1][0]])


@case(gq.InputMismatchError, r"ranks \[1\] but earlier batches had ranks \[4\].*"
                             r"pass \[\(inputs, labels\)\] or a DataLoader")
def case_inputs_and_labels_as_two_whole_arrays(env):
    images = np.concatenate(BATCHES)
    return q(env.cnn, (images, np.zeros(len(images))))


@case(gq.CalibrationDataError, r"Gluon ArrayDataset, which yields single samples.*DataLoader")
def case_a_dataset_of_samples(env):
    return q(env.cnn, mx.gluon.data.ArrayDataset(np.concatenate(BATCHES)))


@case(gq.CalibrationDataError, r"calib_data is a dict \(keys x\), which yields its keys, not "
                               r"batches.*\[data\] to calibrate on it as one batch")
def case_a_dict_of_whole_arrays(env):
    # it said "Cannot read network inputs from a batch of type str" (the dict's keys)
    return q(env.cnn, {"x": np.concatenate(BATCHES)})


@case(gq.CalibrationDataError, r"calib_data is a NpzFile \(keys x\).*dict\(data\) for a .npz")
def case_a_loaded_npz_file(env):
    np.savez(env.tmp / "arrays.npz", x=np.concatenate(BATCHES))
    return q(env.cnn, np.load(env.tmp / "arrays.npz"))


@case(gq.InputMismatchError, r"dtype str32, which is not numeric.*Feed float arrays")
def case_string_dtype(env):
    return q(env.cnn, [np.array([["a"]])])


@case(gq.InputMismatchError, r"dtype complex64, which is not numeric.*Feed float")
def case_complex_dtype(env):
    return q(env.cnn, [np.ones((2, 1, 28, 28), np.complex64)])


@case(gq.InputMismatchError, r"batch of type str.*NDArray, a numpy array")
def case_batch_is_a_string(env):
    return q(env.cnn, ["images/cat.jpg"])


@case(gq.InputMismatchError, r"single array.*takes 2 inputs \(x, y\).*tuples of 2")
def case_arity_single_array_for_two_inputs(env):
    return q(env.two, [np.ones((2, 3), "float32")])


@case(gq.InputMismatchError, r"has 1 element.*takes 2 input\(s\).*at least 2")
def case_arity_tuple_too_short(env):
    return q(env.two, [(np.ones((2, 3), "float32"),)])


@case(gq.InputMismatchError, r"no entry for input 'y'.*Key the dict")
def case_dict_missing_input(env):
    return q(env.two, [{"x": np.ones((2, 3), "float32"), "label": 1}])


@case(gq.NonFiniteDataError, r"Tensor 'data' holds 1 NaN/Inf.*Clean the calibration data")
def case_nan_in_data(env):
    bad = [b.copy() for b in BATCHES]
    bad[1][0, 0, 5, 5] = np.nan
    return q(env.cnn, bad)


@case(gq.NonFiniteDataError, r"Tensor 'data' holds 2 NaN/Inf.*Clean")
def case_inf_in_data(env):
    bad = [b.copy() for b in BATCHES]
    bad[0][0, 0, 0, 0] = np.inf
    bad[0][1, 0, 0, 0] = -np.inf
    return q(env.cnn, bad)


@case(gq.NonFiniteDataError, r"_output' holds 0 NaN and \d+ Inf.*finite data")
def case_overflow_inside_the_net(env):
    # Finite data that overflows float32 in the first layer: the activation is Inf.
    return q(env.cnn, [np.full((2, 1, 28, 28), 3e38, "float32")])


@case(gq.EmptyCalibrationError, r"MinMaxCalibrator has no statistics.*collect\(name, array\)")
def case_calibrator_that_saw_nothing(env):
    return gq.MinMaxCalibrator().compute


@case(gq.InputMismatchError, r"input_fn raised ZeroDivisionError")
def case_input_fn_raises(env):
    return q(env.cnn, BATCHES, input_fn=lambda batch: 1 / 0)


@case(gq.InputMismatchError, r"input_fn must be callable, got 3")
def case_input_fn_not_callable(env):
    return q(env.cnn, BATCHES, input_fn=3)


@case(gq.InputMismatchError, r"num_inputs must be a positive int, got 0")
def case_zero_inputs(env):
    return q(env.cnn, BATCHES, num_inputs=0)


# --- names and settings --------------------------------------------------------------
@case(gq.UnknownNameError, r"dtype 'int4'.*'int8'.*'uint8'")
def case_unknown_dtype(env):
    return q(env.cnn, BATCHES, dtype="int4")


@case(gq.UnknownNameError, r"backend 'tensorrt'.*'onednn'")
def case_unknown_backend(env):
    return q(env.cnn, BATCHES, backend="tensorrt")


@case(gq.UnknownNameError, r"'entropyy'.*Did you mean 'entropy'")
def case_unknown_calibrator(env):
    return q(env.cnn, BATCHES, calibrator="entropyy")


@case(gq.ConfigError, r"Calibrator subclass or instance, got <class 'dict'>")
def case_calibrator_of_wrong_type(env):
    return q(env.cnn, BATCHES, calibrator=dict)


@case(gq.ConfigError, r"PercentileCalibrator has no option 'pct'.*'percentile'")
def case_unknown_calibrator_option(env):
    return lambda: gq.get_calibrator("percentile", pct=99.9)


@case(gq.UnknownNameError, r"granularity 'row'.*'channel'")
def case_unknown_granularity(env):
    return q(env.cnn, BATCHES, granularity="row")


@case(gq.UnknownNameError, r"preset 'resnett'.*Valid presets")
def case_unknown_preset(env):
    return q(env.cnn, BATCHES, preset="resnett")


@case(gq.ConfigError, r"exclude must be a list.*got 3")
def case_exclude_of_wrong_type(env):
    return q(env.cnn, BATCHES, exclude=3)


@case(gq.ConfigError, r"granularity='channel'.*cuDNN.*granularity='tensor'")
def case_channel_wise_with_cudnn(env):
    return q(env.cnn, BATCHES, backend="cudnn", granularity="channel-wise")


@case(gq.UnsupportedDtypeError, r"dtype='uint8' cannot represent.*dtype='auto'")
def case_uint8_for_signed_tensors(env):
    # The first conv sees [-1, 1) inputs: uint8 would clip them.
    return q(env.cnn, [b * 2 - 1 for b in BATCHES], dtype="uint8")


# --- the network -----------------------------------------------------------------------
@case(gq.NotHybridizableError, r"NotHybrid could not be traced.*plain gluon.Block.*HybridBlock")
def case_non_hybridizable_block(env):
    return q(NotHybrid(), [np.ones((1, 2), "float32")])


@case(gq.NotHybridizableError, r"NumpyInForward could not be traced.*only uses F\.\*")
def case_numpy_inside_hybrid_forward(env):
    net = NumpyInForward()
    net.initialize()
    return q(net, [np.ones((1, 2), "float32")])


@case(gq.NotHybridizableError, r"RaisesInForward.*RuntimeError: sensor offline")
def case_forward_raises(env):
    return q(RaisesInForward(), [np.ones((1, 2), "float32")])


@case(gq.NotHybridizableError, r"TwoInputs could not be traced.*nest their arrays \(Gluon's "
                               r"format \[\[0, 0\], 0\]\).*\(inputs, label\).*input_fn=lambda batch")
def case_inputs_grouped_before_the_label(env):
    # ((x, y), label), as a dataset of (inputs, label) yields it: read as net((x, y), label)
    pair = (np.ones((2, 3), "float32"), np.ones((2, 3), "float32"))
    return q(env.two, [(pair, np.zeros(2, "float32"))])


@case(gq.NotHybridizableError, r"PairByArgs.hybrid_forward takes \*args.*traced with 1\. If it "
                               r"takes more, pass num_inputs=")
def case_inputs_taken_as_var_args(env):
    pair = (np.ones((1, 2), "float32"), np.ones((1, 2), "float32"))
    return q(PairByArgs(), [pair])


@case(gq.InputMismatchError, r"Calibration forward pass failed.*ndarray|NDArray")
def case_forward_fails_at_run_time(env):
    net = nn.HybridSequential()
    net.add(nn.Dense(3, in_units=7))
    net.initialize()
    return q(net, [np.ones((2, 5), "float32")])


@case(gq.GraphError, r"not initialized.*Initialize the net")
def case_uninitialized_net_without_data(env):
    net = nn.HybridSequential()
    net.add(nn.Dense(3))
    net.initialize()
    return lambda: gq.quantize(net, calib_table=env.qother.calibration_table.with_fingerprint(
        None), progress=False)


# --- calibration tables ----------------------------------------------------------------
@case(gq.CalibrationTableError, r"Expected a CalibrationTable or the path of a saved one "
                                r"\(CalibrationTable.save\), got dict")
def case_table_of_wrong_type(env):
    return lambda: gq.quantize(env.cnn, calib_table={"data": (0, 1)}, progress=False)


@case(gq.CalibrationTableError, r"another graph.*Calibrate this network")
def case_table_from_another_model(env):
    return lambda: gq.quantize(env.cnn, calib_table=env.qother.calibration_table,
                               progress=False)


@case(gq.CalibrationTableError, r"no range for 1 tensor.*Recalibrate")
def case_table_missing_a_tensor(env):
    table = env.qnet.calibration_table
    first = next(iter(table))
    partial = gq.CalibrationTable({k: v for k, v in table.items() if k != first},
                                  method=table.method, fingerprint=table.fingerprint)
    return lambda: gq.quantize(env.cnn, calib_table=partial, progress=False)


@case(gq.ArtifactError, r"Cannot write the calibration table.*No such file")
def case_table_save_into_missing_dir(env):
    return lambda: env.qnet.calibration_table.save(str(env.tmp / "missing" / "t.json"))


@case(gq.ArtifactError, r"Cannot write the calibration table.*Not a directory")
def case_table_save_under_a_file(env):
    (env.tmp / "afile").write_text("x")
    return lambda: env.qnet.calibration_table.save(str(env.tmp / "afile" / "t.json"))


@case(gq.ArtifactError, r"Cannot read the calibration table.*No such file")
def case_table_load_missing(env):
    return lambda: gq.CalibrationTable.load(str(env.tmp / "absent.json"))


@case(gq.CalibrationTableError, r"table.json' is not a valid calibration table \(truncated")
def case_table_load_truncated(env):
    path = env.save_table()
    path.write_bytes(path.read_bytes()[:-40])
    return lambda: gq.CalibrationTable.load(str(path))


@case(gq.CalibrationTableError, r"format version 2.0, newer.*upgrade gluon_quant")
def case_table_load_newer_format(env):
    path = env.save_table()
    state = json.loads(path.read_text())
    state["version"] = "2.0"
    path.write_text(json.dumps(state))
    return lambda: gq.CalibrationTable.load(str(path))


@case(gq.CalibrationTableError, r"must be finite with lo < hi, got \(5.0, -5.0\)")
def case_table_load_altered_range(env):
    path = env.save_table()
    state = json.loads(path.read_text())
    state["ranges"][next(iter(state["ranges"]))] = [5.0, -5.0]
    path.write_text(json.dumps(state))
    return lambda: gq.CalibrationTable.load(str(path))


@case(gq.CalibrationTableError, r"Not a gluon_quant calibration table")
def case_table_load_other_json(env):
    path = env.tmp / "table.json"
    path.write_text(json.dumps({"data": [0, 1]}))
    return lambda: gq.CalibrationTable.load(str(path))


# --- inference on the quantized net ----------------------------------------------------
@case(gq.InputMismatchError, r"NDArray\(2, 3, 28, 28\).*Shape inconsistent.*rank and per-sample")
def case_inference_wrong_shape(env):
    return lambda: env.qnet(mx.nd.ones((2, 3, 28, 28)))


@case(gq.InputMismatchError, r"NDArray\(2, 28, 28\).*4D.*rank and per-sample")
def case_inference_wrong_rank(env):
    return lambda: env.qnet(mx.nd.ones((2, 28, 28)))


@case(gq.InputMismatchError, r"ndarray\(2, 3, 28, 28\).*Pass 1 mx.nd.NDArray.*\(8, 1, 28, 28\)")
def case_inference_numpy_input_of_another_shape(env):
    """numpy arrays run (as float32 NDArrays); one of the wrong shape is named as given."""
    return lambda: env.qnet(np.ones((2, 3, 28, 28), "float32"))


@case(gq.InputMismatchError, r"list of 2 .*Pass 1 mx.nd.NDArray input\(s\) \(x\).*built to "
                             r"take 1 input\(s\).*read as labels: to feed 2, quantize it with "
                             r"num_inputs=2")
def case_inference_too_many_inputs(env):
    return lambda: env.qnet(mx.nd.ones((2, 1, 28, 28)), mx.nd.ones((2, 1, 28, 28)))


@case(gq.InputMismatchError, r"list of 2 .*Invalid input format.*Pass 1 mx.nd.NDArray "
                             r"input\(s\) \(x\)")
def case_first_call_with_too_many_inputs(env):
    # A net left all fp32 (too small for int8 to pay) builds its graph on the first call,
    # where MXNet's SymbolBlock asserted on the input format: a bare AssertionError.
    net = nn.HybridSequential()
    net.add(nn.Dense(8))
    net.initialize()
    qnet = gq.quantize(net, [RS.rand(2, 4).astype("float32")], progress=False)
    return lambda: qnet(mx.nd.ones((2, 4)), mx.nd.ones((2, 4)))


@case(gq.GraphError, r"not built yet.*calibrate\(\) and finalize\(\)")
def case_inference_before_finalize(env):
    block = gq.QuantizedHybridBlock(env.cnn, progress=False)
    return lambda: block(mx.nd.ones((2, 1, 28, 28)))


# --- export and import -----------------------------------------------------------------
@case(gq.ArtifactError, r"Cannot write the export.*directory exists and is writable")
def case_export_into_missing_dir(env):
    return lambda: env.qnet.export(str(env.tmp / "no" / "such" / "dir" / "m"))


@case(gq.ArtifactError, r"Cannot write the export.*Permission denied.*writable")
def case_export_into_read_only_dir(env):
    # Root ignores directory permissions, so the read-only directory is simulated where
    # the OS would refuse: creating the temporary file.
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if kwargs.get("dir") == str(env.tmp):
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    def call():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempfile, "mkstemp", refuse)
            env.qnet.export(str(env.tmp / "m"))
    return call


@case(gq.ArtifactError, r"scratch file in the temporary directory.*Read-only.*writable")
def case_export_with_read_only_system_temp(env):
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if kwargs.get("dir") is None:
            raise OSError(30, "Read-only file system")
        return real_mkstemp(*args, **kwargs)

    def call():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempfile, "mkstemp", refuse)
            env.qnet.export(str(env.tmp / "m"))
    return call


@case(gq.ArtifactError, r"Cannot write the export.*No space left")
def case_export_disk_full_on_last_file(env):
    # The first two files are already renamed into place when the third fails: the export
    # must remove them again and leave the previous export untouched.
    prefix = env.copy_export()
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("-meta.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    def call():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "replace", replace)
            env.qnet.export(prefix + "-new")
    return call


@case(gq.GraphError, r"Nothing to export.*quantize\(\)")
def case_export_before_quantizing(env):
    block = gq.QuantizedHybridBlock(env.cnn, progress=False)
    return lambda: block.export(str(env.tmp / "m"))


@case(gq.UnknownNameError, r"export format 'onnx'.*'mxnet'")
def case_export_unknown_format(env):
    return lambda: env.qnet.export(str(env.tmp / "m"), fmt="onnx")


@case(gq.ArtifactError, r"Cannot read the metadata file.*Check the path")
def case_import_missing_prefix(env):
    return lambda: gq.QuantizedSymbolBlock.imports(str(env.tmp / "nothing"))


@case(gq.ArtifactError, r"params file .* has \d+ bytes, the export wrote \d+.*truncated")
def case_import_truncated_params(env):
    prefix = env.copy_export()
    path = prefix + "-int8.params"
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    return lambda: gq.QuantizedSymbolBlock.imports(prefix)


@case(gq.ArtifactError, r"params file .* does not match its sha256.*altered")
def case_import_flipped_byte_in_params(env):
    prefix = env.copy_export()
    path = prefix + "-int8.params"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    return lambda: gq.QuantizedSymbolBlock.imports(prefix)


@case(gq.ArtifactError, r"symbol file .* does not match its sha256")
def case_import_edited_symbol(env):
    prefix = env.copy_export()
    path = prefix + "-symbol.json"
    text = open(path).read().replace('"relu"', '"tanh"', 1)
    open(path, "w").write(text)
    return lambda: gq.QuantizedSymbolBlock.imports(prefix)


@case(gq.ArtifactError, r"format version 9.0, newer.*upgrade gluon_quant")
def case_import_newer_format(env):
    prefix = env.copy_export()
    meta = json.load(open(prefix + "-meta.json"))
    meta["version"] = "9.0"
    json.dump(meta, open(prefix + "-meta.json", "w"))
    return lambda: gq.QuantizedSymbolBlock.imports(prefix)


@case(gq.ArtifactError, r"metadata file .* not valid JSON.*Export the model again")
def case_import_truncated_metadata(env):
    prefix = env.copy_export()
    data = open(prefix + "-meta.json", "rb").read()
    open(prefix + "-meta.json", "wb").write(data[:len(data) // 3])
    return lambda: gq.QuantizedSymbolBlock.imports(prefix)


@case(gq.ArtifactError, r"(sha256|bytes).*(another export|replaced)")
def case_import_params_swapped_from_another_export(env):
    prefix = env.copy_export()
    other = env.copy_export("other")
    os.replace(other + "-int8.params", prefix + "-int8.params")
    return lambda: gq.QuantizedSymbolBlock.imports(prefix)


@case(gq.ArtifactError, r"Cannot read the parameters file .*-0000\.params': .*Invalid NDArray file")
def case_cli_model_with_garbage_params(env):
    from gluon_quant import cli_models
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.ones((1, 3, 32, 32)))
    net.export(str(env.tmp / "pair"))
    open(str(env.tmp / "pair-0000.params"), "wb").write(b"not an NDArray file" * 4)
    return lambda: cli_models.load_model(str(env.tmp / "pair"))


@case(gq.ArtifactError, r"Cannot read the symbol file .*-symbol\.json': .*Expect")
def case_cli_model_with_garbage_symbol(env):
    from gluon_quant import cli_models
    open(str(env.tmp / "junk-symbol.json"), "w").write('{"nodes": 5}')
    open(str(env.tmp / "junk-0000.params"), "wb").write(b"")
    return lambda: cli_models.load_model(str(env.tmp / "junk"))


# --- the network and where it runs ---------------------------------------------------------
@case(gq.UnsupportedDtypeError, r"parameters must be float32.*float16.*net.cast\('float32'\)")
def case_float16_network(env):
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    net(mx.nd.array(BATCHES[0]))
    net.cast("float16")
    return q(net, [b.astype("float16") for b in BATCHES])


@case(gq.UnsupportedDtypeError, r"parameters must be float32.*: bfloat16.*Quantize the float32 "
                                r"network it was converted from.*cast_optional_params=False")
def case_bfloat16_amp_network(env):
    """MXNet's bfloat16 is a NumPy record, not a float: the AMP net's weights passed the
    float32 check and MXNet's type error was blamed on the batches' shapes."""
    from mxnet.contrib import amp
    net = _cnn()
    net.hybridize()
    net(mx.nd.array(BATCHES[0]))
    amp_net = amp.convert_hybrid_block(net, target_dtype="bfloat16", ctx=mx.cpu(),
                                       cast_optional_params=True)
    return q(amp_net, BATCHES)


@case(gq.ConfigError, r"2 parameter\(s\) of the network were never initialized \(\w+_bias, "
                     r"\w+_weight\): call net.initialize\(\) or net.load_parameters")
def case_layer_never_initialized(env):
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    net.add(mx.gluon.nn.Dense(4))    # added after initialize(), as when a head is swapped
    return q(net, BATCHES)


@case(gq.ConfigError, r"ctx=gpu\(0\), but this MXNet sees 0 GPU.*ctx=mx.cpu\(\)")
def case_gpu_context_without_gpu(env):
    if mx.context.num_gpus():
        pytest.skip("this machine has a GPU")
    return q(env.cnn, BATCHES, ctx=mx.gpu(0))


@case(gq.ConfigError, r"ctx must be an mxnet.Context.*got 'cpu'")
def case_context_as_a_string(env):
    return q(env.cnn, BATCHES, ctx="cpu")


@case(gq.NotPicklableError, r"QuantizedHybridBlock cannot be pickled.*export\(prefix\)")
def case_pickled_int8_block(env):
    import pickle
    return lambda: pickle.dumps(env.qnet)


@case(gq.NotPicklableError, r"QuantizedSymbolBlock cannot be pickled.*deep-copied")
def case_deep_copied_loaded_block(env):
    import copy
    prefix = env.copy_export()
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    return lambda: copy.deepcopy(loaded)


@case(gq.ConfigError, r"QuantizedHybridBlock cannot save or load Gluon's parameter or model "
                     r"files \('.*q\.params'\).*fp32 weights the int8 graph ignores.*export\(prefix\)")
def case_int8_block_saved_as_parameters(env):
    # Gluon's own save_parameters wrote the fp32 weights (43 KB for 13 KB of int8), which
    # load_parameters then put where the int8 graph never reads them.
    return lambda: env.qnet.save_parameters(str(env.tmp / "q.params"))


@case(gq.ConfigError, r"QuantizedSymbolBlock cannot save or load Gluon's parameter or model "
                     r"files.*imports\(prefix\).*quantize again")
def case_loaded_block_given_parameters(env):
    prefix = env.copy_export()
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    return lambda: loaded.load_parameters(prefix + "-int8.params")


@case(gq.ConfigError, r"QuantizedHybridBlock cannot save or load Gluon's parameter or model "
                     r"files \('.*saved'\).*export\(prefix\)")
def case_int8_block_saved_as_gluon_model(env):
    # Gluon's Block.save wrote saved-model.json, then failed in save_parameters: half-written.
    return lambda: env.qnet.save(str(env.tmp / "saved"))


@case(gq.ConfigError, r"QuantizedSymbolBlock cannot save or load Gluon's parameter or model "
                     r"files \('.*'\).*QuantizedSymbolBlock.imports\(prefix\)")
def case_export_loaded_with_gluon_load(env):
    # Called on the class, Gluon's instance method Block.load was a TypeError about 'prefix'.
    prefix = env.copy_export()
    return lambda: gq.QuantizedSymbolBlock.load(prefix)


@case(gq.ConfigError, r"holds an int8 block \(net.backbone, a QuantizedHybridBlock\).*qnet.net")
def case_int8_block_inside_the_network(env):
    # An int8 backbone under a new head: tracing it raised MXNet's ValueError "There are
    # multiple outputs with name ..."
    class WithHead(gluon.HybridBlock):
        def __init__(self, backbone):
            super().__init__()
            with self.name_scope():
                self.backbone, self.head = backbone, nn.Dense(2, in_units=10)

        def hybrid_forward(self, F, x):
            return self.head(self.backbone(x))

    net = WithHead(env.qnet)
    net.head.initialize()
    return q(net, BATCHES)


@case(gq.ArtifactError, r"Cannot write the calibration table '.*': it names a folder\. Give a "
                        r"file path \(e\.g\. '.*/name\.json'\)")
def case_table_saved_to_a_folder(env):
    # It said "Not a directory" about the folder itself
    return lambda: env.qnet.calibration_table.save(str(env.tmp) + os.sep)


@case(gq.ConfigError, r"export prefix '.*/' names a folder, not files.*e.g. '.*/model'")
def case_export_prefix_naming_a_folder(env):
    # It wrote the hidden files 'DIR/-symbol.json', 'DIR/-int8.params', 'DIR/-meta.json'
    return lambda: env.qnet.export(str(env.tmp) + os.sep)


@case(gq.ConfigError, r"already an int8 QuantizedHybridBlock.*qnet.net")
def case_quantizing_an_int8_block(env):
    return q(env.qnet, BATCHES)


@case(gq.ConfigError, r"already an int8 QuantizedSymbolBlock")
def case_quantizing_a_loaded_int8_block(env):
    loaded = gq.QuantizedSymbolBlock.imports(env.copy_export())
    return q(loaded, BATCHES)


def _plain_int8_block(env):
    """The int8 net as a plain Gluon SymbolBlock (an fmt='mxnet' export loaded with Gluon)."""
    prefix = str(env.tmp / "plain")
    env.qnet.export(prefix, fmt="mxnet")
    return gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params")


@case(gq.ConfigError, r"The network is a SymbolBlock over a graph that is int8 already \(it has "
                     r"MXNet's _contrib_quantize_v2, .*quantize_net.*fp32 network it came from")
def case_quantizing_an_int8_mxnet_export(env):
    # It "quantized": every layer reported int8 'reading uint8 tensors', nothing changed.
    return q(_plain_int8_block(env), BATCHES)


class _Wrapped(gluon.HybridBlock):
    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = nn.Dense(3)

    def hybrid_forward(self, F, x):     # pylint: disable=arguments-differ
        return self.head(self.backbone(x))


@case(gq.ConfigError, r"The net.backbone is a SymbolBlock over a graph that is int8 already")
def case_int8_symbol_block_inside_a_net(env):
    net = _Wrapped(_plain_int8_block(env))
    net.head.initialize()
    return q(net, BATCHES)


@case(gq.ConfigError, r"QuantizedHybridBlock.cast\('float16'\): an int8 network cannot be cast")
def case_casting_an_int8_block(env):
    env.qnet.cast("float32")        # nothing to do: not an error
    return lambda: env.qnet.cast("float16")


# --- the command line --------------------------------------------------------------------
def cli_case(fragment, *argv):
    """A CLI case: exit code 1 and one stderr line containing ``fragment`` (checked below)."""
    def make(env):
        args = [a.format(w=env.root, t=env.tmp) for a in argv]
        return lambda: _run_cli(args, fragment)
    return make


class CliFailed(gq.GluonQuantError):
    """Stands for 'the CLI exited 1 with the expected one-line message' in the matrix."""


def _run_cli(args, fragment):
    import contextlib
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(args + ["--quiet"], stdout=out)
    lines = err.getvalue().strip().splitlines()
    assert code == cli.EXIT_ERROR, (code, err.getvalue())
    assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    raise CliFailed(lines[0])


def _register_cli(name, fragment, *argv):
    fn = cli_case(fragment, *argv)
    CASES.append(pytest.param(fn, CliFailed, fragment, id="cli_" + name))


_register_cli("nan_in_npy", r"NaN/Inf", "quantize", "{w}/fp32", "--calib", "{t}/nan.npy",
              "--out", "{t}/out/m")
_register_cli("empty_npy", r"holds no sample", "quantize", "{w}/fp32", "--calib",
              "{t}/empty.npy", "--out", "{t}/out/m")
_register_cli("wrong_shape_npy", r"shapes|shape", "quantize", "{w}/fp32", "--calib",
              "{t}/wrong.npy", "--out", "{t}/out/m")
_register_cli("pickled_npy", r"calib|pickle|npy", "quantize", "{w}/fp32", "--calib",
              "{t}/object.npy", "--out", "{t}/out/m")
_register_cli("unknown_preset", r"Unknown preset 'nope'", "quantize", "{w}/fp32", "--calib",
              "{w}/calib.npy", "--out", "{t}/out/m", "--preset", "nope")
_register_cli("unknown_model", r"Unknown|not", "quantize", "resnet18_v11", "--calib",
              "{w}/calib.npy", "--out", "{t}/out/m")
_register_cli("out_dir_is_a_file", r"Cannot write|writ", "quantize", "{w}/fp32", "--calib",
              "{w}/calib.npy", "--out", "{t}/afile/m")
_register_cli("report_of_truncated_export", r"metadata|report|truncated|valid", "report",
              "{t}/trunc/good")


def _prepare_cli_files(env):
    data = np.concatenate(BATCHES)
    bad = data.copy()
    bad[3, 0, 1, 1] = np.nan
    np.save(env.tmp / "nan.npy", bad)
    np.save(env.tmp / "empty.npy", data[:0])
    np.save(env.tmp / "wrong.npy", RS.rand(4, 3, 9, 9).astype("float32"))
    np.save(env.tmp / "object.npy", np.array([{"a": 1}, None], dtype=object),
            allow_pickle=True)
    (env.tmp / "afile").write_text("not a directory")
    prefix = env.copy_export(folder="trunc")
    data = open(prefix + "-meta.json", "rb").read()
    open(prefix + "-meta.json", "wb").write(data[:50])


# ------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("make, exc, match", CASES)
def test_bad_input_raises_package_error_and_leaves_nothing(models, tmp_path, make, exc, match):
    env = Env(models, tmp_path)
    if make.__name__ == "make":          # CLI cases
        _prepare_cli_files(env)
    call = make(env)
    before = _listing(tmp_path)
    with pytest.raises(exc, match=match) as info:
        call()
    assert isinstance(info.value, gq.GluonQuantError)
    assert _listing(tmp_path) == before, "files were added, changed or left half-written"
    # The process is alive and the library still works after the error.
    assert env.qnet(mx.nd.array(BATCHES[0][:2])).shape == (2, 10)


def test_matrix_has_enough_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("kind", ["zeros", "constant", "constant_negative"])
def test_all_zero_and_constant_activations_quantize_with_sane_ranges(kind):
    """Degenerate activations give finite, non-empty ranges and outputs close to fp32."""
    net = _cnn()
    value = {"zeros": 0.0, "constant": 3.0, "constant_negative": -2.0}[kind]
    data = [np.full((4, 1, 28, 28), value, "float32") for _ in range(2)]
    x = mx.nd.array(data[0])
    ref = net(x).asnumpy()
    exact = None
    # min-max keeps every value in range (error: rounding only); the histogram methods may
    # clip the rare values of these few-valued distributions a little, never collapse them.
    for calibrator, tolerance in (("minmax", 0.02), ("entropy", 0.1), ("percentile", 0.1),
                                  ("mse", 0.1)):
        qnet = gq.quantize(net, data, calibrator=calibrator, progress=False)
        table = qnet.calibration_table
        exact = exact or table
        for name, (lo, hi) in table.items():
            assert np.isfinite(lo) and np.isfinite(hi) and lo < hi, (calibrator, name, lo, hi)
            assert hi - lo >= 0.5 * (exact[name][1] - exact[name][0]), (calibrator, name)
        out = qnet(x).asnumpy()
        assert np.isfinite(out).all()
        # Every sample is identical, so every output row is too; and close to fp32.
        assert np.abs(out - out[0]).max() == 0
        assert np.abs(out - ref).max() <= tolerance * max(1.0, np.abs(ref).max()), calibrator


def test_net_without_conv_or_dense_runs_in_fp32_and_warns(caplog):
    net = NoLayers()
    net.initialize()
    x = RS.rand(4, 5).astype("float32")
    qnet = gq.quantize(net, [x], progress=False)
    assert "No layer of NoLayers runs in int8" in caplog.text
    xs = mx.nd.array(x)
    # the fp32 graph, its tanh on oneDNN's kernel (within an ulp of MXNet's operator)
    np.testing.assert_allclose(qnet(xs).asnumpy(), net(xs).asnumpy(), rtol=2e-7, atol=0)
    assert coverage(qnet.report()) == (0, 0)


def test_exclude_name_that_matches_nothing_warns_with_close_names(caplog):
    net = _cnn()
    gq.quantize(net, BATCHES, exclude=["cnn_conv9"], progress=False)
    assert "'cnn_conv9' matched no layer" in caplog.text
    assert "Did you mean" in caplog.text


def test_single_samples_get_the_batch_axis_hint_and_mxnet_prints_nothing(capfd):
    """A dense net, never run, given rank-1 samples: the hint names the shape it takes, and
    MXNet's "infer_shape error. Arguments: ..." (printed by Gluon's deferred shape inference
    while gluon_quant runs the net to tell whose fault a failure is) reaches no terminal."""
    net = nn.HybridSequential()
    net.add(nn.Dense(16, activation="relu"), nn.Dense(3))
    net.initialize()
    net(mx.nd.zeros((2, 20)))
    with pytest.raises(gq.InputMismatchError, match=r"NDArray\(20,\).*one sample without its "
                                                    r"batch axis \(the network takes \(1, 20\)\)"):
        gq.quantize(net, [RS.rand(20).astype("float32") for _ in range(2)], progress=False)
    fresh = nn.HybridSequential()
    fresh.add(nn.Conv2D(4, 3), nn.Dense(3))
    fresh.initialize()
    with pytest.raises(gq.InputMismatchError, match=r"takes \(1, 1, 28, 28\)"):
        gq.quantize(fresh, [image for image in BATCHES[0][:2]], progress=False)
    out, err = capfd.readouterr()
    assert "infer_shape error" not in out + err
