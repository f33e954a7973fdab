"""Gluon nets written for MXNet's NumPy mode (``npx.set_np()``, as MXNet 1.9's own
tutorials write them): quantized, called, exported and examined with ``mxnet.np`` arrays."""
import mxnet as mx
import numpy as onp
import pytest
from mxnet import npx
from mxnet.gluon import nn

import gluon_quant as gq
from conftest import coverage


@pytest.fixture
def np_mode():
    npx.set_np()
    try:
        yield mx.np
    finally:
        npx.reset_np()


def _cos(a, b):
    a, b = a.asnumpy().ravel(), b.asnumpy().ravel()
    return float(onp.dot(a, b) / (onp.linalg.norm(a) * onp.linalg.norm(b)))


class Mlp(nn.HybridBlock):
    """The way the tutorials write a hybrid net: ``F.npx`` operators."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.hidden = nn.Dense(256)
            self.output = nn.Dense(10)

    def hybrid_forward(self, F, x):
        return self.output(F.npx.relu(self.hidden(x)))


def test_numpy_mode_cnn_quantizes_runs_and_exports(np_mode, tmp_path):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, activation="relu"), nn.MaxPool2D(),
            nn.Conv2D(32, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
            nn.GlobalAvgPool2D(), nn.Dense(64, activation="relu"), nn.Dense(10))
    net.initialize(mx.init.Xavier())        # deferred shapes: finished by quantize
    rs = onp.random.RandomState(0)
    batches = [np_mode.array(rs.rand(4, 3, 32, 32).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    x = batches[0]
    ref, out = net(x), qnet(x)              # the fp32 net still runs as written
    assert isinstance(out, mx.np.ndarray) and out.shape == (4, 10)
    assert _cos(ref, out) > 0.999
    assert coverage(qnet.report()) == (4, 4)
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    again = loaded(x)
    assert isinstance(again, mx.np.ndarray)
    assert onp.array_equal(again.asnumpy(), out.asnumpy())
    model = nn.HybridSequential()          # a backbone under a new head, hybridized
    model.add(qnet, nn.Dense(3))
    model[1].initialize()
    eager = model(x)
    model.hybridize()
    assert onp.allclose(model(x).asnumpy(), eager.asnumpy(), rtol=1e-5, atol=1e-6)
    legacy = qnet(x.as_nd_ndarray())       # NumPy out: Gluon refuses legacy outputs here
    assert isinstance(legacy, mx.np.ndarray)
    assert onp.array_equal(legacy.asnumpy(), out.asnumpy())


def test_numpy_mode_operators_fuse_and_the_doctor_runs(np_mode):
    net = Mlp()
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(1)
    batches = [np_mode.array(rs.rand(16, 784).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    hidden = [row for row in qnet.report() if row.layer.endswith("dense0")][0]
    assert hidden.quantized and "Activation(relu)" in hidden.pattern   # npx.relu fused
    assert coverage(qnet.report()) == (2, 2)
    assert _cos(net(batches[0]), qnet(batches[0])) > 0.999
    assert gq.debug.compare(qnet, batches[:1]).output_cosine > 0.999
    assert len(gq.debug.sensitivity(qnet, batches[:1])) == 2
    assert gq.debug.activation_floor(qnet, batches[:1]).int8_cosine > 0.999


class Residual(nn.HybridBlock):
    """A tutorial ResNet block: ``Y + X`` is a broadcasting ``_npi_add`` in NumPy mode."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1 = nn.Conv2D(channels, 3, padding=1)
            self.conv2 = nn.Conv2D(channels, 3, padding=1)
            self.bn1, self.bn2 = nn.BatchNorm(), nn.BatchNorm()

    def hybrid_forward(self, F, X):
        Y = self.bn2(self.conv2(F.npx.relu(self.bn1(self.conv1(X)))))
        return F.npx.relu(Y + X)


