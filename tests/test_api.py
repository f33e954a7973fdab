"""gluon_quant.quantize end to end: accuracy on real data, batch forms, structure, settings."""
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.calib import CalibrationTable, Calibrator

from conftest import accuracy, build_cnn, coverage


def cosine(a, b):
    a, b = a.asnumpy().ravel().astype(np.float64), b.asnumpy().ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("calibrator", ["entropy", "minmax", "percentile", "mse"])
def test_trained_cnn_keeps_accuracy_with_every_calibrator(trained_cnn, calibrator):
    net = trained_cnn["net"]
    test_x, test_y = trained_cnn["test"]
    qnet = gq.quantize(net, trained_cnn["calib"], calibrator=calibrator, progress=False)
    int8_acc = accuracy(qnet, test_x, test_y)
    fp32_acc = trained_cnn["fp32_acc"]
    assert fp32_acc > 0.80, fp32_acc          # the net really learned something
    assert int8_acc >= fp32_acc - 0.01, (calibrator, fp32_acc, int8_acc)
    conv_q, conv_total = coverage(qnet.report())
    assert (conv_q, conv_total) == (4, 4)


def test_default_output_matches_fp32_closely(trained_cnn):
    net = trained_cnn["net"]
    x = mx.nd.array(trained_cnn["test"][0][:256])
    qnet = gq.quantize(net, trained_cnn["calib"], progress=False)
    assert cosine(net(x), qnet(x)) >= 0.998
    assert qnet(x).dtype == np.float32


