"""QuantConfig: validated once, and every field survives every entry point."""
import json

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import cli
from gluon_quant.config import QuantConfig


def _first_input(batch):
    return batch[0]


def _config():
    """Every field away from its default (backend apart: cuDNN cannot run here)."""
    return QuantConfig(calibrator="entropy", dtype="int8", backend="onednn",
                       granularity="tensor", exclude=("cnn_dense0",), preset="none",
                       bias_correction=False, num_calib_batches=2, input_fn=_first_input,
                       num_inputs=1, ctx=mx.cpu(0), progress=False, int8_lstm=True,
                       input_normalization=((0.5,), (0.25,)), fp32_stem=False)


@pytest.fixture
def labelled_batches(tiny_batches):
    """(images, labels) pairs: input_fn picks the images."""
    return [(x, np.zeros(len(x), dtype="float32")) for x in tiny_batches]


def test_defaults_and_parsing():
    config = QuantConfig()
    assert config.dtype is gq.QuantDtype.AUTO and config.backend is gq.Backend.ONEDNN
    assert config.granularity is gq.Granularity.CHANNEL     # oneDNN's default
    assert QuantConfig(backend="cudnn").granularity is gq.Granularity.TENSOR
    assert QuantConfig(backend="mkldnn").backend is gq.Backend.ONEDNN
    assert QuantConfig(exclude="dense0").exclude == ("dense0",)
    assert config.replace(backend="cudnn").granularity is gq.Granularity.TENSOR


def test_numpy_values_and_spellings_users_write_are_taken():
    """dtype=np.int8, a NumPy integer count (len(x) // 32 on NumPy sizes) and 'per_tensor'
    were refused ('num_calib_batches must be a positive int, got 1'); the config holds
    Python values (it is saved as JSON)."""
    config = QuantConfig(dtype=np.int8, num_calib_batches=np.int64(3), num_inputs=np.int32(1),
                         granularity="per_tensor")
    assert config.dtype is gq.QuantDtype.INT8 and config.granularity is gq.Granularity.TENSOR
    assert type(config.num_calib_batches) is int and config.num_calib_batches == 3
    assert type(config.num_inputs) is int
    assert QuantConfig(dtype=np.dtype("uint8")).dtype is gq.QuantDtype.UINT8
    with pytest.raises(gq.UnknownNameError, match="Unknown dtype 'float32'"):
        QuantConfig(dtype=np.float32)
    with pytest.raises(gq.UnknownNameError, match="Unknown dtype None"):
        QuantConfig(dtype=None)


@pytest.mark.parametrize("settings, error, match", [
    (dict(dtype="int4"), gq.UnknownNameError, "int4"),
    (dict(calibrator="kld"), gq.UnknownNameError, "'kld'"),
    (dict(preset="ssd"), gq.UnknownNameError, "gluoncv-ssd"),
    (dict(backend="cudnn", dtype="uint8"), gq.UnsupportedDtypeError, "uint8.*cudnn"),
    (dict(backend="cudnn", granularity="channel"), gq.ConfigError, "granularity='channel'"),
    (dict(exclude=[3]), gq.ConfigError, "non-empty strings"),
    (dict(exclude=7), gq.ConfigError, "exclude must be"),
    (dict(num_calib_batches=0), gq.CalibrationDataError, "num_calib_batches.*got 0"),
    (dict(num_inputs=True), gq.InputMismatchError, "num_inputs.*got True"),
    (dict(input_fn="x"), gq.InputMismatchError, "input_fn must be callable, got 'x'"),
    (dict(progress="yes"), gq.ConfigError, "progress"),
    (dict(input_normalization=(1.0, 2.0, 3.0)), gq.ConfigError, "a \\(mean, std\\) pair"),
    (dict(input_normalization=((1, 2), (3,))), gq.ConfigError, "as many means as stds"),
    (dict(input_normalization=((1,), (0,))), gq.ConfigError, "every std > 0"),
    (dict(input_normalization=(("a",), (1,))), gq.ConfigError, "mean must be.*'a'"),
    (dict(input_normalization=((float("nan"),), (1,))), gq.ConfigError, "finite"),
])
def test_invalid_values_are_refused_with_the_bad_value(settings, error, match):
    with pytest.raises(error, match=match):
        QuantConfig(**settings)


def test_unknown_setting_lists_the_valid_ones(tiny_cnn, tiny_batches):
    with pytest.raises(gq.ConfigError, match="'calibator'.*Did you mean 'calibrator'"):
        QuantConfig().replace(calibator="mse")
    with pytest.raises(gq.ConfigError, match="Valid settings: calibrator, dtype"):
        gq.quantize(tiny_cnn, tiny_batches, bogus=1)
    with pytest.raises(gq.ConfigError, match="QuantConfig"):
        gq.quantize(tiny_cnn, tiny_batches, config={"dtype": "int8"})


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        QuantConfig().dtype = "int8"