def test_numpy_mode_residual_sums_fuse_into_their_convolutions(np_mode):
    """``_npi_add`` of two same-shaped tensors runs as ``elemwise_add``, which oneDNN fuses
    into the convolution as its residual sum (they stayed fp32 and unfused)."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, activation="relu"), Residual(16), Residual(16),
            nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(2)
    batches = [np_mode.array(rs.rand(8, 3, 16, 16).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    assert not [row for row in report if row.op == "_npi_add"]
    assert sum("elemwise_add" in row.pattern for row in report if row.quantized) == 2
    assert coverage(report) == (6, 6)
    assert _cos(net(batches[0]), qnet(batches[0])) > 0.999


class Inception(nn.HybridBlock):
    """Branches joined with ``np.concatenate`` (``_npi_concatenate``), one at a negative axis."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.b1 = nn.Conv2D(16, 1, activation="relu")
            self.b2 = nn.Conv2D(16, 3, padding=1, activation="relu")
            self.b3 = nn.Conv2D(16, 1, activation="relu")

    def hybrid_forward(self, F, x):
        y = F.np.concatenate((self.b1(x), self.b2(x)), axis=1)
        return F.np.concatenate((y, self.b3(x)), axis=-3)


def test_numpy_mode_concatenations_run_in_int8(np_mode):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, activation="relu"), Inception(), Inception(),
            nn.Conv2D(8, 1), nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(3)
    batches = [np_mode.array(rs.rand(8, 3, 16, 16).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    concats = [row for row in report if row.op in ("Concat", "_npi_concatenate")]
    assert len(concats) == 4 and all(row.op == "Concat" and row.quantized for row in concats)
    assert _cos(net(batches[0]), qnet(batches[0])) > 0.999


class ShuffleUnit(nn.HybridBlock):
    """ShuffleNet v2's unit in NumPy mode: ``np.split``, ``np.concatenate``, ``npx.reshape``
    codes (``-6`` splits an axis, ``-5`` merges two) and ``np.swapaxes``."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        half = channels // 2
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(half, 1), nn.BatchNorm(), nn.Activation("relu"),
                          nn.Conv2D(half, 3, padding=1, groups=half), nn.BatchNorm(),
                          nn.Conv2D(half, 1), nn.Activation("relu"))

    def hybrid_forward(self, F, x):
        left, right = F.np.split(x, 2, axis=1)
        y = F.np.concatenate([left, self.body(right)], axis=1)
        y = F.np.swapaxes(F.npx.reshape(y, (-2, -6, 2, -1, -2, -2)), 1, 2)
        return F.npx.reshape(y, (-2, -5, -2, -2))


def test_numpy_mode_channel_shuffles_run_as_uint8_convolutions(np_mode):
    """The shuffle is recognized through NumPy mode's operators, and its halves come out
    uint8: the concatenation it shuffles (``_npi_concatenate`` when it is judged) is of
    never-negative tensors."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(32, 3, padding=1, activation="relu"), ShuffleUnit(32), ShuffleUnit(32),
            nn.GlobalAvgPool2D(), nn.Dense(5))
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(4)
    batches = [np_mode.array(rs.rand(4, 3, 24, 24).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    shuffles = [row for row in qnet.report() if "channel shuffle" in row.reason]
    assert len(shuffles) == 3, qnet.report()    # the second unit's halves, its own shuffle
    assert all(row.quantized and row.dtype == "uint8" for row in shuffles), qnet.report()
    assert _cos(net(batches[2]), qnet(batches[2])) > 0.999

def test_numpy_mode_spatial_means_run_as_int8_pooling(np_mode):
    """``x.mean(axis=(2, 3))`` (``_npi_mean``) before the classifier runs as an int8
    global average pooling and a flatten."""
    class MeanHead(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.conv = nn.Conv2D(16, 3, padding=1, activation="relu")
                self.out = nn.Dense(10)

        def hybrid_forward(self, F, x):
            return self.out(self.conv(x).mean(axis=(2, 3)))

    net = MeanHead()
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(4)
    batches = [np_mode.array(rs.rand(8, 3, 16, 16).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    assert [(row.op, row.quantized) for row in report] == [
        ("Convolution", True), ("Pooling", True), ("Flatten", True),
        ("FullyConnected", True)]
    assert _cos(net(batches[0]), qnet(batches[0])) > 0.999


class PooledReshape(nn.HybridBlock):
    """A pooled feature map reshaped the NumPy way before dense layers."""

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        with self.name_scope():
            self.conv = nn.Conv2D(32, 3, padding=1, activation="relu")
            self.pool = nn.MaxPool2D(2)
            self.dense = nn.Dense(16, flatten=False)
            self.out = nn.Dense(10)

    def hybrid_forward(self, F, x):
        h = self.pool(self.conv(x))
        if self.mode == "flatten":
            h = h.reshape((-1, 32 * 8 * 8))
        elif self.mode == "rows":
            h = h.reshape((-1, 32, 64))
        else:
            h = F.npx.reshape(h, (-2, -2, -1))
        return self.out(self.dense(h))


@pytest.mark.parametrize("mode, flatten", [("flatten", True), ("rows", False),
                                           ("npx", False)])
def test_numpy_mode_reshapes_of_onednn_outputs_run(np_mode, mode, flatten):
    """NumPy mode's reshapes misread a oneDNN pooling's blocked output ("could not create a
    primitive descriptor for a reorder primitive" in calibration): they run as the legacy
    Reshape, and a reshape that flattens each sample as an int8 Flatten."""
    net = PooledReshape(mode)
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(5)
    batches = [np_mode.array(rs.rand(16, 3, 16, 16).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    ops = [(row.op, row.quantized) for row in qnet.report()]
    assert not [op for op, _ in ops if op in ("_np_reshape", "_npx_reshape")]
    assert (("Flatten", True) in ops) == flatten
    assert coverage(qnet.report()) == (3, 3)
    assert _cos(net(batches[0]), qnet(batches[0])) > 0.999


def test_a_failure_inside_mxnet_is_not_blamed_on_the_inputs(np_mode, disable_pass,
                                                            monkeypatch):
    """With the reshape rewrite off, oneDNN cannot build the reorder the NumPy reshape
    needs: that is MXNet's failure, reported as such (it read "check that they match the
    network's expected shapes"). The calibration pass here reads the convolution's output
    itself, as it did before a max pooling's output set its range: that read fails."""
    disable_pass("numpy_reshapes")
    monkeypatch.setattr("gluon_quant.collect.range_sources", lambda view, names: {})
    net = PooledReshape("rows")
    net.initialize(mx.init.Xavier())
    # A batch size no other test uses: oneDNN caches the reorders it has built, and the
    # other tests' calibration passes build the one for their pooled (16, 32, 8, 8) maps.
    batches = [np_mode.array(onp.ones((13, 3, 16, 16), "float32"))]
    with pytest.raises(gq.ModelExecutionError, match=r"inside MXNet: .*reorder primitive.*"
                                                     r"not a problem with your inputs"):
        gq.quantize(net, batches, progress=False)


def test_a_numpy_mode_export_loaded_as_symbolblock_quantizes(np_mode, tmp_path):
    """``net.export()`` then ``SymbolBlock.imports`` in NumPy mode: MXNet 1.9.1's SymbolBlock
    cannot be called with NumPy symbols ("not iterable"), so its graph is composed as a
    legacy one."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, activation="relu"), nn.MaxPool2D(), nn.Conv2D(32, 3),
            nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    rs = onp.random.RandomState(4)
    batches = [np_mode.array(rs.rand(4, 3, 20, 20).astype("float32")) for _ in range(3)]
    net(batches[0])
    net.export(str(tmp_path / "fp32"))
    block = mx.gluon.SymbolBlock.imports(str(tmp_path / "fp32-symbol.json"), ["data"],
                                         str(tmp_path / "fp32-0000.params"))
    qnet = gq.quantize(block, batches, progress=False)
    out = qnet(batches[0])
    assert isinstance(out, mx.np.ndarray)
    assert _cos(block(batches[0]), out) > 0.999
    assert coverage(qnet.report()) == (3, 3)


class Strips(mx.gluon.Block):
    """A NumPy-mode model running its block on strips of the input in a Python loop."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder = Mlp()

    def forward(self, x):
        return mx.np.stack([self.encoder(x[:, :, i * 4:(i + 1) * 4].reshape(-1, 32))
                            for i in range(x.shape[2] // 4)], axis=1)


def test_numpy_mode_model_parts_are_fed_numpy_arrays(np_mode):
    """quantize_parts fed the model legacy arrays, which NumPy-mode operators refuse."""
    net = Strips()
    net.initialize(mx.init.Xavier())
    rs = onp.random.RandomState(0)
    batches = [np_mode.array(rs.rand(4, 8, 16).astype("float32")) for _ in range(3)]
    ref = net(batches[0])
    result = gq.quantize_parts(net, batches)
    assert list(result.parts) == ["encoder"] and result.results[0].calls == 12
    out = net(batches[0])
    assert isinstance(out, mx.np.ndarray) and out.shape == (4, 4, 10)
    assert _cos(ref, out) > 0.999
