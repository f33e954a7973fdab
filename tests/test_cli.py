"""End-to-end tests of the ``gluon-quant`` command line on a small exported CNN."""
import io
import json
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import cli, cli_models
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from conftest import build_cnn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv):
    """``(exit code, stdout text)`` of an in-process ``gluon-quant`` run."""
    buf = io.StringIO()
    code = cli.main([str(a) for a in argv], stdout=buf)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An exported fp32 pair of a 3-channel CNN, a .npy of inputs and a folder of images."""
    root = tmp_path_factory.mktemp("cli")
    mx.random.seed(3)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    x = rs.rand(48, 3, 32, 32).astype("float32")
    reestimate_batchnorm(net, mx.nd.array(x))
    net.hybridize()
    net(mx.nd.array(x[:2]))
    net.export(str(root / "cnn"))
    np.save(root / "calib.npy", x)
    images = root / "images"
    images.mkdir()
    for i in range(6):
        pixels = (rs.rand(40 + 4 * i, 48, 3) * 255).astype("uint8")
        cv2.imwrite(str(images / ("img%d.png" % i)), pixels)
    return root


def test_quantize_npy_json_writes_report_and_table(workdir):
    code, out = run("quantize", workdir / "cnn", "--calib", workdir / "calib.npy",
                    "--out", workdir / "out" / "q", "--batch-size", 16, "--json", "--quiet")
    assert code == 0
    result = json.loads(out)
    # conv0, conv1, dense0, dense1 of the CNN: all four in int8, the convs fused with BN+ReLU.
    assert result["coverage"]["conv_dense_int8"] == 4
    assert result["coverage"]["conv_dense_total"] == 4
    assert result["coverage"]["fused_nodes"] >= 3
    assert result["batches"] == 3
    for path in result["files"].values():
        assert os.path.getsize(path) > 0
    with open(result["files"]["report"]) as handle:
        assert json.load(handle)["input_shapes"] == [[3, 32, 32]]
    # The export loads in Python and agrees with the fp32 model.
    prefix = str(workdir / "out" / "q")
    assert set(result["files"]) >= {"symbol", "params", "meta", "report", "calibration_table"}
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    fp32 = mx.gluon.SymbolBlock.imports(str(workdir / "cnn-symbol.json"), ["data"],
                                        str(workdir / "cnn-0000.params"))
    x = mx.nd.array(np.load(workdir / "calib.npy")[:16])
    a, b = fp32(x).asnumpy().ravel(), loaded(x).asnumpy().ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99
    # An int8 export is not a MODEL to quantize again.
    code, _ = run("quantize", prefix, "--calib", workdir / "calib.npy", "--out", prefix + "2")
    assert code == cli.EXIT_ERROR


def test_quantize_image_folder_with_plots(workdir):
    plots = workdir / "plots"
    code, out = run("quantize", workdir / "cnn-symbol.json", "--calib", workdir / "images",
                    "--image-size", 32, "--out", workdir / "img" / "q", "--plot", plots,
                    "--calibrator", "entropy", "--batch-size", 4)
    assert code == 0
    assert "4 of 4 conv/dense layers in int8" in out
    pngs = sorted(os.listdir(plots))
    # thresholds.png plus one histogram per calibrated tensor (input + 4 layers at least).
    assert "thresholds.png" in pngs and len([p for p in pngs if p.startswith("hist_")]) >= 5
    for name in pngs:
        with open(plots / name, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC


def test_files_that_do_not_decode_are_skipped_and_named(workdir, tmp_path, caplog):
    """A truncated JPEG and a .tif beside good images: the .tif is read, the truncated
    file is skipped with a warning naming it (one bad file in hundreds used to stop the
    run, with "Traceback (most recent call last):" as the reason); a folder of bad files
    only is refused, naming them."""
    from gluon_quant import cli_models
    folder = tmp_path / "mixed"
    folder.mkdir()
    rs = np.random.RandomState(1)
    for i in range(3):
        cv2.imwrite(str(folder / ("ok%d.png" % i)), (rs.rand(36, 40, 3) * 255).astype("uint8"))
    cv2.imwrite(str(folder / "scan.tif"), (rs.rand(30, 30, 3) * 255).astype("uint8"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    model = cli_models.load_model(str(workdir / "cnn"), image_size=32)
    with caplog.at_level("WARNING", logger="gluon_quant"):
        batches = cli_models.load_calibration(str(folder), model, batch_size=3, progress=False)
    assert [b.shape for b in batches] == [(3, 3, 32, 32), (1, 3, 32, 32)]
    assert "Skipped 1 of the image files" in caplog.text and "broken.jpg" in caplog.text
    assert "Decoding failed" in caplog.text
    # max_images counts decoded images: the bad file does not take a place.
    assert sum(len(b) for b in cli_models.load_calibration(
        str(folder), model, batch_size=3, max_images=4, progress=False)) == 4
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not an image")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(gq.CalibrationDataError, match=r"None of the 2 image files.*a\.jpg"):
        cli_models.load_calibration(str(bad), model, progress=False)


@pytest.mark.parametrize("argv, fragments", [
    # the 32 x 32 CNN (its Dense reads 32 * 8 * 8 features) and images read at 224
    (["{w}/cnn", "--calib", "{w}/images"],
     ["the images of", "(4, 3, 224, 224) batches", "Shape inconsistent", "--image-size"]),
    (["{w}/gray", "--calib", "{w}/images", "--image-size", 32],
     ["(4, 3, 32, 32) batches", "Provided = [8,1,3,3]", "Pass --calib FILE.npy"]),
    (["{w}/pair", "--calib", "{w}/images"], ["pair takes 2 inputs, and images give one"]),
    (["{w}/gray"], ["with no --calib, it is given random (4, 3, 224, 224) batches"]),
])
def test_an_exported_model_that_images_do_not_fit_is_refused_before_reading(
        workdir, tmp_path, capsys, argv, fragments):
    """Images are read as an ImageNet classifier takes them; a user's own exported model
    (one channel, another size, two inputs) gets that said, with what to pass instead,
    before any image is decoded (it was a failed calibration pass, naming neither)."""
    if not (workdir / "gray-symbol.json").exists():
        gray = mx.gluon.nn.HybridSequential()
        gray.add(mx.gluon.nn.Conv2D(8, 3, activation="relu"), mx.gluon.nn.Dense(4))
        gray.initialize()
        gray.hybridize()
        gray(mx.nd.zeros((1, 1, 32, 32)))
        gray.export(str(workdir / "gray"))
        pair = _TwoInputs()
        pair.initialize()
        pair.hybridize()
        pair(mx.nd.zeros((1, 3, 8, 8)), mx.nd.zeros((1, 5)))
        pair.export(str(workdir / "pair"))
    command = "bench" if "--calib" not in argv else "quantize"
    extra = ["--batch-sizes", 4] if command == "bench" else ["--out", tmp_path / "q"]
    calls = []
    original = cli_models._decode
    try:
        cli_models._decode = lambda path: calls.append(path) or original(path)
        code, _ = run(command, *[str(a).format(w=workdir) for a in argv], "--batch-size", 4,
                      *extra)
    finally:
        cli_models._decode = original
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_ERROR and len(err.splitlines()) == 1, err
    assert all(fragment in err for fragment in fragments), err
    assert calls == [] and not os.listdir(tmp_path)


def test_a_module_api_checkpoint_quantizes_without_its_label(tmp_path):
    """``Module.save_checkpoint`` writes a graph ending in ``SoftmaxOutput`` with a
    ``softmax_label`` argument and ``-0003.params`` named ``arg:``/``aux:``: the label was
    taken for a second input ("the network takes 2 inputs (data, softmax_label)"). The
    head now runs as a softmax, and the int8 export agrees with ``Module.predict``."""
    rs = np.random.RandomState(0)
    x = rs.rand(48, 3, 16, 16).astype("float32")
    y = rs.randint(0, 5, 48).astype("float32")
    data = mx.sym.var("data")
    h = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), name="conv")
    h = mx.sym.Activation(mx.sym.BatchNorm(h, name="bn"), act_type="relu")
    h = mx.sym.FullyConnected(mx.sym.flatten(h), num_hidden=5, name="fc")
    mod = mx.mod.Module(mx.sym.SoftmaxOutput(h, name="softmax"), data_names=["data"],
                        label_names=["softmax_label"])
    mod.fit(mx.io.NDArrayIter(x, y, batch_size=16), num_epoch=3,
            optimizer_params={"learning_rate": 0.05})
    mod.save_checkpoint(str(tmp_path / "mod"), 3)
    np.save(tmp_path / "calib.npy", x)
    code, out = run("quantize", tmp_path / "mod", "--calib", tmp_path / "calib.npy",
                    "--out", tmp_path / "q", "--quiet")
    assert code == 0, out
    expected = mod.predict(mx.io.NDArrayIter(x, batch_size=16)).asnumpy()
    got = gq.QuantizedSymbolBlock.imports(str(tmp_path / "q"))(mx.nd.array(x)).asnumpy()
    assert got.shape == (48, 5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)        # still a softmax
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.95
    assert np.abs(got - expected).max() < 0.05


def test_report_text_json_and_fp32_only(workdir):
    prefix = workdir / "rep" / "q"
    assert run("quantize", workdir / "cnn", "--calib", workdir / "calib.npy", "--out", prefix,
               "--exclude", "Pooling", "--quiet")[0] == 0
    code, text = run("report", prefix)
    assert code == 0
    assert "-int8.params" in text     # the export's files and sizes
    assert "convolution/dense layers in int8: 4 of 4" in text
    assert "excluded by user" in text
    code, out = run("report", prefix, "--json")
    state = json.loads(out)
    assert code == 0 and state["coverage"]["conv_dense_int8"] == 4
    pools = [r for r in state["layers"] if r["op"] == "Pooling"]
    assert len(pools) == 2 and not any(r["quantized"] for r in pools)
    code, out = run("report", prefix, "--fp32-only", "--json")
    assert code == 0
    assert {r["op"] for r in json.loads(out)["layers"]} == {"Pooling"}


def test_compare_ranks_layers_and_plots(workdir):
    code, out = run("compare", workdir / "cnn", "--calib", workdir / "calib.npy",
                    "--num-batches", 2, "--plot", workdir / "cmp", "--json", "--quiet")
    assert code == 0
    result = json.loads(out)
    sqnr = [r["sqnr_db"] for r in result["layers"]]
    assert sqnr == sorted(sqnr) and len(sqnr) >= 4
    assert result["batches"] == 2
    assert result["output_cosine"] > 0.99
    with open(result["plots"][0], "rb") as handle:
        assert handle.read(8) == PNG_MAGIC
    assert "floor_sqnr_db" in result["layers"][0] and result["layers"][0]["floor_sqnr_db"] is None


def test_compare_times_every_int8_node(workdir):
    code, out = run("compare", workdir / "cnn", "--calib", workdir / "calib.npy",
                    "--num-batches", 1, "--timing", "--json", "--quiet")
    assert code == 0
    timing = json.loads(out)["timing"]
    int8_layers = [r for r in json.loads(out)["layers"] if r["quantized"]]
    assert len(timing["layers"]) == len(int8_layers) >= 4
    assert all(t["fp32_ms"] > 0 and t["int8_ms"] > 0 and not t["note"]
               for t in timing["layers"])
    assert timing["fp32_total_ms"] > 0 and timing["int8_total_ms"] > 0


def test_compare_with_floor(workdir):
    code, out = run("compare", workdir / "cnn", "--calib", workdir / "calib.npy",
                    "--num-batches", 2, "--floor")
    assert code == 0
    assert "floor dB" in out and "furthest behind the 8-bit floor:" in out
    # ``doctor`` is the same command (the name README and docs use for it)
    code, out = run("doctor", workdir / "cnn", "--calib", workdir / "calib.npy",
                    "--num-batches", 2, "--floor", "--json", "--quiet")
    layers = json.loads(out)["layers"]
    assert all(r["floor_sqnr_db"] is not None for r in layers)
    # A healthy small CNN: weight rounding costs its first convolution (27 weights per
    # channel) 3.6 dB beyond the floor, nothing comes near a broken kernel's 15+ dB.
    assert max(r["floor_gap_added_db"] for r in layers) < 6.0


def test_bench_reports_ratios(workdir):
    code, out = run("bench", workdir / "cnn", "--calib", workdir / "calib.npy",
                    "--batch-sizes", "1,8", "--repeat", 3, "--warmup", 1, "--json", "-q")
    assert code == 0
    rows = json.loads(out)["results"]
    assert [r["batch"] for r in rows] == [1, 8]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["fp32_ms"] / r["int8_ms"])
        assert r["int8_per_s"] == pytest.approx(r["batch"] * 1e3 / r["int8_ms"])


class _TwoInputs(mx.gluon.HybridBlock):
    def __init__(self):
        super().__init__(prefix="pair_")
        with self.name_scope():
            self.image = mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu")
            self.tokens = mx.gluon.nn.Embedding(20, 8)
            self.head = mx.gluon.nn.Dense(4)

    def hybrid_forward(self, F, image, tokens):
        pooled = F.mean(self.image(image), axis=(2, 3))
        return self.head(F.concat(pooled, F.mean(self.tokens(tokens), axis=1), dim=1))


def test_bench_times_a_two_input_model_on_its_calibration_samples(tmp_path):
    """bench feeds every input, the calibration samples repeated to each batch size (a
    random image would not do for token ids)."""
    net = _TwoInputs()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    images, tokens = rs.rand(12, 3, 8, 8).astype("float32"), rs.randint(0, 20, (12, 5))
    net.hybridize()
    net(mx.nd.array(images[:2]), mx.nd.array(tokens[:2]))
    net.export(str(tmp_path / "pair"))
    np.savez(tmp_path / "calib.npz", image=images, tokens=tokens.astype("float32"))
    code, out = run("bench", tmp_path / "pair", "--calib", tmp_path / "calib.npz",
                    "--batch-sizes", "1,20", "--repeat", 2, "--warmup", 1, "--json", "-q")
    assert code == 0, out
    rows = json.loads(out)["results"]
    assert [r["batch"] for r in rows] == [1, 20]
    assert all(r["int8_ms"] > 0 and r["fp32_ms"] > 0 for r in rows)
    assert json.loads(out)["input_shapes"] == [[3, 8, 8], [5]]


class _Scaled(mx.gluon.HybridBlock):
    """Features and one scale per sample (a ``(N,)`` input, as ``valid_length`` is)."""

    def __init__(self):
        super().__init__()
        self.dense = mx.gluon.nn.Dense(4)

    def hybrid_forward(self, F, x, scale):  # pylint: disable=arguments-differ
        return self.dense(F.broadcast_mul(x, scale.reshape((-1, 1))))


def test_bench_names_an_input_of_one_value_per_sample(tmp_path):
    """An input of one value per sample is named "scalar" in the shapes bench prints (it
    printed "inputs 6, ;")."""
    net = _Scaled()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    x, scale = rs.rand(8, 6).astype("float32"), rs.rand(8).astype("float32")
    net.hybridize()
    net(mx.nd.array(x), mx.nd.array(scale))
    net.export(str(tmp_path / "scaled"))
    np.savez(tmp_path / "calib.npz", x=x, scale=scale)
    code, out = run("bench", tmp_path / "scaled", "--calib", tmp_path / "calib.npz",
                    "--batch-sizes", "2", "--repeat", 2, "--warmup", 1)
    assert code == 0, out
    assert "inputs 6, scalar;" in out


def test_an_imported_pair_is_named_as_a_symbol_block(tmp_path, capsys):
    """Warnings name an exported fp32 pair's class as the user knows it, SymbolBlock, not
    the adapter's GraphBlock it is loaded as."""
    net = _Scaled()
    net.initialize(mx.init.Xavier())
    x, scale = np.ones((4, 6), "float32"), np.ones(4, "float32")
    net.hybridize()
    net(mx.nd.array(x), mx.nd.array(scale))
    net.export(str(tmp_path / "scaled"))
    np.savez(tmp_path / "calib.npz", x=x, scale=scale)
    code, out = run("quantize", tmp_path / "scaled", "--calib", tmp_path / "calib.npz",
                    "--out", tmp_path / "q", "--exclude", "FullyConnected")
    assert code == 0, out
    err = capsys.readouterr().err
    assert "No layer of SymbolBlock runs in int8" in err, err + out


