"""QuantizedHybridBlock.export: files, integrity checks, atomic writes, stock-MXNet pair."""
import hashlib
import json
import os
import re

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import _packing
from gluon_quant._io import parse_ndarray_file
from gluon_quant.calib import CalibrationTable
from gluon_quant.errors import (ArtifactError, CalibrationTableError, GraphError,
                                UnknownNameError)

from conftest import PAIRS_SATURATE, build_cnn, coverage


@pytest.fixture
def qnet(tiny_cnn, tiny_batches):
    return gq.quantize(tiny_cnn, tiny_batches, progress=False)


@pytest.fixture
def exported(qnet, tmp_path):
    prefix = str(tmp_path / "m")
    return prefix, qnet.export(prefix), qnet


def _x():
    return mx.nd.array(np.random.RandomState(9).rand(4, 1, 28, 28).astype("float32"))


def test_export_right_after_quantizing_writes_full_files(qnet, tmp_path):
    # no inference has run on the int8 model: MXNet's own export would write empty params
    paths = qnet.export(str(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path)) == ["m-int8.params", "m-meta.json", "m-symbol.json"]
    arrays = parse_ndarray_file(open(paths["params"], "rb").read(), paths["params"])
    meta = json.load(open(paths["meta"]))
    assert meta["packed"] == [
        {"weight": "cnn_conv0_weight", "shape": [16, 1, 3, 3]},
        {"weight": "cnn_conv1_weight", "shape": [32, 16, 3, 3]},
        {"weight": "cnn_dense0_weight", "shape": [64, 1568]},
        {"weight": "cnn_dense1_weight", "shape": [10, 64]}]
    assert arrays["packed:int8"].dtype == np.int8
    assert arrays["packed:int8"].shape == (144 + 4608 + 100352 + 640,)
    assert arrays["packed:anchors"].shape == (16 + 32 + 64 + 10,)
    # exceptions are few: at most one kept value per channel, no factor of their own
    assert arrays["packed:fix_index"].size <= 122 and arrays["packed:factor_index"].size == 0
    # every other parameter in one float32 array, named in the metadata
    assert sorted(arrays) == sorted(["packed:" + k for k in _packing.ARRAYS] + ["plain:float32"])
    assert [p["name"] for p in meta["plain"]][:3] == ["cnn_conv0_bias", "cnn_batchnorm0_gamma",
                                                       "cnn_batchnorm0_beta"]
    assert arrays["plain:float32"].size == sum(np.prod(p["shape"]) for p in meta["plain"])
    # the same arrays as mx.nd.load reads
    loaded = mx.nd.load(paths["params"])
    assert sorted(loaded) == sorted(arrays)
    for key, value in loaded.items():
        assert np.array_equal(value.asnumpy(), arrays[key])


def _bn_layer(seed=0, channels=64):
    rs = np.random.RandomState(seed)
    weight = (rs.randn(channels, 32, 3, 3) * 0.05).astype(np.float32)
    weight[3] = 0.0                                     # a dead channel
    params = {"w": weight, "g": rs.uniform(-2, 2, channels).astype(np.float32),
              "v": rs.uniform(0.01, 3, channels).astype(np.float32),
              "b": rs.uniform(-1, 1, channels).astype(np.float32),
              "m": rs.uniform(-1, 1, channels).astype(np.float32)}
    params["g"][5] = 0.0                                # gamma 0: folded weights all 0
    return params, _packing.PackSpec("w", True, gamma="g", var="v", eps=1e-5,
                                     beta="b", mean="m")


def test_packing_reproduces_runtime_quantization_and_naive_does_not():
    params, spec = _bn_layer()
    packed = _packing.pack(spec, params, in_scale=_packing.data_scale(6.0, True))
    rebuilt = _packing.unpack(packed)
    again, maxabs, scales = _packing.runtime_quantize(spec, {**params, "w": rebuilt}, 42.5)
    expected_q, expected_max, expected_scales = _packing.runtime_quantize(spec, params, 42.5)
    assert np.array_equal(again, packed.q) and np.array_equal(packed.q, expected_q)
    assert np.array_equal(maxabs, expected_max) and np.array_equal(scales, expected_scales)
    # one fp32 value per channel (its maximum), a handful of exceptions
    assert packed.anchors.shape == (64,) and packed.factor_index.size == 0
    assert packed.fix_index.size <= 4, packed.fix_index
    # naive max/127 rounding of the folded weights gives other int8 values
    folded = params["w"] * _packing.fold_factor(spec, params)[:, None, None, None]
    step = np.abs(folded).reshape(64, -1).max(axis=1) / 127
    naive = np.rint(folded / np.where(step > 0, step, 1)[:, None, None, None])
    assert np.mean(naive != packed.q) > 0.005