def _batch_forms(images, labels):
    nd = [mx.nd.array(images[i:i + 16]) for i in range(0, 64, 16)]
    yield "ndarray list", nd
    yield "numpy list", [images[i:i + 16] for i in range(0, 64, 16)]
    yield "tuples with labels", [(images[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]
    yield "dicts", [{"x": images[i:i + 16], "label": labels[i:i + 16]} for i in range(0, 64, 16)]
    yield "generator", (images[i:i + 16] for i in range(0, 64, 16))
    yield "DataLoader of bare arrays", gluon.data.DataLoader(
        gluon.data.SimpleDataset(list(images[:64])), batch_size=16)
    yield "DataLoader of (x, y)", gluon.data.DataLoader(
        gluon.data.ArrayDataset(images[:64], labels[:64]), batch_size=16)
    yield "NDArrayIter", mx.io.NDArrayIter(images[:64], labels[:64], batch_size=16)
    yield "float64 numpy", [images[i:i + 16].astype(np.float64) for i in range(0, 64, 16)]


def test_every_batch_form_gives_the_same_table(tiny_cnn):
    rs = np.random.RandomState(3)
    images = rs.rand(64, 1, 28, 28).astype("float32")
    labels = rs.randint(0, 10, size=64)
    tables = {}
    for form, data in _batch_forms(images, labels):
        qnet = gq.quantize(tiny_cnn, data, calibrator="minmax", progress=False)
        tables[form] = qnet.calibration_table
    reference = tables["ndarray list"]
    assert len(reference) >= 5
    for form, table in tables.items():
        assert dict(table) == dict(reference), form


def test_a_data_iter_gives_the_model_its_batches_in_a_list_give(int8_regions):
    """An ``mx.io.DataIter`` was not read before the graph was planned: the int8 regions
    were chosen without the batch's shapes (a small dense head went int8 that a list of
    the same batches keeps fp32), and with a table of those shapes the plan asked for
    ranges the table did not have."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, activation="relu"), nn.BatchNorm(), nn.Conv2D(16, 3),
            nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    images = np.random.RandomState(4).rand(64, 3, 16, 16).astype("float32")
    batches = [images[i:i + 8] for i in range(0, 64, 8)]
    x = mx.nd.array(images[:8])
    listed = gq.quantize(net, batches, progress=False)
    assert coverage(listed.report()) == (2, 3)
    read = gq.quantize(net, mx.io.NDArrayIter(images, batch_size=8), progress=False)
    np.testing.assert_array_equal(read(x).asnumpy(), listed(x).asnumpy())
    table = gq.calibrate_parallel(net, [batches[:4], batches[4:]], engine="process",
                                  workers=1, progress=False)
    rebuilt = gq.quantize(net, mx.io.NDArrayIter(images, batch_size=8), calib_table=table,
                          progress=False)
    np.testing.assert_array_equal(rebuilt(x).asnumpy(), listed(x).asnumpy())


def test_input_fn_overrides_the_mapping(tiny_cnn, tiny_batches):
    data = [{"img": b, "meta": "ignored"} for b in tiny_batches]
    qnet = gq.quantize(tiny_cnn, data, input_fn=lambda batch: batch["img"], progress=False)
    ref = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    assert dict(qnet.calibration_table) == dict(ref.calibration_table)


def test_num_calib_batches_limits_the_data(tiny_cnn, tiny_batches):
    seen = []

    class Counting(gq.MinMaxCalibrator):
        def collect(self, name, array):
            if name == "data":
                seen.append(array.shape[0])
            super().collect(name, array)

    gq.quantize(tiny_cnn, tiny_batches, calibrator=Counting(), num_calib_batches=2,
                progress=False)
    assert seen == [8, 8]


def test_long_data_of_unknown_length_gets_a_warning(tiny_cnn, tiny_batches, monkeypatch,
                                                    caplog):
    """A generator that never ends (a stream, GluonTS's TrainDataLoader) calibrated forever
    without a word: past data.UNBOUNDED_WARNING_BATCHES batches a warning says how to bound
    it; data with a length, or bounded, gets none."""
    from gluon_quant import data
    monkeypatch.setattr(data, "UNBOUNDED_WARNING_BATCHES", 3)
    warned = lambda: [r for r in caplog.records if "of unknown length" in r.getMessage()]
    gq.quantize(tiny_cnn, tiny_batches, progress=False)
    gq.quantize(tiny_cnn, (b for b in tiny_batches), num_calib_batches=4, progress=False)
    assert warned() == []
    gq.quantize(tiny_cnn, (b for b in tiny_batches), progress=False)
    (record,) = warned()
    assert record.levelname == "WARNING"
    assert "(generator, of unknown length) has given 3 batches" in record.getMessage()
    assert "num_calib_batches=N" in record.getMessage()


class TwoInputNet(gluon.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Dense(16, activation="relu")
            self.b = nn.Dense(16, activation="relu")
            self.head = nn.Dense(4)

    def hybrid_forward(self, F, x, y):
        return self.head(F.concat(self.a(x), self.b(y), dim=1))


class TwoOutputNet(gluon.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.Conv2D(8, 3, padding=1, activation="relu")
            self.cls = nn.Dense(5)
            self.reg = nn.Dense(3)

    def hybrid_forward(self, F, x):
        feat = self.body(x)
        return self.cls(feat), (self.reg(feat), F.relu(feat))


def test_multi_input_net(tmp_path):
    mx.random.seed(0)
    net = TwoInputNet()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(rs.randn(8, 10).astype("float32"), rs.randn(8, 6).astype("float32"),
                rs.randint(0, 4, 8)) for _ in range(4)]
    qnet = gq.quantize(net, batches, progress=False)
    x, y = mx.nd.array(batches[0][0]), mx.nd.array(batches[0][1])
    assert qnet.input_names == ["data0", "data1"]
    assert cosine(net(x, y), qnet(x, y)) > 0.99
    # a dict keyed by hybrid_forward's argument names works too
    qdict = gq.quantize(net, [{"x": b[0], "y": b[1]} for b in batches], progress=False)
    assert dict(qdict.calibration_table) == dict(qnet.calibration_table)
    assert coverage(qnet.report()) == (3, 3)


def quantized_two_output_net():
    """A TwoOutputNet, its three calibration batches and its quantized block."""
    mx.random.seed(0)
    net = TwoOutputNet()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.rand(4, 3, 12, 12).astype("float32") for _ in range(3)]
    return net, batches, gq.quantize(net, batches, progress=False)


def test_multi_output_net_keeps_output_structure():
    net, batches, qnet = quantized_two_output_net()
    x = mx.nd.array(batches[0])
    ref, out = net(x), qnet(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert isinstance(out[1], tuple) and len(out[1]) == 2
    assert out[0].shape == ref[0].shape and out[1][1].shape == ref[1][1].shape
    assert cosine(ref[0], out[0]) > 0.99 and cosine(ref[1][0], out[1][0]) > 0.99
    assert cosine(ref[1][1], out[1][1]) > 0.99
    qnet.hybridize()                      # the quantized block hybridizes like any other
    again = qnet(x)
    assert np.array_equal(again[0].asnumpy(), out[0].asnumpy())


class AbsMaxCalibrator(Calibrator):
    """A user calibrator, written with no registration step: symmetric absmax * 0.9."""

    def __init__(self):
        self.absmax = {}
        self.signed = {}

    def collect(self, name, array):
        self.absmax[name] = max(self.absmax.get(name, 0.0), float(np.abs(array).max()))
        self.signed[name] = self.signed.get(name, False) or bool(array.min() < 0)

    def merge(self, other):
        for name, value in other.absmax.items():
            self.absmax[name] = max(self.absmax.get(name, 0.0), value)
            self.signed[name] = self.signed.get(name, False) or other.signed[name]

    def compute(self):
        return CalibrationTable({n: ((-0.9 * v if self.signed[n] else 0.0), 0.9 * v)
                                 for n, v in self.absmax.items()}, method="absmax90")

    def reset(self):
        self.absmax, self.signed = {}, {}

    def state_dict(self):
        return {"version": 1, "absmax": self.absmax, "signed": self.signed}

    @classmethod
    def from_state_dict(cls, state):
        cal = cls()
        cal.absmax, cal.signed = dict(state["absmax"]), dict(state["signed"])
        return cal

    @property
    def names(self):
        return list(self.absmax)


def test_user_calibrator_subclass_plugs_in(trained_cnn):
    cal = AbsMaxCalibrator()
    qnet = gq.quantize(trained_cnn["net"], trained_cnn["calib"], calibrator=cal, progress=False)
    table = qnet.calibration_table
    assert table.method == "absmax90"
    assert table["data"] == pytest.approx((0.0, 0.9 * cal.absmax["data"]))
    test_x, test_y = trained_cnn["test"]
    assert accuracy(qnet, test_x[:2000], test_y[:2000]) >= \
        accuracy(trained_cnn["net"], test_x[:2000], test_y[:2000]) - 0.03
    # a calibrator class (not an instance) is accepted as well
    qcls = gq.quantize(trained_cnn["net"], trained_cnn["calib"], calibrator=AbsMaxCalibrator,
                       progress=False)
    assert dict(qcls.calibration_table) == dict(table)


def test_calib_table_reuse_needs_no_data(trained_cnn):
    net = trained_cnn["net"]
    first = gq.quantize(net, trained_cnn["calib"], progress=False)
    again = gq.quantize(net, calib_table=first.calibration_table, progress=False)
    x = mx.nd.array(trained_cnn["test"][0][:64])
    assert np.array_equal(first(x).asnumpy(), again(x).asnumpy())


def test_original_net_environment_and_settings_untouched(tiny_cnn, tiny_batches):
    env_before = dict(os.environ)
    params_before = {k: v.data().asnumpy().copy() for k, v in tiny_cnn.collect_params().items()}
    assert not tiny_cnn._active
    qnet = gq.quantize(tiny_cnn, tiny_batches, backend="mkldnn", progress=False)
    qnet(mx.nd.array(tiny_batches[0]))
    assert dict(os.environ) == env_before
    assert not tiny_cnn._active and tiny_cnn._cached_op is None   # not re-hybridized
    for name, value in tiny_cnn.collect_params().items():
        assert np.array_equal(value.data().asnumpy(), params_before[name]), name
    # the quantized net owns copies: changing the fp32 net later does not change it
    out = qnet(mx.nd.array(tiny_batches[0])).asnumpy()
    for param in tiny_cnn.collect_params().values():
        param.set_data(param.data() * 0)
    assert np.array_equal(qnet(mx.nd.array(tiny_batches[0])).asnumpy(), out)


def test_tiny_ranges_keep_full_precision():
    net = nn.HybridSequential()
    net.add(nn.Dense(8, activation="relu"), nn.Dense(3))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(rs.rand(16, 5) * 1e-7).astype("float32") for _ in range(3)]
    qnet = gq.quantize(net, batches, calibrator="minmax", progress=False)
    lo, hi = qnet.calibration_table["data"]
    assert lo == 0.0 and 0 < hi < 1e-7
    x = mx.nd.array(batches[0])
    assert cosine(net(x), qnet(x)) > 0.99      # MXNet's 6-decimal ranges made this garbage
    text = qnet.quantized_graph.tojson()
    assert '"min_calib_range": "0.000000"' not in text


def test_int8_and_uint8_dtypes(trained_cnn):
    net = trained_cnn["net"]
    test_x, test_y = trained_cnn["test"]
    fp32 = accuracy(net, test_x[:2000], test_y[:2000])
    for dtype in ("int8", "uint8"):
        for calibrator in ("entropy", "minmax"):
            qnet = gq.quantize(net, trained_cnn["calib"], dtype=dtype, calibrator=calibrator,
                               progress=False)
            assert accuracy(qnet, test_x[:2000], test_y[:2000]) >= fp32 - 0.01, (dtype,
                                                                                   calibrator)


def test_uint8_refuses_signed_tensors(tiny_cnn, tiny_batches):
    signed = [b - 0.5 for b in tiny_batches]       # normalized images are signed
    with pytest.raises(gq.UnsupportedDtypeError, match=r"uint8.*negative.*'data'"):
        gq.quantize(tiny_cnn, signed, dtype="uint8", progress=False)
    qnet = gq.quantize(tiny_cnn, signed, dtype="auto", progress=False)
    x = mx.nd.array(signed[0])
    assert cosine(tiny_cnn(x), qnet(x)) > 0.99


def test_granularity_tensor_and_channel(trained_cnn):
    net = trained_cnn["net"]
    x = mx.nd.array(trained_cnn["test"][0][:256])
    for granularity in ("tensor", "channel-wise"):
        qnet = gq.quantize(net, trained_cnn["calib"], granularity=granularity, progress=False)
        assert qnet.granularity.value in ("tensor", "channel")
        assert cosine(net(x), qnet(x)) > 0.998


def test_ctx_other_than_the_nets_own(tiny_cnn, tiny_batches):
    """``ctx=mx.cpu(1)`` over a net whose parameters live on ``cpu(0)`` (and the reverse):
    the parameters were read with ``param.data(ctx)``, whose RuntimeError escaped (the
    copy meant for it caught only MXNetError), bias correction lent its reference masks on
    cpu(0), and the doctor ran the fp32 net on the int8 net's context. The int8 net is the
    one built on cpu(0), bit for bit, and the doctor runs."""
    x = mx.nd.array(tiny_batches[0])
    here = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    there = gq.quantize(tiny_cnn, tiny_batches, ctx=mx.cpu(1), progress=False)
    out = there(x.as_in_context(mx.cpu(1)))
    assert out.context == mx.cpu(1)
    np.testing.assert_array_equal(out.asnumpy(), here(x).asnumpy())
    report = gq.debug.compare(there, [x.as_in_context(mx.cpu(1))])
    assert report.output_cosine > 0.99
    moved = nn.HybridSequential()
    moved.add(nn.Conv2D(8, 3, in_channels=1), nn.Dense(3, in_units=8 * 26 * 26))
    moved.initialize(mx.init.Xavier(), ctx=mx.cpu(1))
    assert gq.quantize(moved, tiny_batches, ctx=mx.cpu(), progress=False)(x).shape == (8, 3)


@pytest.mark.parametrize("where", ["cpu(1)", "cpu(1) and cpu(0)", "cpu(1), deferred"])
def test_ctx_defaults_to_where_the_net_lives(tiny_batches, where):
    """Without ``ctx=``, the int8 net is built where the net's parameters are, as Gluon
    users expect of a net on ``mx.gpu(1)`` (here ``mx.cpu(1)``, the same code path): it
    was always built on ``cpu(0)``, so a net on a GPU with ``backend='cudnn'`` gave an int8
    net that could not take the inputs the fp32 net took. A data-parallel net (copies on
    several devices) goes to its first device. A backend for another kind of device
    keeps its default."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, in_channels=0 if "deferred" in where else 1), nn.Dense(3))
    net.initialize(mx.init.Xavier(),
                   ctx=[mx.cpu(1), mx.cpu(0)] if "and" in where else mx.cpu(1))
    x = mx.nd.array(tiny_batches[0], ctx=mx.cpu(1))
    qnet = gq.quantize(net, tiny_batches, progress=False)
    assert qnet.ctx == qnet.config.ctx == mx.cpu(1)
    assert {c for p in qnet.collect_params().values() for c in p.list_ctx()} == {mx.cpu(1)}
    out = qnet(x)
    assert out.context == mx.cpu(1)
    assert cosine(net(x), out) > 0.999
    explicit = gq.quantize(net, tiny_batches, ctx=mx.cpu(1), progress=False)
    np.testing.assert_array_equal(explicit(x).asnumpy(), out.asnumpy())
    with pytest.raises(gq.InputMismatchError, match=r"cpu\(0\).*runs on cpu\(1\)"):
        qnet(x.as_in_context(mx.cpu(0)))
    assert gq.QuantConfig.build(net=net, backend="cudnn").ctx is None


def test_module_api_models_are_quantized(tmp_path):
    """An ``mx.mod.Module`` (what MXNet's ``quantize_model(sym, arg_params, aux_params)``
    users hold), bound or loaded from a checkpoint, is quantized over its symbol and
    parameters, its SoftmaxOutput run as the softmax Module.predict computes; it was refused
    as not a HybridBlock."""
    data = mx.sym.var("data")
    conv = mx.sym.Activation(mx.sym.Convolution(data, num_filter=16, kernel=(3, 3),
                                                pad=(1, 1), name="conv"), act_type="relu")
    head = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(mx.sym.flatten(conv), num_hidden=10,
                                                      name="fc"), name="softmax")
    mod = mx.mod.Module(head, data_names=["data"], label_names=["softmax_label"])
    mod.bind(data_shapes=[("data", (8, 3, 8, 8))], for_training=False)
    mx.random.seed(0)
    mod.init_params(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).rand(8, 3, 8, 8).astype("float32"))
    expected = mod.predict(mx.io.NDArrayIter(x, batch_size=8)).asnumpy()
    qnet = gq.quantize(mod, [x], progress=False)
    np.testing.assert_allclose(qnet(x).asnumpy(), expected, atol=0.01)
    assert coverage(qnet.report()) == (2, 2)
    mod.save_checkpoint(str(tmp_path / "ck"), 3)
    loaded = mx.mod.Module.load(str(tmp_path / "ck"), 3)          # not bound
    np.testing.assert_array_equal(gq.quantize(loaded, [x], progress=False)(x[:3]).asnumpy(),
                                  qnet(x[:3]).asnumpy())
    # exclude by layer name (a Module has no Gluon blocks to stand for paths)
    kept = gq.quantize(mod, [x], exclude=["conv"], progress=False).report()
    assert {r.layer: r.quantized for r in kept if r.op == "Convolution"} == {"conv": False}
    with pytest.raises(gq.ConfigError, match=r"Module has no parameters yet.*init_params"):
        gq.quantize(mx.mod.Module(head), [x], progress=False)


def test_a_table_measured_with_other_weights_is_refused_naming_them(tiny_cnn, tiny_batches,
                                                                    tmp_path):
    """A saved table applied to a net whose weights changed since (fine-tuned, another
    checkpoint, random weights drawn again) built an int8 net of the old ranges and bias
    corrections without a word: 0.905 output cosine on a small CNN whose weights were
    scaled by 3, 0.99999 recalibrated. The table records a CRC-32 of each parameter; the
    same weights loaded into a new net rebuild bit for bit, and older tables (no record)
    are taken as before."""
    x = mx.nd.array(tiny_batches[0])
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    table = qnet.calibration_table
    recorded = table.meta["weights"]
    assert sorted(recorded) == sorted(p.name for p in tiny_cnn.collect_params().values())
    table.save(str(tmp_path / "t.json"))
    tiny_cnn.save_parameters(str(tmp_path / "w.params"))
    again = build_cnn()
    again.load_parameters(str(tmp_path / "w.params"))
    rebuilt = gq.quantize(again, calib_table=str(tmp_path / "t.json"), progress=False)
    np.testing.assert_array_equal(rebuilt(x).asnumpy(), qnet(x).asnumpy())
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))

    params = list(tiny_cnn.collect_params().values())
    tuned = [p for p in params if p.name.endswith("weight")][:2]
    for param in tuned:
        param.set_data(param.data() * 1.01)
    for source in (str(tmp_path / "t.json"), loaded.calibration_table):
        with pytest.raises(gq.CalibrationTableError,
                           match=r"measured with other weights: 2 of the %d parameters it "
                                 r"recorded have other values now \(%s, %s\).*calibrate this "
                                 r"network again" % ((len(params),) + tuple(sorted(
                                     p.name for p in tuned)))):
            gq.quantize(tiny_cnn, calib_table=source, progress=False)
    older = gq.CalibrationTable(dict(table.items()), method=table.method,
                                fingerprint=table.fingerprint,
                                meta={k: v for k, v in table.meta.items() if k != "weights"})
    assert gq.quantize(tiny_cnn, calib_table=older, progress=False)(x).shape == qnet(x).shape
    fresh = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    assert fresh.calibration_table.meta["weights"] != recorded


