"""calibrate_parallel on worker processes (the no-Ray engine): shards merge to exactly one
pass.  The Ray engine is tested in test_ray.py."""
import threading

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq


def _single_pass(net, batches, calibrator="entropy"):
    return gq.QuantizedHybridBlock(net, calibrator=calibrator, progress=False).calibrate(batches)


def test_two_workers_equal_one_pass_and_feed_quantize(tiny_cnn, tiny_batches):
    single = _single_pass(tiny_cnn, tiny_batches)
    # More shards than workers, uneven, one empty and out of order: same thresholds.
    # NDArray batches too: Gluon's pickling hands NDArrays to worker processes as
    # shared-memory file descriptors, which spawn refused ("bad value(s) in fds_to_keep").
    shards = [[mx.nd.array(b) for b in tiny_batches[2:]], [], tiny_batches[:1],
              [mx.nd.array(tiny_batches[1])]]
    table = gq.calibrate_parallel(tiny_cnn, shards, workers=2, calibrator="entropy",
                                  engine="process", progress=False)
    assert len(single) >= 5
    assert dict(table) == dict(single)
    assert table.fingerprint == single.fingerprint
    assert table.method == single.method
    x = mx.nd.array(np.concatenate(tiny_batches))
    from_table = gq.quantize(tiny_cnn, calib_table=table, progress=False)(x).asnumpy()
    # Ranges only: bias corrections need calibration samples, which the parent of
    # calibrate_parallel does not hold.
    from_data = gq.quantize(tiny_cnn, tiny_batches, calibrator="entropy",
                            bias_correction=False, progress=False)(x).asnumpy()
    np.testing.assert_array_equal(from_table, from_data)
    # Data beside the table: its first 32 samples measure the corrections, and the model
    # is the one pass's (the data was ignored: the corrections were left out).
    with_data = gq.quantize(tiny_cnn, tiny_batches, calib_table=table, progress=False)
    # its ranges are entropy's: the report said the calibrator setting's default, mse
    assert "calibrator=entropy" in repr(with_data) and "calibrator=entropy" in str(
        with_data.report()).splitlines()[0]
    one_pass = gq.quantize(tiny_cnn, tiny_batches, calibrator="entropy", progress=False)
    np.testing.assert_array_equal(with_data(x).asnumpy(), one_pass(x).asnumpy())
    assert not np.array_equal(with_data(x).asnumpy(), from_table)
    # The same samples one at a time: planned at the table's shapes, the same model.
    singles = [b[i:i + 1] for b in tiny_batches for i in range(len(b))]
    one_by_one = gq.quantize(tiny_cnn, singles, calib_table=table, progress=False)
    np.testing.assert_array_equal(one_by_one(x).asnumpy(), one_pass(x).asnumpy())
    assert one_by_one.fused.input_shapes == ((8, 1, 28, 28),)


def test_worker_errors_come_back_as_package_errors(tiny_cnn, tiny_batches):
    qnet = gq.QuantizedHybridBlock(tiny_cnn, calibrator="minmax", progress=False)
    bad = [np.zeros((8, 3, 28, 28), np.float32)]
    with pytest.raises(gq.InputMismatchError,
                       match=r"Shard 1: .*\(8, 3, 28, 28\).*process engine"):
        gq.calibrate_parallel(qnet, [tiny_batches[:1], bad], workers=1, engine="process",
                              progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"workers": 0}, "workers must be a positive int, got 0"),
    ({"start_method": "threads"}, "start_method must be one of .*'threads'"),
    ({"engine": "dask"}, "engine must be one of 'auto', 'ray', 'process', got 'dask'"),
    ({"address": "auto"}, "address='auto' is a Ray cluster address"),
])
def test_bad_settings(tiny_cnn, tiny_batches, kwargs, match):
    with pytest.raises(gq.ConfigError, match=match):
        gq.calibrate_parallel(tiny_cnn, [tiny_batches], progress=False,
                              **dict({"engine": "process"}, **kwargs))