def test_packing_follows_the_runtime_bias_guard_on_dead_channels():
    # BatchNorm leaves channel 7 almost dead (max|w| ~ 1e-7) with a bias of 1: the
    # runtime caps its scale at 2**30 / bias / data_scale, as on EfficientNet-Lite0.
    params, spec = _bn_layer(1)
    params["g"][7], params["b"][7], params["m"][7] = 2e-6, 1.0, 0.0
    in_scale = _packing.data_scale(6.0, True)
    q, maxabs, scales = _packing.runtime_quantize(spec, params, in_scale)
    plain = _packing.runtime_quantize(spec, params)[2]
    assert scales[7] < plain[7] / 10 and np.sum((scales != plain) & (maxabs > 0)) == 1
    assert 3 <= np.abs(q[7]).max() <= 120            # int8 values that still matter
    packed = _packing.pack(spec, params, in_scale=in_scale)
    assert list(packed.factor_index) == [7]           # the guarded channel's own factor
    rebuilt = _packing.unpack(packed)
    again = _packing.runtime_quantize(spec, {**params, "w": rebuilt}, in_scale)
    assert np.array_equal(again[0], q) and np.array_equal(again[1], maxabs)
    assert np.array_equal(again[2], scales)
    # without the input scale the guard cannot be ruled out: the layer stays fp32
    with pytest.raises(_packing.NotPackable, match="input scale is unknown"):
        _packing.pack(spec, params, in_scale_bound=in_scale)


def test_tensor_wise_layers_store_their_factors():
    params, spec = _bn_layer(2)
    spec = _packing.PackSpec("w", False, gamma="g", var="v", eps=1e-5, beta="b", mean="m")
    packed = _packing.pack(spec, params)
    assert packed.factor_index.size == 64           # one scale for all: no derived factor
    again = _packing.runtime_quantize(spec, {**params, "w": _packing.unpack(packed)})
    assert np.array_equal(again[0], packed.q)
    assert again[1].max() == _packing.runtime_quantize(spec, params)[1].max()


def test_stock_mxnet_pair_loads_in_plain_symbolblock(qnet, tmp_path):
    paths = qnet.export(str(tmp_path / "stock"), fmt="mxnet")
    assert sorted(os.listdir(tmp_path)) == ["stock-0000.params", "stock-symbol.json"]
    block = mx.gluon.SymbolBlock.imports(paths["symbol"], ["data"], paths["params"])
    x = _x()
    assert np.array_equal(block(x).asnumpy(), qnet(x).asnumpy())
    fp32_weight = mx.nd.load(paths["params"])["arg:cnn_conv0_weight"]
    assert fp32_weight.dtype == np.float32