def test_a_table_alone_rebuilds_the_model_with_the_settings_it_was_built_with(
        tiny_cnn, tiny_batches, tmp_path):
    """``quantize(net, calib_table=...)`` used the default settings: the table of a model
    built with exclusions, per-tensor weights or int8 activations (and the doctor's
    rebuild of a loaded export) gave another model without a word, and one built with
    input_normalization was refused as "computed on another graph". The table records
    the settings that decide the model; keywords given replace them."""
    x = mx.nd.array(tiny_batches[0])
    layer = tiny_cnn[0].name
    settings = dict(exclude=[layer], granularity="tensor", dtype="int8",
                    input_normalization=([0.5], [0.25]))
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False, **settings)
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    qnet.calibration_table.save(str(tmp_path / "t.json"))
    for source in (loaded.calibration_table, str(tmp_path / "t.json")):
        alone = gq.quantize(tiny_cnn, calib_table=source, progress=False)
        np.testing.assert_array_equal(alone(x).asnumpy(), loaded(x).asnumpy())
        assert (alone.config.exclude, alone.config.granularity.value, alone.config.dtype.value,
                alone.config.input_normalization) == ((layer,), "tensor", "int8",
                                                      ((0.5,), (0.25,)))
    given = gq.quantize(tiny_cnn, calib_table=loaded.calibration_table, granularity="channel",
                        progress=False)
    assert given.config.granularity.value == "channel" and given.config.exclude == (layer,)
    assert not np.array_equal(given(x).asnumpy(), loaded(x).asnumpy())
    table = loaded.calibration_table
    odd = gq.CalibrationTable(dict(table.items()), method=table.method,
                              fingerprint=table.fingerprint,
                              meta=dict(table.meta, settings=dict(table.meta["settings"],
                                                                  preset="my_own_preset")))
    with pytest.raises(gq.CalibrationTableError, match=r"records settings this gluon_quant "
                       r"cannot apply \(.*my_own_preset.*\)\. Pass them to quantize\(\)"):
        gq.quantize(tiny_cnn, calib_table=odd, progress=False)
    assert gq.quantize(tiny_cnn, calib_table=odd, preset="none", progress=False).config.exclude \
        == (layer,)