def test_settings_of_a_plain_net_decide_what_is_calibrated(tiny_cnn, tiny_batches):
    """calibrate_parallel(net, shards, exclude=[...]) was a TypeError (settings went
    through a QuantizedHybridBlock only): it takes quantize()'s settings, and the table
    is the one pass's with them; a block given settings too is refused before any
    worker starts, as is a bad setting."""
    settings = {"exclude": ["Convolution"], "calibrator": "minmax"}
    single = gq.QuantizedHybridBlock(tiny_cnn, progress=False, **settings).calibrate(
        tiny_batches)
    table = gq.calibrate_parallel(tiny_cnn, [tiny_batches[:2], tiny_batches[2:]], workers=1,
                                  engine="process", progress=False, **settings)
    assert dict(table) == dict(single) and table.method == "minmax"
    assert len(table) < len(_single_pass(tiny_cnn, tiny_batches, "minmax"))
    qnet = gq.quantize(tiny_cnn, calib_table=table, progress=False)   # the table's settings
    assert not [r for r in qnet.report() if r.op == "Convolution" and r.quantized]
    block = gq.QuantizedHybridBlock(tiny_cnn, progress=False)
    with pytest.raises(gq.ConfigError, match=r"calibrates with qnet's own settings; got "
                                             r"exclude as well.*qnet.clone\(exclude=...\)"):
        gq.calibrate_parallel(block, [tiny_batches], engine="process", exclude=["Pooling"])
    with pytest.raises(gq.ConfigError, match=r"Unknown setting\(s\) 'excluded'"):
        gq.calibrate_parallel(tiny_cnn, [tiny_batches], engine="process", excluded=["x"])


def test_all_shards_empty(tiny_cnn):
    with pytest.raises(gq.EmptyCalibrationError, match="Every shard was empty"):
        gq.calibrate_parallel(tiny_cnn, [[], []], workers=1, engine="process",
                              progress=False)


def test_iterator_shards_are_refused_before_any_worker_starts(tiny_cnn, tiny_batches):
    shards = [iter(tiny_batches[:2]), (b for b in tiny_batches[2:])]
    for engine in ("process", "ray"):
        with pytest.raises(gq.ConfigError, match=r"shard 0 is list_iterator, an iterator.*"
                                                 r"list of batches"):
            gq.calibrate_parallel(tiny_cnn, shards, engine=engine, progress=False)


def test_dataloader_shards_on_a_deferred_shape_net(tiny_batches, caplog):
    """DataLoader shards, as Gluon users batch data: the first batch is taken from the
    first shard to initialize a net with deferred shapes (only a list shard's was, and
    this net was refused as uninitialized). A DataLoader with worker processes of its own
    cannot be pickled (its pool): it is read here with a warning, and the thresholds are
    the same (the queue's feeder thread printed a traceback and the call waited for
    ever). A batch that cannot be pickled is refused, naming the shard."""
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(6, 3, activation="relu"), mx.gluon.nn.Dense(4))
    net.initialize(mx.init.Xavier())                    # in_channels / in_units deferred
    data = mx.gluon.data.ArrayDataset(np.concatenate(tiny_batches))
    size = len(tiny_batches[0])
    single = dict(_single_pass(net, tiny_batches, calibrator="minmax"))
    for workers in (0, 2):
        shards = [mx.gluon.data.DataLoader(data, batch_size=size, num_workers=workers)]
        with caplog.at_level("WARNING", logger="gluon_quant"):
            table = gq.calibrate_parallel(net, shards, workers=1, engine="process",
                                          calibrator="minmax", progress=False)
        assert dict(table) == single
        read_here = "Shard 0 (DataLoader) cannot be pickled (NotImplementedError: pool"
        assert (read_here in caplog.text) == (workers == 2)
    with pytest.raises(gq.ConfigError, match=r"Shard 1 \(list\) cannot be sent to a worker "
                                             r"process \(TypeError: .*lock"):
        gq.calibrate_parallel(net, [tiny_batches[:1], [tiny_batches[1], threading.Lock()]],
                              workers=1, engine="process", progress=False)


_UNGUARDED_SCRIPT = """
import mxnet as mx, numpy as np
from mxnet.gluon import nn
import gluon_quant as gq
net = nn.HybridSequential()
net.add(nn.Dense(256, activation="relu", in_units=256), nn.Dense(4, in_units=256))
net.initialize(mx.init.Xavier())          # 65k weights: more than a pipe's buffer
rs = np.random.RandomState(0)
shards = [[rs.rand(8, 256).astype("float32")] for _ in range(2)]
try:
    gq.calibrate_parallel(net, shards, workers=2, engine="process", progress=False)
except gq.ModelExecutionError as err:
    print("REFUSED:", err)
"""


def test_a_script_without_main_guard_gets_an_error_not_a_hang(tmp_path):
    """'spawn' workers import the calling script again; one without ``if __name__ ==
    "__main__":`` makes them die while starting. The caller used to block for ever
    writing the job into the dead worker's pipe; it now names the cause."""
    import subprocess
    import sys
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    refused = [line for line in done.stdout.splitlines() if line.startswith("REFUSED:")]
    assert len(refused) == 1, done.stdout[-2000:]
    assert "unguarded.py" in refused[0] and 'if __name__ == "__main__":' in refused[0]
    assert "engine='ray'" in refused[0]


