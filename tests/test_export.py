"""QuantizedHybridBlock.export: files, integrity checks, atomic writes, stock-MXNet pair."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import _packing
from gluon_quant._io import parse_ndarray_file
from gluon_quant.calib import CalibrationTable
from gluon_quant.errors import (ArtifactError, CalibrationTableError, GraphError,
                                UnknownNameError)

from conftest import build_cnn


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
    assert arrays["int8:cnn_conv1_weight"].dtype == np.int8
    assert arrays["int8:cnn_conv1_weight"].shape == (32, 16, 3, 3)
    assert arrays["anchor:cnn_conv1_weight"].shape == (32,)
    assert not any(k.startswith("arg:cnn_conv") and k.endswith("weight") for k in arrays)
    # the same arrays as mx.nd.load reads
    loaded = mx.nd.load(paths["params"])
    assert sorted(loaded) == sorted(arrays)
    for key, value in loaded.items():
        assert np.array_equal(value.asnumpy(), arrays[key])


def test_packing_reproduces_runtime_quantization_and_naive_does_not():
    rs = np.random.RandomState(0)
    weight = (rs.randn(64, 32, 3, 3) * 0.05).astype(np.float32)
    weight[3] = 0.0                                     # a dead channel
    params = {"w": weight, "g": rs.uniform(-2, 2, 64).astype(np.float32),
              "v": rs.uniform(0.01, 3, 64).astype(np.float32)}
    params["g"][5] = 0.0                                # gamma 0: folded weights all 0
    spec = _packing.PackSpec("w", True, gamma="g", var="v", eps=1e-5)
    q, anchors = _packing.pack(spec, params)
    rebuilt = _packing.unpack(spec, q, anchors, params)
    again, maxabs = _packing.runtime_quantize(spec, {**params, "w": rebuilt})
    expected_q, expected_max = _packing.runtime_quantize(spec, params)
    assert np.array_equal(again, q) and np.array_equal(q, expected_q)
    assert np.array_equal(maxabs, expected_max)
    # naive max/127 rounding of the folded weights gives other int8 values
    folded = weight * _packing.fold_factor(spec, params)[:, None, None, None]
    step = np.abs(folded).reshape(64, -1).max(axis=1) / 127
    naive = np.rint(folded / np.where(step > 0, step, 1)[:, None, None, None])
    assert np.mean(naive != q) > 0.005


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
    meta["version"] = "2.0"
    json.dump(meta, open(paths["meta"], "w"))
    with pytest.raises(ArtifactError, match=r"m-meta\.json.*version 2\.0, newer.*upgrade"):
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