def _entry_points(net, batches, config):
    """Each entry point, given ``config``: (name, the QuantizedHybridBlock it returns)."""
    def via_block():
        return built(gq.QuantizedHybridBlock(net, config))

    def built(qnet):
        qnet.calibrate(batches)
        return qnet.finalize()

    def via_clone():
        return built(gq.quantize(net, [b[0] for b in batches], progress=False).clone(config))

    def via_clone_changes():
        base = gq.quantize(net, batches, config=config.replace(calibrator="mse"))
        return built(base.clone(calibrator="entropy"))

    def via_keywords():
        fields = {name: getattr(config, name) for name in QuantConfig.fields()}
        return gq.quantize(net, batches, **fields)

    return [("quantize(config=)", lambda: gq.quantize(net, batches, config=config)),
            ("quantize(**fields)", via_keywords),
            ("QuantizedHybridBlock", via_block),
            ("clone(config)", via_clone),
            ("clone(**changes)", via_clone_changes),
            ("quantize(eval_fn=, tolerance=)", lambda: gq.quantize(
                net, batches, config=config, eval_fn=lambda m: 1.0, tolerance=0.0)),
            ("tune(config=)", lambda: gq.tune(net, batches, lambda m: 1.0, tolerance=0.0,
                                              config=config)[0])]


@pytest.mark.parametrize("entry", range(7))
def test_every_field_survives_every_entry_point(tiny_cnn, labelled_batches, entry):
    config = _config()
    name, make = _entry_points(tiny_cnn, labelled_batches, config)[entry]
    qnet = make()
    got = qnet.config
    if "tune" in name or "eval_fn" in name:
        # Tuning re-scores one calibration pass: the calibrator is that pass's instance.
        assert got.calibrator.method_name == "entropy", name
        got = got.replace(calibrator="entropy")
    assert got == config, name
    for field in QuantConfig.fields():
        assert getattr(got, field) == getattr(config, field), (name, field)
    # The settings took effect, not only their record.
    report = qnet.report()
    assert report.calibrator == "entropy" and report.granularity == "tensor", name
    dense0 = next(r for r in report if r.layer == "cnn_dense0")
    assert not dense0.quantized and dense0.reason.startswith("excluded by user"), name
    assert "bias_correction" not in qnet.calibration_table.meta, name
    if qnet.calibration_table.meta.get("batches") is not None:
        assert qnet.calibration_table.meta["batches"] == 2, name   # num_calib_batches


def test_tuning_honours_bias_correction_false():
    """It was silently dropped on the tuning path before the config existed."""
    from mxnet.gluon import nn
    net = nn.HybridSequential()
    net.add(nn.Dense(16, in_units=8), nn.Dense(4, in_units=16))   # a hidden linear layer
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).randn(16, 8).astype("float32") for i in range(2)]
    tuned = gq.quantize(net, batches, eval_fn=lambda m: 1.0, tolerance=0.0,
                        bias_correction=False, progress=False)
    assert tuned.config.bias_correction is False
    assert "bias_correction" not in tuned.calibration_table.meta
    corrected = gq.quantize(net, batches, eval_fn=lambda m: 1.0, tolerance=0.0,
                            progress=False)
    assert "bias_correction" in corrected.calibration_table.meta


def test_cudnn_backend_survives_quantize_and_clone(tiny_cnn, tiny_batches):
    config = QuantConfig(backend="cudnn", calibrator="minmax", progress=False)
    qnet = gq.quantize(tiny_cnn, tiny_batches, config=config)
    assert qnet.config == config and qnet.clone().config == config
    assert qnet.clone(backend="onednn").config.granularity is gq.Granularity.CHANNEL


def test_zoo_get_model_takes_a_config():
    pytest.importorskip("gluoncv")
    from gluon_quant.zoo import get_model
    from gluon_quant.zoo.gluoncv import sample_batches
    config = QuantConfig(calibrator="minmax", dtype="int8", exclude=("Pooling",),
                         bias_correction=False, num_calib_batches=1, progress=False)
    qnet = get_model("resnet18_v1", sample_batches(num_batches=1, batch_size=4, size=64),
                     config=config)
    assert qnet.config.replace(preset=None) == config
    assert qnet.preset.name == "gluoncv-classification"
    assert all(not r.quantized for r in qnet.report() if r.op == "Pooling")


def test_json_round_trip_and_cli_config_file(tmp_path):
    config = QuantConfig(calibrator=gq.PercentileCalibrator(percentile=99.9), dtype="int8",
                         exclude=("a*",), preset="none", bias_correction=False,
                         num_calib_batches=3, num_inputs=2, progress=False)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = QuantConfig.from_dict(data)
    assert again.calibrator.options() == {"percentile": 99.9, **again.calibrator.options()}
    assert again.replace(calibrator="mse") == config.replace(calibrator="mse")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    args = cli.build_parser().parse_args(
        ["quantize", "resnet18_v1", "--calib", "x", "--out", "o", "--config", str(path),
         "--dtype", "auto", "--exclude", "b*"])
    built = cli.quant_config(args)
    assert built.dtype is gq.QuantDtype.AUTO and built.exclude == ("b*",)   # flags win
    assert built.bias_correction is False and built.num_calib_batches == 3   # file kept
    with pytest.raises(gq.ConfigError, match="'dtyp'"):
        QuantConfig.from_dict({"dtyp": "int8"})