@pytest.mark.parametrize("argv, fragment", [
    (["quantize", "{w}/cnn", "--calib", "{w}/missing", "--out", "{w}/x"], "does not exist"),
    (["quantize", "{w}/cnn", "--calib", "{w}/cnn-symbol.json", "--out", "{w}/x"],
     "is a JSON file, not data: a calibration table (the -calib.json a run writes) rebuilds "
     "its model in Python, gluon_quant.quantize(net, calib_table="),
    (["quantize", "resnet18_v11", "--calib", "{w}/calib.npy", "--out", "{w}/x"],
     "Did you mean 'resnet18_v1'"),
    (["quantize", "{w}/cnn", "--calib", "{w}/calib.npy", "--out", "{w}/x",
      "--calibrator", "kullback"], "Unknown calibration method 'kullback'"),
    (["quantize", "{w}/cnn", "--calib", "{w}/calib.npy", "--out", "{w}/x",
      "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["report", "{w}/nothing"], "Cannot read the report"),
    (["bench", "{w}/cnn", "--batch-sizes", "1,x"], "--batch-sizes must be"),
    (["quantize", "{w}/cnn", "--calib", "{w}/calib.npy", "--out", "{w}/x",
      "--address", "auto"], "--address 'auto' needs --engine ray"),
    (["tune", "{w}/cnn", "--calib", "{w}/calib.npy", "--out", "{w}/x", "--tolerance", "0.1",
      "--eval-data", "{w}/calib.npy", "--engine", "process"], "pass --engine ray"),
    # GluonCV's own failure, not a download's (it said 'Cannot fetch ... use --no-pretrained')
    (["quantize", "vgg16_ucf101", "--no-pretrained", "--calib", "{w}/calib.npy", "--out",
      "{w}/x"], "GluonCV cannot build 'vgg16_ucf101' with random weights"),
])
def test_bad_input_exits_1_with_one_line(workdir, capsys, argv, fragment):
    code, out = run(*[a.format(w=workdir) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and "Traceback" not in out
    assert len(err) == 1 and fragment in err[0] and err[0].startswith("gluon-quant ")


@pytest.mark.parametrize("model, before", [
    ("yolo3_mobilenet1.0_voc", "internal error: TypeError: YOLOV3TargetMerger..."),
    ("center_net_resnet18_v1b_voc", "Cannot fetch the pretrained weights (its backbone's)"),
])
def test_random_weight_zoo_models_quantize_offline(workdir, model, before):
    """--no-pretrained: no download of a backbone, and BatchNorm statistics set from the
    images even where the net's training-mode forward asks for training targets."""
    code, out = run("quantize", model, "--no-pretrained", "--calib", workdir / "images",
                    "--image-size", 128, "--batch-size", 3, "--out", workdir / "zoo" / model,
                    "--quiet", "--json")
    assert code == 0, before
    coverage = json.loads(out)["coverage"]
    assert coverage["conv_dense_int8"] >= 0.9 * coverage["conv_dense_total"] > 20


def test_a_net_taking_one_image_per_batch_is_pointed_to_batch_size_1(workdir, monkeypatch,
                                                                     capsys):
    """GluonCV's Faster R-CNN runs one image at a time: BatchNorm statistics are set on the
    first calibration batch when all of them stacked fail; where only one sample runs,
    the error says to use --batch-size 1, and where none does (a video net fed images),
    it does not."""
    from gluon_quant.zoo import batchnorm
    real, seen, limit = batchnorm.reestimate_batchnorm, [], [1]

    def one_image_only(net, batch):
        seen.append(batch.shape[0])
        if batch.shape[0] > limit[0]:
            raise gq.ModelExecutionError("Setting the BatchNorm statistics: the network "
                                         "fails inside MXNet on the batch.")
        return real(net, batch)

    monkeypatch.setattr(batchnorm, "reestimate_batchnorm", one_image_only)
    argv = ["quantize", "yolo3_mobilenet1.0_voc", "--no-pretrained", "--calib",
            workdir / "images", "--image-size", 96, "--out", workdir / "one" / "q", "--quiet"]
    code, _ = run(*argv, "--batch-size", 3)
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and seen == [6, 3, 1] and "use --batch-size 1" in err
    seen.clear()
    code, _ = run(*argv, "--batch-size", 1)
    assert code == 0 and seen == [6, 1]
    seen.clear()
    limit[0] = 0        # no batch runs
    code, _ = run(*argv, "--batch-size", 3)
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and seen == [6, 3, 1] and "batch-size" not in err
    assert "fails inside MXNet on the batch" in err


def test_quantize_on_ray_gives_the_same_model(workdir, monkeypatch):
    ray = pytest.importorskip("ray")
    # Shared test machine: keep Ray's memory monitor from killing the workers (test_ray.py).
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    common = ["quantize", workdir / "cnn", "--calib", workdir / "calib.npy", "--batch-size",
              8, "--quiet"]
    assert run(*common, "--out", workdir / "one" / "q")[0] == 0
    # No address: a local Ray is started for the command and shut down after it.
    assert run(*common, "--out", workdir / "ray" / "q", "--engine", "ray", "--shards", 3)[0] == 0
    assert not ray.is_initialized()
    tables = [gq.CalibrationTable.load(str(workdir / d / "q-calib.json")) for d in ("one", "ray")]
    assert len(tables[0]) >= 5 and dict(tables[1]) == dict(tables[0])
    x = mx.nd.array(np.load(workdir / "calib.npy")[:16])
    one, par = (gq.QuantizedSymbolBlock.imports(str(workdir / d / "q")) for d in ("one", "ray"))
    np.testing.assert_array_equal(par(x).asnumpy(), one(x).asnumpy())   # bias corrected too


def test_tune_scores_top1_on_labelled_data(workdir):
    x = np.load(workdir / "calib.npy")
    fp32 = mx.gluon.SymbolBlock.imports(str(workdir / "cnn-symbol.json"), ["data"],
                                        str(workdir / "cnn-0000.params"))
    labels = fp32(mx.nd.array(x)).argmax(axis=1).asnumpy().astype("int64")
    labels[:12] = (labels[:12] + 1) % 10          # fp32 gets 36 of 48 right: 0.75
    np.savez(workdir / "val.npz", x=x, y=labels)
    code, out = run("tune", workdir / "cnn", "--calib", workdir / "calib.npy", "--eval-data",
                    workdir / "val.npz", "--tolerance", 0.5, "--out", workdir / "tuned" / "q",
                    "--json", "--quiet")
    assert code == 0
    result = json.loads(out)
    assert result["tune"]["fp32_score"] == 0.75
    assert result["tune"]["stopped"] == "tolerance_met" and len(result["tune"]["trials"]) == 1
    assert result["tune"]["trials"][0]["within"] is True
    with open(result["files"]["tune"]) as handle:
        assert json.load(handle) == result["tune"]
    assert os.path.getsize(result["files"]["params"]) > 0


def test_tune_scores_a_folder_of_class_subfolders(workdir, tmp_path, capsys):
    """--eval-data may be a labelled image folder (val/<class>/*.png, ImageNet's layout):
    each image's label is its folder's index in sorted order, so the score is the accuracy
    computed here on the same images; a bad file is skipped with its label. It was refused
    as "Is a directory"."""
    from gluon_quant import cli_models
    rs = np.random.RandomState(2)
    folders = ["n01", "n02", "n03"]
    for index, name in enumerate(folders):
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(4):
            pixels = (rs.rand(36, 40, 3) * 255).astype("uint8")
            cv2.imwrite(str(tmp_path / "val" / name / ("%d.png" % i)), pixels)
    (tmp_path / "val" / "n02" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    model = cli_models.load_model(str(workdir / "cnn"), image_size=32)
    images, labels, classes = cli_models.load_eval_images(str(tmp_path / "val"), model,
                                                          progress=False)
    assert classes == folders and list(labels) == [0] * 4 + [1] * 4 + [2] * 4
    predicted = model.net(mx.nd.array(images)).argmax(axis=1).asnumpy()
    code, out = run("tune", workdir / "cnn", "--calib", workdir / "calib.npy", "--eval-data",
                    tmp_path / "val", "--image-size", 32, "--tolerance", 1, "--out",
                    tmp_path / "q", "--json", "--quiet")
    assert code == 0
    assert json.loads(out)["tune"]["fp32_score"] == pytest.approx(np.mean(predicted == labels))
    code, out = run("tune", workdir / "cnn", "--calib", workdir / "calib.npy", "--eval-data",
                    tmp_path / "val", "--image-size", 32, "--tolerance", 1, "--out",
                    tmp_path / "q2")
    assert "top-1 accuracy on 12 labelled samples (labels: 3 class folders in sorted order, " \
           "n01=0, n02=1, n03=2)" in out
    code, out = run("tune", workdir / "cnn", "--calib", workdir / "calib.npy", "--eval-data",
                    workdir / "images", "--image-size", 32, "--tolerance", 1, "--out",
                    tmp_path / "q3")
    assert code == 0 and "top-1 agreement with fp32 on 6 samples" in out


class _TwoHeads(mx.gluon.HybridBlock):
    """A convolution, then two dense heads (4 and 3 classes)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = mx.gluon.nn.Conv2D(8, 3, activation="relu")
            self.a, self.b = mx.gluon.nn.Dense(4), mx.gluon.nn.Dense(3)

    def hybrid_forward(self, F, x):
        h = F.mean(self.conv(x), axis=(2, 3))
        return self.a(h), self.b(h)


def test_tune_says_which_output_of_a_two_headed_model_it_scores(tmp_path):
    """A model with two heads is scored on the first: the output said only 'top-1
    accuracy', whichever head the labels were meant for."""
    model = _TwoHeads()
    model.initialize(mx.init.Xavier())
    model.hybridize()
    x = np.random.RandomState(0).rand(16, 3, 12, 12).astype("float32")
    labels = model(mx.nd.array(x))[0].argmax(axis=1).asnumpy().astype("int64")
    model.export(str(tmp_path / "heads"))
    np.save(tmp_path / "calib.npy", x)
    np.savez(tmp_path / "val.npz", x=x, y=labels)
    code, out = run("tune", tmp_path / "heads", "--calib", tmp_path / "calib.npy",
                    "--eval-data", tmp_path / "val.npz", "--tolerance", 1, "--out",
                    tmp_path / "q")
    assert code == 0
    assert "score: top-1 accuracy of its first output (of 2) on 16 labelled samples" in out


def test_tune_names_the_arrays_of_an_eval_file_it_cannot_read(workdir, tmp_path, capsys):
    """An .npz saved with other names (data=, label=) is refused naming what it holds and
    how to save it (it said "holds inputs [...] and labels None")."""
    x = np.load(workdir / "calib.npy")
    np.savez(tmp_path / "val.npz", data=x, label=np.zeros(len(x)))
    code, _ = run("tune", workdir / "cnn", "--calib", workdir / "calib.npy", "--eval-data",
                  tmp_path / "val.npz", "--tolerance", 0.5, "--out", tmp_path / "q")
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    assert "(arrays data (48, 3, 32, 32), label (48,))" in err
    assert "np.savez(path, x=..., y=...)" in err


def _exported_pair(tmp_path, seed):
    """``(images, tokens as float32, fp32's top-1)``: _TwoInputs exported as tmp_path/pair."""
    net = _TwoInputs()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(seed)
    images, tokens = rs.rand(24, 3, 8, 8).astype("float32"), rs.randint(0, 20, (24, 5))
    net.hybridize()
    labels = net(mx.nd.array(images), mx.nd.array(tokens)).argmax(axis=1).asnumpy()
    net.export(str(tmp_path / "pair"))
    return images, tokens.astype("float32"), labels


def _tune_pair_fp32_score(tmp_path):
    """fp32's score in ``gluon-quant tune`` of tmp_path/pair on calib.npz and val.npz."""
    code, out = run("tune", tmp_path / "pair", "--calib", tmp_path / "calib.npz",
                    "--eval-data", tmp_path / "val.npz", "--tolerance", 0.5,
                    "--out", tmp_path / "tuned", "--json", "--quiet")
    assert code == 0, out
    return json.loads(out)["tune"]["fp32_score"]


def test_tune_scores_a_two_input_model(tmp_path):
    """--eval-data holds one array per input (in input order) and the labels y."""
    images, tokens, labels = _exported_pair(tmp_path, 1)
    labels[:6] = (labels[:6] + 1) % 4                   # fp32 gets 18 of 24 right: 0.75
    np.savez(tmp_path / "calib.npz", image=images, tokens=tokens)
    np.savez(tmp_path / "val.npz", image=images, tokens=tokens, y=labels.astype("int64"))
    assert _tune_pair_fp32_score(tmp_path) == 0.75
    np.savez(tmp_path / "one.npz", image=images, y=labels.astype("int64"))
    assert run("tune", tmp_path / "pair", "--calib", tmp_path / "calib.npz", "--eval-data",
               tmp_path / "one.npz", "--tolerance", 0.5, "--out", tmp_path / "t2",
               "--quiet")[0] == cli.EXIT_ERROR


def test_npz_arrays_named_after_the_inputs_go_to_those_inputs(tmp_path, capsys):
    """A .npz whose arrays are named after the graph's inputs is read by name, in whatever
    order it was saved (it was read in file order: tokens fed to the image input failed in
    MXNet's shape inference); arrays named otherwise go in the order saved, with a warning
    naming that order; a count that fits no input list is refused naming both."""
    images, tokens, labels = _exported_pair(tmp_path, 2)
    np.savez(tmp_path / "calib.npz", data1=tokens, data0=images)
    np.savez(tmp_path / "val.npz", y=labels.astype("int64"), data1=tokens, data0=images)
    assert _tune_pair_fp32_score(tmp_path) == 1.0
    np.savez(tmp_path / "other.npz", image=images, tokens=tokens)
    capsys.readouterr()
    assert run("bench", tmp_path / "pair", "--calib", tmp_path / "other.npz",
               "--batch-sizes", "2", "--repeat", 1, "--warmup", 1)[0] == 0
    assert ("arrays ['image', 'tokens'] are taken as inputs ['data0', 'data1'], in the order "
            "they were saved" in capsys.readouterr().err)
    np.savez(tmp_path / "three.npz", a=images, b=tokens, c=labels)
    code, _ = run("quantize", tmp_path / "pair", "--calib", tmp_path / "three.npz",
                  "--out", tmp_path / "q3")
    assert code == cli.EXIT_ERROR
    assert ("holds arrays ['a', 'b', 'c'] but the model has 2 input(s) ['data0', 'data1']"
            in capsys.readouterr().err)


def test_report_reads_a_python_export(workdir, tiny_cnn, tiny_batches):
    """`gluon-quant report` on what qnet.export() wrote (no PREFIX-report.json beside it)
    reads the report stored in the export's metadata."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, exclude=["Pooling"], progress=False)
    prefix = workdir / "py_export"
    qnet.export(str(prefix))
    code, out = run("report", prefix, "--json")
    state = json.loads(out)
    assert code == 0 and state["coverage"]["conv_dense_int8"] == 4
    assert [r["layer"] for r in state["layers"]] == [r.layer for r in qnet.report()]
    assert sorted(state["files"]) == ["meta", "params", "symbol"]
    code, text = run("report", prefix)
    assert code == 0 and "excluded by user" in text and "-int8.params" in text
    # any file of the export names it too (-symbol.json was "not a gluon_quant report
    # (KeyError: 'layers')"), as it does for the CLI's own outputs
    for name in ("py_export-symbol.json", "py_export-int8.params", "py_export-meta.json"):
        code, out = run("report", workdir / name, "--json")
        assert code == 0 and json.loads(out)["coverage"]["conv_dense_int8"] == 4, name
    for name in ("rep/q-symbol.json", "rep/q-calib.json", "rep/q-report.json"):
        if (workdir / name).exists():
            code, out = run("report", workdir / name, "--json")
            assert code == 0 and json.loads(out)["coverage"]["conv_dense_total"] == 4, name


def test_a_closed_output_pipe_ends_quietly(workdir, capsys):
    """`gluon-quant report PREFIX --json | head -1`: the reader closes the pipe early."""
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    prefix = workdir / "pipe" / "q"
    assert run("quantize", workdir / "cnn", "--calib", workdir / "calib.npy", "--out", prefix,
               "--quiet")[0] == 0
    assert cli.main(["report", str(prefix), "--json"], stdout=Closed()) == cli.EXIT_PIPE == 141
    assert capsys.readouterr().err == ""


def test_truncated_report_is_an_error(workdir, capsys):
    path = workdir / "broken-report.json"
    path.write_text('{"layers": [')
    assert run("report", path)[0] == cli.EXIT_ERROR
    assert "not a valid report" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert run("quantize", "resnet18_v1")[0] == cli.EXIT_USAGE      # no --calib/--out
    assert run("frobnicate")[0] == cli.EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("prefix", ["out/", ""])
def test_out_naming_a_folder_is_a_usage_error(workdir, capsys, prefix):
    """``--out out/`` wrote hidden ``out/-symbol.json``, ``out/-int8.params``... files."""
    before = sorted(p.name for p in workdir.iterdir())
    assert run("quantize", workdir / "cnn", "--calib", workdir / "calib.npy", "--out",
               str(workdir) + "/" + prefix if prefix else prefix)[0] == cli.EXIT_USAGE
    assert "names a folder: give a prefix with a file name, e.g." in capsys.readouterr().err
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_help_has_examples_for_every_command():
    parser = cli.build_parser()
    assert "examples:" in parser.format_help()
    subparsers = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    assert set(subparsers.choices) == {"quantize", "tune", "report", "compare", "doctor",
                                       "bench", "demo"}
    for sub in subparsers.choices.values():
        assert "examples:" in sub.format_help() and "exit codes" in sub.format_help()


def test_console_process_prints_one_line_and_no_traceback(workdir):
    cmd = [sys.executable, "-m", "gluon_quant.cli", "report", str(workdir / "absent")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    verbose = subprocess.run(cmd + ["--verbose"], capture_output=True, text=True, cwd=ROOT,
                             timeout=120, check=False)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_package_runs_as_the_command_line():
    # `python -m gluon_quant` is the command line too (no __main__ made it an error)
    proc = subprocess.run([sys.executable, "-m", "gluon_quant", "report", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: gluon-quant report") and "examples:" in proc.stdout


@pytest.mark.slow
def test_demo_runs_offline():
    code, out = run("demo", "--max-photos", 2, "--repeat", 1)
    assert code == 0 and "int8" in out
