"""Bias correction: measured on calibration samples, stored in the table, reproducible."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.bias import META_KEY
from conftest import coverage


def _projection_net():
    """Depthwise + linear projection chains, the pattern where int8 mean errors pile up."""
    net = nn.HybridSequential(prefix="proj_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
        for _ in range(3):
            net.add(nn.Conv2D(16, 3, padding=1, groups=16), nn.BatchNorm(),
                    nn.Activation("relu"), nn.Conv2D(16, 1), nn.BatchNorm())
        net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net


@pytest.fixture
def proj():
    from gluon_quant.zoo.batchnorm import reestimate_batchnorm
    mx.random.seed(3)
    net = _projection_net()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randn(8, 3, 16, 16).astype("float32") for _ in range(4)]
    reestimate_batchnorm(net, mx.nd.array(np.concatenate(batches)))
    return net, batches


def _mean_abs_bias(net, qnet, x):
    ref, out = net(x).asnumpy(), qnet(x).asnumpy()
    return float(np.abs((ref - out).mean(axis=0)).mean())


def test_correction_removes_the_mean_error_and_is_stored(proj):
    net, batches = proj
    x = mx.nd.array(np.concatenate(batches))
    plain = gq.quantize(net, batches, bias_correction=False, progress=False)
    fixed = gq.quantize(net, batches, progress=False)
    assert META_KEY not in plain.calibration_table.meta
    stored = fixed.calibration_table.meta[META_KEY]
    # the three projection convs and the four conv+ReLU layers (depthwise included), not
    # the output layer
    assert len(stored["params"]) == 7
    assert all(p.endswith(("_beta", "_bias")) for p in stored["params"])
    assert _mean_abs_bias(net, fixed, x) < 0.5 * _mean_abs_bias(net, plain, x)


def test_saved_table_rebuilds_the_same_corrected_model(proj, tmp_path):
    net, batches = proj
    x = mx.nd.array(batches[0])
    first = gq.quantize(net, batches, progress=False)
    path = str(tmp_path / "table.json")
    first.calibration_table.save(path)
    again = gq.quantize(net, calib_table=gq.CalibrationTable.load(path), progress=False)
    np.testing.assert_array_equal(first(x).asnumpy(), again(x).asnumpy())
    # the path itself, as gluon-quant quantize writes it (it was "Expected a
    # CalibrationTable, got str"), to quantize() and to finalize() of a fresh block
    for table in (path, tmp_path / "table.json"):
        by_path = gq.quantize(net, calib_table=table, progress=False)
        np.testing.assert_array_equal(first(x).asnumpy(), by_path(x).asnumpy())
    fresh = gq.QuantizedHybridBlock(net, first.config).finalize(path)
    np.testing.assert_array_equal(first(x).asnumpy(), fresh(x).asnumpy())


def test_corrections_are_remeasured_when_other_layers_are_int8(proj):
    net, batches = proj
    first = gq.quantize(net, batches, progress=False)
    excluded = first.clone(exclude=["proj_conv2"])
    excluded.finalize(first.calibration_table)
    nodes = excluded.calibration_table.meta[META_KEY]["nodes"]
    assert nodes != first.calibration_table.meta[META_KEY]["nodes"]
    assert len(nodes) == len(first.calibration_table.meta[META_KEY]["nodes"]) - 1


@pytest.mark.parametrize("batch", [8, 5])
def test_the_reference_read_during_calibration_equals_a_second_fp32_pass(proj, monkeypatch,
                                                                          batch):
    """Bias correction reads its fp32 reference from the calibration pass: same corrections
    as running the fp32 graph again on the kept samples (batches of 8: one kept batch of 32
    out of 4; of 5: the kept 32 cut across batches)."""
    from gluon_quant import _mxnet, bias
    net, batches = proj
    data = np.concatenate(batches)
    batches = [data[i:i + batch] for i in range(0, len(data), batch)]
    labels = []
    real_run = _mxnet.run_block
    monkeypatch.setattr(_mxnet, "run_block",
                        lambda b, x, what: labels.append(what) or real_run(b, x, what))
    tapped = gq.quantize(net, batches, progress=False).calibration_table.meta[META_KEY]
    assert len(tapped["params"]) == 7    # 3 linear layers and 4 ending in ReLU
    assert "Bias correction (fp32 reference)" not in labels
    monkeypatch.setattr(bias.ReferenceTap, "references", lambda self, count, ctx: {})
    labels.clear()
    again = gq.quantize(net, batches, progress=False).calibration_table.meta[META_KEY]
    assert "Bias correction (fp32 reference)" in labels
    assert again["nodes"] == tapped["nodes"]
    for name, values in again["params"].items():
        assert tapped["params"][name] == values, name     # bit for bit


def test_references_are_held_for_the_samples_the_data_has(proj, monkeypatch):
    """Data with a length (a list of 3 batches of 4) gets reference buffers for its 12
    samples, not for 32 (SENet-154 on 8 images waited 10 s for the pages of 1.1 GB it
    never used); the corrections are those of the same data as a generator, whose length
    is unknown (buffers for 32)."""
    from gluon_quant import bias
    net, batches = proj
    data = np.concatenate(batches)[:12]
    batches = [data[i:i + 4] for i in range(0, 12, 4)]
    sizes = []
    real = bias.ReferenceTap.set_shapes

    def set_shapes(self, *args, **kwargs):
        real(self, *args, **kwargs)
        sizes.append((self.limit, {k: v.shape[0] for k, v in self._chunks.items()}))

    monkeypatch.setattr(bias.ReferenceTap, "set_shapes", set_shapes)
    listed = gq.quantize(net, batches, progress=False).calibration_table.meta[META_KEY]
    streamed = gq.quantize(net, (b for b in batches),
                           progress=False).calibration_table.meta[META_KEY]
    assert [limit for limit, _ in sizes] == [12, 32]
    assert set(sizes[0][1].values()) == {12} and set(sizes[1][1].values()) == {32}
    assert len(listed["params"]) == 7 and listed == streamed


class _OneImageAtATime(mx.gluon.HybridBlock):
    """A graph that takes only batch 1, as GluonCV's R-CNNs take only the ``batch_size``
    they were built for: a batch-wide reshape joined with per-image rows (as their proposals
    are joined with one batch index per image) fails shape inference for other sizes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                          nn.Conv2D(8, 3, padding=1), nn.BatchNorm())
            self.head = nn.Dense(4)

    def hybrid_forward(self, F, x):
        y = self.body(x)
        return self.head(F.concat(F.reshape(y, shape=(1, -1)), F.flatten(y), dim=1))


