"""Inputs unlike the calibration data, reported on an int8 net's first calls
(gluon_quant.watch): pixels in [0, 255] given to a net calibrated on [0, 1], or the
reverse, returned numbers without a word."""
import logging

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import watch
from gluon_quant.graph import GraphView
from gluon_quant._mxnet import graph_json

WARNED = "is unlike the calibration data"


@pytest.fixture
def caught(caplog):
    caplog.set_level(logging.WARNING, logger="gluon_quant.watch")
    return caplog


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if WARNED in r.getMessage()]


def test_inputs_beyond_the_calibrated_range_are_reported_once(tiny_cnn, tiny_batches, caught):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    lo, hi = qnet.calibration_table.meta["input_ranges"]["data"]
    assert (lo, hi) == (float(np.concatenate(tiny_batches).min()),
                        float(np.concatenate(tiny_batches).max()))
    x = mx.nd.array(np.random.RandomState(3).rand(1, 1, 28, 28).astype("float32"))
    qnet(x)                                 # one image like the calibration data: silent
    assert not _warnings(caught)
    qnet(x * 255)
    qnet(x * 255)
    found = _warnings(caught)
    assert len(found) == 1
    assert "Input 'data' of this call" in found[0]
    assert "of its values lie beyond the range calibration saw, [%.4g, %.4g]" % (lo, hi) \
        in found[0]
    assert "preprocess inputs as the calibration batches were" in found[0]


def test_a_loaded_export_reports_inputs_using_a_sliver_of_the_range(tiny_cnn, tiny_batches,
                                                                    tmp_path, caught):
    raw = [b * 255 for b in tiny_batches]
    qnet = gq.quantize(tiny_cnn, raw, progress=False)
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    x = mx.nd.array(tiny_batches[0])
    loaded(x * 255)
    # One such call could be a dark frame (it spans as little): said from the third on.
    for _ in range(watch.NARROW_CALLS - 1):
        loaded(x)
    assert not _warnings(caught)
    loaded(x)
    loaded(x)
    found = _warnings(caught)
    assert len(found) == 1 and "about 1 of int8's levels are left for them" in found[0]


def test_nan_inputs_are_reported(tiny_cnn, tiny_batches, caught):
    """NaN compares false with every bound, so a call with NaN pixels (a division by a
    zero std in preprocessing) passed as in range and gave ordinary numbers; the watch
    names the NaN share, on the MXNet path too (an input that is not a float32 CPU
    array)."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = np.array(tiny_batches[0][:2])
    x[0, 0, :7] = np.nan                    # 7 of 28 rows of one of 2 images: 12.5%
    out = qnet(mx.nd.array(x))
    assert np.isfinite(out.asnumpy()).all()  # what went unnoticed
    found = _warnings(caught)
    assert len(found) == 1 and "12.5% of its values are NaN" in found[0]
    assert watch._compare(mx.nd.array(x, dtype="float16"), 0.0, 1.0)[0].startswith("12.5%")


def test_only_the_first_calls_are_checked(tiny_cnn, tiny_batches, caught):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[0])
    for _ in range(watch.NARROW_CALLS):     # zeros to time the net: nothing to compare
        qnet(mx.nd.zeros_like(x))
    for _ in range(watch.CHECKED_CALLS - watch.NARROW_CALLS):
        qnet(x)
    assert not _warnings(caught)
    qnet(x * 255)
    assert not _warnings(caught)


def test_ids_lengths_and_masks_are_not_watched_and_normalized_inputs_are():
    class Tagger(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.embed = nn.Embedding(100, 16)
                self.conv = nn.Conv1D(16, 3, padding=1, in_channels=3)
                self.dense = nn.Dense(4, flatten=False)

        def hybrid_forward(self, F, tokens, signal, length):
            features = self.conv((signal - 0.5) * 4).transpose((0, 2, 1))
            out = self.dense(self.embed(tokens) + features)
            return F.SequenceMask(out, sequence_length=length, use_sequence_length=True,
                                  axis=1)

    net = Tagger()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(rs.randint(0, 100, (4, 40)).astype("float32"), rs.rand(4, 3, 40).astype(
        "float32"), rs.randint(1, 41, 4).astype("float32")) for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    names = qnet.input_names
    assert watch.watched_inputs(GraphView(graph_json(qnet.fused_graph)), names) == [names[1]]
    assert list(qnet.calibration_table.meta["input_ranges"]) == [names[1]]


def test_inputs_the_net_scales_itself_are_not_watched():
    """A net that divides its input by a scale computed from it (GluonTS's mean scaling)
    or layer-normalizes it first takes any magnitude: bigger series are no mismatch. A
    normalization by parameters keeps the scale, and is watched."""
    class Scaled(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.norm = nn.LayerNorm()
                self.first, self.second, self.third = nn.Dense(32), nn.Dense(32), nn.Dense(32)
                self.mean = self.params.get_constant("mean", mx.nd.full((1, 64), 0.5))

        def hybrid_forward(self, F, series, other, images, mean):
            scale = F.mean(F.abs(series), axis=1, keepdims=True) + 1e-3
            return (self.first(F.broadcast_div(series, scale)) + self.second(self.norm(other))
                    + self.third(F.broadcast_div(F.broadcast_sub(images, mean), mean)))

    net = Scaled()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [tuple(rs.rand(16, 64).astype("float32") for _ in range(3)) for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    assert list(qnet.calibration_table.meta["input_ranges"]) == [qnet.input_names[2]]


def test_calibrate_parallel_keeps_the_ranges_one_pass_keeps(tiny_cnn, tiny_batches):
    one_pass = gq.quantize(tiny_cnn, tiny_batches, progress=False).calibration_table
    table = gq.calibrate_parallel(tiny_cnn, [tiny_batches[:1], [], tiny_batches[1:]],
                                  engine="process", workers=2, progress=False)
    assert table.meta["input_ranges"] == one_pass.meta["input_ranges"]