def _one_pass_and_two_shards(net, batches, **settings):
    """The table of one calibration pass over ``batches``, and the merged one of a worker
    process calibrating the first batch and the rest as two shards (of the net itself, or
    of a block with ``settings``)."""
    single = gq.QuantizedHybridBlock(net, progress=False, **settings).calibrate(batches)
    table = gq.calibrate_parallel(gq.QuantizedHybridBlock(net, progress=False, **settings)
                                  if settings else net, [batches[:1], batches[1:]],
                                  workers=1, engine="process", progress=False)
    return single, table


class _Stateful(mx.gluon.HybridBlock):
    """``net(x, [h, c])``: list arguments, flattened the same way in every worker."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.rnn = mx.gluon.rnn.LSTM(16, input_size=8)
            self.proj = mx.gluon.nn.Dense(256, flatten=False)

    def hybrid_forward(self, F, x, states):
        out, _ = self.rnn(x, states)
        return self.proj(out)


def test_list_arguments_reach_the_workers():
    net = _Stateful()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(1)
    batches = [(rs.rand(12, 32, 8).astype("float32"),
                [rs.rand(1, 32, 16).astype("float32") for _ in range(2)]) for _ in range(3)]
    single, table = _one_pass_and_two_shards(net, batches, num_inputs=2)
    assert len(single) >= 2 and dict(table) == dict(single)


class _Optional(mx.gluon.HybridBlock):
    """``inputs, states=None, valid_length=None``, fed without ``states``."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.proj = mx.gluon.nn.Dense(256, flatten=False)

    def hybrid_forward(self, F, inputs, states=None, valid_length=None):
        assert states is None
        return F.SequenceMask(self.proj(inputs), sequence_length=valid_length,
                              use_sequence_length=True, axis=1)


def test_arguments_passed_as_none_reach_the_workers_as_none():
    net = _Optional()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(3)
    batches = [{"inputs": rs.rand(4, 10, 32).astype("float32"),
                "valid_length": rs.randint(1, 11, 4).astype("float32")} for _ in range(3)]
    single, table = _one_pass_and_two_shards(net, batches)
    assert table.meta["inputs"]["layout"] == [0, -1, 0]
    assert len(single) == 2 and dict(table) == dict(single)


class _MaskedMean(mx.gluon.HybridBlock):
    """A Conv1D (int8) and a small dense head after a masked mean: whether the head's
    int8 region pays depends on the batch shape the net is calibrated at."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.conv = mx.gluon.nn.Conv1D(32, 3, padding=1, activation="relu")
            self.head = mx.gluon.nn.Dense(5)

    def hybrid_forward(self, F, x, valid):
        h = F.SequenceMask(F.transpose(self.conv(x), axes=(2, 0, 1)), sequence_length=valid,
                           use_sequence_length=True)
        return self.head(F.broadcast_div(F.sum(h, axis=0), F.expand_dims(valid, 1)))


def test_a_parallel_table_rebuilds_the_same_block(int8_regions):
    """The merged table keeps the inputs and their shapes as one pass does, so that
    gq.quantize(net, calib_table=table) plans the same graph: without them the head was
    planned int8 and the table lacked its ranges ("no range for 2 tensor(s)")."""
    net = _MaskedMean()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    rs = np.random.RandomState(2)
    batches = [{"x": rs.randn(64, 8, 120).astype("float32"),
                "valid": rs.randint(3, 121, 64).astype("float32")} for _ in range(3)]
    single, table = _one_pass_and_two_shards(net, batches)
    assert dict(table) == dict(single) and len(table) == 2
    assert table.meta["inputs"] == single.meta["inputs"]
    assert table.meta["inputs"]["arg_names"] == ["x", "valid"]
    assert table.meta["input_shapes"] == single.meta["input_shapes"] == [[64, 8, 120], [64]]
    qnet = gq.quantize(net, calib_table=table, progress=False)
    x, valid = (mx.nd.array(batches[2][k]) for k in ("x", "valid"))
    ref = net(x, valid).asnumpy()
    got = qnet(x, valid).asnumpy()
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.999
    assert [r.layer for r in qnet.report() if r.quantized and r.op == "Convolution"]


def test_a_list_of_batches_given_as_shards_is_refused_with_how_to_split_it(tiny_cnn,
                                                                         tiny_batches):
    """calibrate_parallel(net, batches): each "shard" a single array. A never-run net failed
    with 'Parameters [...] are not initialized' (no first batch was found in array shards)."""
    fresh = mx.gluon.nn.HybridSequential()
    fresh.add(mx.gluon.nn.Conv2D(4, 3), mx.gluon.nn.Dense(3))
    fresh.initialize()                                  # deferred shapes: never run
    for net in (fresh, tiny_cnn):
        with pytest.raises(gq.CalibrationDataError,
                           match=r"shard 0 is a single ndarray\(8, 1, 28, 28\) float32: each "
                                 r"shard is an iterable of batches.*batches\[0::2\]"):
            gq.calibrate_parallel(net, tiny_batches, engine="process", progress=False)