def test_kept_samples_keep_the_batch_size_a_fixed_batch_graph_takes():
    """Kept calibration batches are joined only where the graph takes the joined batch:
    bias correction and the first run then see batch 1 here, not 3 (a Faster R-CNN failed
    with "Bias correction (fp32 reference) failed ... concat0 ... shape")."""
    mx.random.seed(1)
    net = _OneImageAtATime()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randn(1, 3, 8, 8).astype("float32") for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    assert qnet.calibration.samples[0].shape == (1, 3, 8, 8)
    assert coverage(qnet.report()) == (3, 3)
    x = mx.nd.array(batches[1])
    ref, out = net(x).asnumpy().ravel(), qnet(x).asnumpy().ravel()
    assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) >= 0.99
    # A graph that takes any batch size still gets all kept samples in one batch.
    plain = nn.HybridSequential()
    plain.add(nn.Conv2D(8, 3, padding=1), nn.Activation("relu"), nn.Dense(4))
    plain.initialize(mx.init.Xavier())
    assert gq.quantize(plain, batches, progress=False).calibration.samples[0].shape[0] == 3


def test_only_piecewise_linear_activations_are_corrected():
    from gluon_quant.bias import _correctable
    from gluon_quant.graph.inspect import GraphNode

    def node(*labels):
        members = (("c", "Convolution", "Convolution"),) + tuple(
            ("a", label.split("(")[0], label) for label in labels)
        return GraphNode(name="n", op="_sg_mkldnn_conv", members=members, attrs=(),
                         inputs=())

    assert _correctable(node()) and _correctable(node("clip"))
    assert _correctable(node("Activation(relu)"))
    assert not _correctable(node("Activation(sigmoid)"))
    assert not _correctable(node("LeakyReLU(leaky)"))



class _SqueezeExcite(nn.HybridBlock):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(channels, 3, padding=1), nn.BatchNorm(),
                          nn.Activation("relu"))
            self.down = nn.Conv2D(channels // 4, 1, activation="relu")
            self.up = nn.Conv2D(channels, 1, activation="sigmoid")
            self.proj = nn.HybridSequential()
            self.proj.add(nn.Conv2D(channels, 1), nn.BatchNorm())

    def hybrid_forward(self, F, x):
        x = self.body(x)
        scale = self.up(self.down(F.contrib.AdaptiveAvgPooling2D(x, output_size=1)))
        return self.proj(F.broadcast_mul(x, scale))


def test_per_sample_vectors_are_not_corrected():
    """A squeeze-and-excitation convolution sees one value per channel and sample: its mean
    error over the kept samples is noise and is left alone; the spatial layers are
    corrected."""
    from gluon_quant.bias import MIN_POSITIONS
    from gluon_quant.zoo.batchnorm import reestimate_batchnorm
    mx.random.seed(5)
    net = nn.HybridSequential(prefix="se_")
    with net.name_scope():
        net.add(_SqueezeExcite(16, prefix="block_"), nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(1)
    batches = [rs.randn(8, 3, 16, 16).astype("float32") for _ in range(4)]
    reestimate_batchnorm(net, mx.nd.array(np.concatenate(batches)))
    qnet = gq.quantize(net, batches, progress=False)
    stored = sorted(qnet.calibration_table.meta[META_KEY]["params"])
    assert 32 < MIN_POSITIONS <= 32 * 16 * 16
    # the 3x3 conv (+BN, ReLU) and the projection (+BN), not the squeeze (1x1 output)
    assert len(stored) == 2 and all(p.endswith("_beta") for p in stored), stored
    assert not any("conv1" in p for p in stored), stored