class _Frame:
    """What numpy reads as an array without being one: a pandas DataFrame, a CPU torch
    tensor (``__array__`` and ``shape``)."""

    def __init__(self, values):
        self._values, self.shape = values, values.shape

    def __array__(self, dtype=None):
        return self._values if dtype is None else self._values.astype(dtype)


def test_array_likes_are_batches_and_a_whole_one_is_refused_as_one_array(tiny_cnn,
                                                                         tiny_batches):
    """Batches of pandas DataFrames (a tabular model's data) were refused: "Cannot read
    network inputs from a batch of type DataFrame"; a whole DataFrame given as calib_data
    was iterated over its column labels ("a batch of type int")."""
    x = mx.nd.array(tiny_batches[0])
    expected = gq.quantize(tiny_cnn, tiny_batches, progress=False)(x).asnumpy()
    for batches in ([_Frame(b) for b in tiny_batches],
                    [(_Frame(b), np.zeros(len(b))) for b in tiny_batches]):
        qnet = gq.quantize(tiny_cnn, batches, progress=False)
        np.testing.assert_array_equal(qnet(x).asnumpy(), expected)
    with pytest.raises(gq.CalibrationDataError, match=r"calib_data is a single "
                       r"_Frame\(32, 1, 28, 28\); it must be an iterable of batches"):
        gq.quantize(tiny_cnn, _Frame(np.concatenate(tiny_batches)), progress=False)


def test_quantize_documents_every_setting():
    """quantize's docstring lists the QuantConfig fields **settings takes: three added
    later (equalization, weight_rounding, fp32_stem) were missing from it."""
    missing = [f for f in gq.QuantConfig.fields() if "``%s``" % f not in gq.quantize.__doc__]
    assert missing == []