def test_unknown_format_and_unbuilt_block_are_refused(qnet, tiny_cnn, tmp_path):
    with pytest.raises(UnknownNameError, match="'onnx'"):
        qnet.export(str(tmp_path / "m"), fmt="onnx")
    with pytest.raises(GraphError, match="not quantized yet"):
        gq.QuantizedHybridBlock(tiny_cnn).export(str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_truncated_params_file(exported):
    prefix, paths, _ = exported
    data = open(paths["params"], "rb").read()
    open(paths["params"], "wb").write(data[:len(data) // 2])
    with pytest.raises(ArtifactError, match=r"m-int8\.params.*truncated"):
        gq.QuantizedSymbolBlock.imports(prefix)
    # the structure check alone, without the checksum, also catches it
    with pytest.raises(ArtifactError, match="truncated while reading"):
        parse_ndarray_file(data[:len(data) // 2], paths["params"])
    with pytest.raises(ArtifactError, match="trailing bytes"):
        parse_ndarray_file(data + b"\0", paths["params"])


@pytest.mark.parametrize("offset", [0, 40, -3, 0.5])
def test_flipped_bytes_in_params_file(exported, offset):
    prefix, paths, _ = exported
    data = bytearray(open(paths["params"], "rb").read())
    index = int(len(data) * offset) if isinstance(offset, float) else offset
    data[index] ^= 0xFF
    open(paths["params"], "wb").write(bytes(data))
    with pytest.raises(ArtifactError, match=r"m-int8\.params.*sha256"):
        gq.QuantizedSymbolBlock.imports(prefix)


def test_edited_symbol_json(exported):
    prefix, paths, _ = exported
    text = open(paths["symbol"]).read().replace('"relu"', '"tanh"', 1)
    open(paths["symbol"], "w").write(text)
    with pytest.raises(ArtifactError, match=r"m-symbol\.json.*sha256"):
        gq.QuantizedSymbolBlock.imports(prefix)


def test_metadata_from_a_newer_format_version(exported):
    prefix, paths, _ = exported
    meta = json.load(open(paths["meta"]))
    meta["version"] = "4.0"
    json.dump(meta, open(paths["meta"], "w"))
    with pytest.raises(ArtifactError, match=r"m-meta\.json.*version 4\.0, newer.*upgrade"):
        gq.QuantizedSymbolBlock.imports(prefix)


@pytest.mark.skipif(PAIRS_SATURATE, reason="written on a CPU with VNNI: where int8 pairs "
                    "saturate oneDNN halves int8-input convolution weights, other values")
def test_format_1_0_files_still_load_bit_identically():
    # Written by gluon_quant 564cf79 (format 1.0: int8:NAME and anchor:NAME per weight)
    # with tests/data/export_v1_0/make_files.py, with the in-memory model's outputs.
    prefix = os.path.join(os.path.dirname(__file__), "data", "export_v1_0", "old")
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    assert loaded.metadata["version"] == "1.0"
    expected = np.load(prefix[:-3] + "expected.npz")
    assert np.array_equal(loaded(mx.nd.array(expected["x"])).asnumpy(), expected["y"])
    with pytest.raises(ArtifactError, match=r"old-meta\.json' holds no per-layer report.*"
                                            r"before format 3\.1.*export\(\)"):
        loaded.report()


def _rewrite_params(paths, change):
    """Apply ``change`` to the params arrays and re-sign the file in the metadata, so that
    only the structure checks can catch the edit."""
    arrays = parse_ndarray_file(open(paths["params"], "rb").read(), paths["params"])
    change(arrays)
    mx.nd.save(paths["params"], {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    data = open(paths["params"], "rb").read()
    meta = json.load(open(paths["meta"]))
    meta["files"]["params"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    json.dump(meta, open(paths["meta"], "w"))


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.update({"packed:anchors": a["packed:anchors"][:-1]}),
     "121 anchors for weights of 105744 values and 122 channels"),
    (lambda a: a.update({"packed:fix_index": np.array([10 ** 6], np.int32),
                         "packed:fix_value": np.ones(1, np.float32)}),
     "fix_index does not fit"),
    (lambda a: a.update({"packed:int8": a["packed:int8"].astype(np.float32)}),
     "packed:int8 is float32"),
    (lambda a: a.pop("packed:anchors"), "lacks the packed"),
    # the dense layer's 64 rows of 1568 values have their anchor positions stored
    (lambda a: a.update({"packed:anchor_at": np.full(128, 255, np.uint8)}),
     "anchor_at does not fit (128 uint8 values for the 64 channels"),
    (lambda a: a.update({"packed:anchor_at": a["packed:anchor_at"][:-1]}),
     "anchor_at does not fit (127 uint8 values"),
])
def test_inconsistent_packed_arrays_are_reported(exported, edit, message):
    prefix, paths, _ = exported
    _rewrite_params(paths, edit)
    with pytest.raises(ArtifactError, match=r"m-int8\.params.*" + re.escape(message)):
        gq.QuantizedSymbolBlock.imports(prefix)


def test_format_2_files_without_anchor_positions_load_bit_identically(exported, qnet):
    prefix, paths, _ = exported
    expected = qnet(_x()).asnumpy()
    assert parse_ndarray_file(open(paths["params"], "rb").read(),
                              paths["params"])["packed:anchor_at"].size == 2 * 64

    def as_2_1(arrays):     # what format 2.1 wrote: no packed:anchor_at
        del arrays["packed:anchor_at"]
    _rewrite_params(paths, as_2_1)
    meta = json.load(open(paths["meta"]))
    meta["version"] = "2.1"
    json.dump(meta, open(paths["meta"], "w"))
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    assert loaded.metadata["version"] == "2.1"
    assert np.array_equal(loaded(_x()).asnumpy(), expected)


def test_metadata_that_does_not_fit_the_params_file(exported):
    prefix, paths, _ = exported
    meta = json.load(open(paths["meta"]))
    meta["plain"][0]["shape"] = [17]                     # cnn_conv0_bias has 16 values
    json.dump(meta, open(paths["meta"], "w"))
    with pytest.raises(ArtifactError, match=r"m-int8\.params.*does not match the graph.*"
                                            r"plain:float32"):
        gq.QuantizedSymbolBlock.imports(prefix)
    meta["plain"][0].update(shape=[16], name="cnn_conv9_bias")
    json.dump(meta, open(paths["meta"], "w"))
    with pytest.raises(ArtifactError, match=r"cnn_conv9_bias.*missing \['cnn_conv0_bias'\]"):
        gq.QuantizedSymbolBlock.imports(prefix)
    meta["plain"][0]["dtype"] = "bfloat16"
    json.dump(meta, open(paths["meta"], "w"))
    with pytest.raises(ArtifactError, match=r"m-meta\.json' is malformed.*bad 'plain' entry"):
        gq.QuantizedSymbolBlock.imports(prefix)


def test_broken_metadata_and_missing_files(exported):
    prefix, paths, _ = exported
    meta_text = open(paths["meta"]).read()
    open(paths["meta"], "w").write(meta_text[:100])
    with pytest.raises(ArtifactError, match=r"m-meta\.json.*not valid JSON"):
        gq.QuantizedSymbolBlock.imports(prefix)
    meta = json.loads(meta_text)
    del meta["packed"]
    json.dump(meta, open(paths["meta"], "w"))
    with pytest.raises(ArtifactError, match="lacks packed"):
        gq.QuantizedSymbolBlock.imports(prefix)
    open(paths["meta"], "w").write(meta_text)
    os.unlink(paths["symbol"])
    with pytest.raises(ArtifactError, match=r"m-symbol\.json"):
        gq.QuantizedSymbolBlock.imports(prefix)
    with pytest.raises(ArtifactError, match=r"nothere-meta\.json"):
        gq.QuantizedSymbolBlock.imports(prefix + "nothere")


def test_files_swapped_between_exports(exported, tiny_batches, tmp_path):
    prefix, paths, _ = exported
    mx.random.seed(11)
    other = build_cnn()
    other.initialize(mx.init.Xavier())
    other_paths = gq.quantize(other, tiny_batches, progress=False).export(
        str(tmp_path / "other"))
    os.replace(other_paths["params"], paths["params"])
    with pytest.raises(ArtifactError, match=r"m-int8\.params"):
        gq.QuantizedSymbolBlock.imports(prefix)


def test_calibration_table_from_another_model_is_refused(qnet, tiny_cnn, tmp_path):
    qnet.calibration_table.save(str(tmp_path / "table.json"))
    table = CalibrationTable.load(str(tmp_path / "table.json"))
    assert table == qnet.calibration_table
    # the same model accepts it, with no data, and exports identically
    again = gq.quantize(tiny_cnn, calib_table=table, progress=False)
    assert np.array_equal(again(_x()).asnumpy(), qnet(_x()).asnumpy())
    other = mx.gluon.nn.HybridSequential(prefix="other_")
    with other.name_scope():
        other.add(mx.gluon.nn.Conv2D(4, 3), mx.gluon.nn.Flatten(), mx.gluon.nn.Dense(3))
    other.initialize()
    other(_x())
    with pytest.raises(CalibrationTableError, match="another graph"):
        gq.quantize(other, calib_table=table, progress=False)


def test_export_into_a_missing_or_unwritable_directory_leaves_nothing(qnet, tmp_path):
    with pytest.raises(ArtifactError, match="Cannot write"):
        qnet.export(str(tmp_path / "missing" / "m"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ArtifactError, match="Cannot write"):
        qnet.export(str(blocker / "m"))
    with pytest.raises(ArtifactError, match="calibration table"):
        qnet.calibration_table.save(str(blocker / "t.json"))
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_failure_while_moving_files_in_place_leaves_nothing(qnet, tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:                  # the symbol file is in place, then the disk fails
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(ArtifactError, match="No space left"):
        qnet.export(str(tmp_path / "m"))
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []


class _Grouped(mx.gluon.HybridBlock):
    def __init__(self, groups):
        super().__init__()
        with self.name_scope():
            self.c0 = mx.gluon.nn.Conv2D(16, 3, padding=1, activation="relu")
            self.c1 = mx.gluon.nn.Conv2D(16, 3, padding=1, groups=groups)
            self.d = mx.gluon.nn.Dense(5)

    def hybrid_forward(self, F, x):
        return self.d(self.c1(self.c0(x)))


@pytest.mark.parametrize("groups", [4, 16])
def test_grouped_convolutions_reload_bit_identically(groups, tmp_path):
    # 4 groups of 4 channels runs int8 with one weight scale for the tensor (MXNet's
    # per-channel scales are applied per group there: graph.guards.grouped_per_tensor),
    # 16 groups (depthwise) with per-channel scales; both are packed. Before the backend
    # rule, the grouped weight was packed for per-channel scales and reloads differed by
    # up to 4e-3.
    rs = np.random.RandomState(0)
    net = _Grouped(groups)
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(rs.rand(4, 3, 16, 16)) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    paths = qnet.export(str(tmp_path / "g"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "g"))
    assert np.array_equal(loaded(batches[0]).asnumpy(), qnet(batches[0]).asnumpy())
    packed = [entry["weight"] for entry in json.load(open(paths["meta"]))["packed"]]
    assert net.c1.weight.name in packed


class _Unrolled(mx.gluon.HybridBlock):
    """A hand-unrolled recurrence: the same Dense (``h2h``) at every step, and a ``head``
    tied to it (its parameters)."""

    def __init__(self, steps=4, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps
        with self.name_scope():
            self.i2h = mx.gluon.nn.Dense(64, flatten=False)
            self.h2h = mx.gluon.nn.Dense(64)
            self.head = mx.gluon.nn.Dense(64, params=self.h2h.params)

    def hybrid_forward(self, F, x):
        h = F.relu(self.i2h(x).mean(axis=1))
        for _ in range(self.steps):
            h = F.relu(self.h2h(h))
        return self.head(h)


@pytest.mark.parametrize("head_fp32", [False, True])
def test_a_weight_several_layers_read_is_packed_once(head_fp32, tmp_path):
    """A weight read by several int8 layers (a Dense applied at every step) was kept
    fp32 ("shared or not a plain parameter"): it is stored once as int8 where every
    reader's packing is the same one; read by an fp32 layer too, it stays fp32 (its
    rebuilt values would change that layer's output). Both reload bit-identically."""
    rs = np.random.RandomState(0)
    net = _Unrolled()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(rs.rand(8, 6, 32)) for _ in range(3)]
    qnet = gq.quantize(net, batches, exclude=[net.head] if head_fp32 else [],
                       progress=False)
    paths = qnet.export(str(tmp_path / "u"))
    meta = json.load(open(paths["meta"]))
    packed = [entry["weight"] for entry in meta["packed"]]
    weight = net.h2h.weight.name
    if head_fp32:
        assert weight not in packed
        assert meta["kept_fp32"][weight] == "also read by a layer that is not int8, or an output"
    else:
        assert packed.count(weight) == 1, meta["kept_fp32"]
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "u"))
    assert np.array_equal(loaded(batches[0]).asnumpy(), qnet(batches[0]).asnumpy())


class _ReturnsItsWeight(mx.gluon.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(256, 256), init=mx.init.Xavier())

    def hybrid_forward(self, F, x, weight):  # pylint: disable=arguments-differ
        return F.relu(F.FullyConnected(x, weight, no_bias=True, num_hidden=256)), weight


def test_a_weight_the_network_returns_stays_fp32(tmp_path):
    """A weight that is also an output of the graph was packed as int8, and the reloaded
    model returned its rebuilt values instead of the weight."""
    net = _ReturnsItsWeight()
    net.initialize()
    batches = [mx.nd.array(np.random.RandomState(i).rand(16, 256)) for i in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    assert coverage(qnet.report()) == (1, 1)
    paths = qnet.export(str(tmp_path / "w"))
    assert json.load(open(paths["meta"]))["kept_fp32"] == ({
        net.weight.name: "also read by a layer that is not int8, or an output"}
        if qnet.report()[0].quantized else {})     # fp32 where int8 pairs saturate
    out = gq.QuantizedSymbolBlock.imports(str(tmp_path / "w"))(batches[0])
    assert np.array_equal(out[1].asnumpy(), net.weight.data().asnumpy())


class _ComputedWeight(mx.gluon.HybridBlock):
    """A convolution whose weight goes through ``erf`` of its parameters, an operator the
    fold of parameter expressions does not evaluate."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.v = self.params.get("v", shape=(16, 3, 3, 3), init=mx.init.Xavier())

    def hybrid_forward(self, F, x, v):  # pylint: disable=arguments-differ
        w = F.broadcast_mul(v, F.erf(F.mean(v, axis=(1, 2, 3), keepdims=True)))
        return F.relu(F.Convolution(x, w, kernel=(3, 3), num_filter=16, no_bias=True))


def test_a_weight_computed_in_the_graph_is_named_in_the_metadata(tmp_path):
    """The export said nothing of a weight computed in the graph: its parameters stay fp32
    and ``kept_fp32`` says why."""
    net = _ComputedWeight()
    net.initialize()
    batches = [mx.nd.array(np.random.RandomState(i).rand(4, 3, 12, 12)) for i in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    paths = qnet.export(str(tmp_path / "c"))
    assert json.load(open(paths["meta"]))["kept_fp32"] == {
        "_computedweight0_broadcast_mul0": "computed in the graph (by broadcast_mul) at every "
                                           "call, not a parameter: its fp32 parameters are stored"}
