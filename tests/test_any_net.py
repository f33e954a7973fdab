"""Nets beyond CNN classifiers, written the way Gluon users write them: each quantizes in
one call, runs, agrees with fp32, and says why a layer stays fp32."""
import json
import logging

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn, rnn

import gluon_quant as gq
from gluon_quant._mxnet.isa import cpu_flags
from gluon_quant.debug import compare
from gluon_quant.debug.metrics import cosine
from gluon_quant.zoo.gluoncv import set_batchnorm_statistics
from conftest import PAIRS_SATURATE, coverage, placed

RS = np.random.RandomState(0)


def _agree(net, qnet, *inputs):
    ref, out = net(*inputs), qnet(*inputs)
    return cosine(ref.asnumpy(), out.asnumpy())


def _layer(qnet, op):
    return [r for r in qnet.report() if r.op == op]


class TextCNN(nn.HybridBlock):
    """Embedding -> Conv1D -> BatchNorm -> relu -> max over time -> dense -> dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embed = nn.Embedding(200, 32)
            self.conv = nn.Conv1D(64, 3, padding=1)
            self.bn = nn.BatchNorm()
            self.hidden = nn.Dense(32)
            self.out = nn.Dense(5)

    def hybrid_forward(self, F, tokens):
        x = self.embed(tokens).transpose((0, 2, 1))
        x = F.relu(self.bn(self.conv(x)))
        return self.out(self.hidden(F.max(x, axis=2)))


def test_embedding_and_conv1d_net_runs_in_int8():
    """Both failed before: bias correction's fp32 reference read the int8 graph's renamed
    embedding weight, and oneDNN's int8 convolution refuses 3-D data."""
    mx.random.seed(0)
    net = TextCNN()
    net.initialize(mx.init.Xavier())
    tokens = [RS.randint(0, 200, (16, 24)).astype("float32") for _ in range(4)]
    set_batchnorm_statistics(net, mx.nd.array(tokens[0]))
    qnet = gq.quantize(net, tokens[:3], progress=False)
    conv = _layer(qnet, "Convolution")
    assert len(conv) == 1 and conv[0].quantized, qnet.report()
    assert conv[0].pattern.startswith("Convolution+BatchNorm")    # still fused when lifted
    assert all(r.quantized for r in _layer(qnet, "Embedding"))
    assert _agree(net, qnet, mx.nd.array(tokens[3])) > 0.99
    assert "bias_correction" in qnet.calibration_table.meta


class PositionTable(nn.HybridBlock):
    """Token and position tables under names that do not end in ``weight``: a Constant
    (GluonNLP's encoders keep their sinusoid table so) and a parameter named ``table``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.table = self.params.get("table", shape=(200, 32))
        self.positions = self.params.get_constant(
            "positions", mx.nd.array(RS.normal(0, 1, (24, 32))))
        self.out = nn.Dense(8, flatten=False)

    def hybrid_forward(self, F, tokens, table, positions):
        steps = F.contrib.arange_like(tokens, axis=1)
        x = F.broadcast_add(F.Embedding(tokens, table, input_dim=200, output_dim=32),
                            F.Embedding(steps, positions, input_dim=24,
                                        output_dim=32).expand_dims(0))
        return self.out(x)


def test_int8_embeddings_of_tables_with_any_name(tmp_path):
    """MXNet's pass asks for every offline parameter quantized (``positions_quantize``),
    but its helper quantized only names ending in weight or bias: the build failed with
    'The graph needs parameters the network does not have'."""
    net = PositionTable()
    net.initialize(mx.init.Xavier())
    tokens = [RS.randint(0, 200, (8, 24)).astype("float32") for _ in range(4)]
    qnet = gq.quantize(net, tokens[:3])
    embeddings = _layer(qnet, "Embedding")
    assert len(embeddings) == 2 and all(r.quantized for r in embeddings), qnet.report()
    assert _agree(net, qnet, mx.nd.array(tokens[3])) > 0.999
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    x = mx.nd.array(tokens[3])
    assert np.array_equal(loaded(x).asnumpy(), qnet(x).asnumpy())


class FixedBatch(nn.HybridBlock):
    """Reshapes to ``(1, C, H, W)``, as nets that fix their batch size write it (GluonCV's
    SiamRPN head reshapes its search features to batch 1 so)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = nn.Conv2D(8, 3)
        self.bn = nn.BatchNorm()
        self.second = nn.Conv2D(4, 3)

    def hybrid_forward(self, F, x):
        return self.second(F.relu(self.bn(self.first(x))).reshape((1, 8, 8, 8)))


def test_a_net_that_fixes_its_batch_size(tmp_path):
    """MXNet's shape inference gives a reshape to a fixed shape its target whatever the
    input's size: calibration joined batch-1 batches for the first run and bias
    correction, and the int8 graph then corrupted the heap and the process died; a call
    with a batch of 2 did the same."""
    net = FixedBatch()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(size=(1, 3, 10, 10))) for _ in range(4)]
    qnet = gq.quantize(net, batches[:3])
    assert coverage(qnet.report()) == (2, 2)
    assert _agree(net, qnet, batches[3]) > 0.999
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    two = mx.nd.concat(batches[0], batches[1], dim=0)
    for block in (loaded, qnet):        # the first call, and one after another shape's
        with pytest.raises(gq.InputMismatchError, match=r"A reshape of the network .*"
                                                       r"\(2, 3, 10, 10\).*reshape0.*"
                                                       r"\(2, 8, 8, 8\) \(1024 values\)"):
            block(two)
    assert np.array_equal(loaded(batches[3]).asnumpy(), qnet(batches[3]).asnumpy())


class Rows(nn.HybridBlock):
    """Regroups its features into rows of 64 (``x.reshape((-1, 64))``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = nn.Conv2D(8, 3)
        self.dense = nn.Dense(16, flatten=False)

    def hybrid_forward(self, F, x):
        return self.dense(F.relu(self.conv(x)).reshape((-1, 64)))


def test_a_reshape_its_inputs_do_not_divide():
    """MXNet's shape inference checks no reshape's size: ``(-1, 64)`` on 400 values gives
    ``(6, 64)``, and an int8 graph run on a reshape of the wrong size reads or writes past
    its input's memory (a reshape to a fixed shape killed the process so)."""
    net = Rows()
    net.initialize(mx.init.Xavier())
    qnet = gq.quantize(net, [mx.nd.array(RS.uniform(size=(2, 3, 16, 16))) for _ in range(2)])
    assert qnet(mx.nd.array(RS.uniform(size=(4, 3, 10, 10)))).shape == (32, 16)  # 4*8*8*8/64
    with pytest.raises(gq.InputMismatchError, match=r"\(2, 3, 7, 7\).*Reshape of an input "
                                                    r"of shape \(2, 8, 5, 5\) \(400 values\) "
                                                    r"to shape \(6, 64\) \(384 values\)\. "):
        qnet(mx.nd.array(RS.uniform(size=(2, 3, 7, 7))))


class IgnoresMask(nn.HybridBlock):
    """Takes a mask it does not use (kept for a shared call signature)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = nn.Conv2D(8, 3, padding=1)
        self.out = nn.Conv2D(4, 3, padding=1)

    def hybrid_forward(self, F, x, mask):
        return self.out(F.relu(self.conv(x)))


def test_an_input_the_network_ignores(tmp_path):
    """Gluon's hybridize() drops an input the graph does not read; calibration failed
    with "InferShapeKeyword argument name data1 not found" blamed on the batch, and the
    int8 block's wrapper could not compose its graph."""
    net = IgnoresMask()
    net.initialize(mx.init.Xavier())
    batches = [(mx.nd.array(RS.uniform(size=(2, 3, 12, 12))), mx.nd.ones((2, 5)))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2])
    assert coverage(qnet.report()) == (2, 2)
    x, mask = batches[2]
    assert _agree(net, qnet, x, mask) > 0.999
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    np.testing.assert_array_equal(loaded(x, mask).asnumpy(), qnet(x, mask).asnumpy())


def test_1d_pooling_and_residual_stay_lifted():
    net = nn.HybridSequential()
    net.add(nn.Conv1D(16, 5, padding=2, in_channels=4), nn.BatchNorm(), nn.Activation("relu"),
            nn.MaxPool1D(2), nn.Conv1D(16, 3, padding=1, activation="relu"), nn.AvgPool1D(2),
            nn.GlobalAvgPool1D(), nn.Dense(3))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.randn(16, 4, 64).astype("float32"))
    set_batchnorm_statistics(net, x)
    qnet = gq.quantize(net, [x[:8]], progress=False)
    assert all(r.quantized for r in qnet.report() if r.op in ("Convolution", "Pooling"))
    assert _agree(net, qnet, x[8:]) > 0.99
    squeezes = [n for n in qnet.quantized_graph.tojson().split('"op": "')
                if n.startswith("squeeze")]
    assert len(squeezes) == 1          # once, before the dense layer


def test_dense_batchnorm_is_folded():
    """Unfolded, the BatchNorm ran as its own int8 operator: int8 was 2x slower than fp32."""
    net = nn.HybridSequential()
    for _ in range(2):
        net.add(nn.Dense(64), nn.BatchNorm(), nn.Activation("relu"))
    net.add(nn.Dense(3))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.randn(64, 10).astype("float32") * 3 + 1)
    set_batchnorm_statistics(net, x)
    qnet = gq.quantize(net, [x[:32]], progress=False)
    report = qnet.report()
    assert [r.op for r in report] == ["FullyConnected"] * 3, report
    assert [r.pattern for r in report][:2] == ["FullyConnected+Activation(relu)"] * 2
    assert _agree(net, qnet, x[32:]) > 0.995
    # The user's parameters are untouched: the fold works on the pipeline's copies.
    assert net[0].weight.shape == (64, 10) and net[1].gamma.shape == (64,)


@pytest.mark.parametrize("axis, shape", [(2, (16, 12, 10)), (-1, (16, 12, 10)),
                                         (1, (64, 10))])
def test_batchnorm_over_a_dense_layers_last_axis_is_folded(axis, shape, tmp_path):
    """Per-position dense layers (``flatten=False``) with a BatchNorm over their units
    written as the axis number (``BatchNorm(axis=2)`` on ``(N, T, units)``, ``axis=1`` on
    ``(N, units)``): unfolded, each BatchNorm ran fp32 between a dequantize and a quantize
    (a 3-layer MLP on (32, 50, 64): 1.46x fp32; folded, 5.4x)."""
    net = nn.HybridSequential()
    for _ in range(2):
        net.add(nn.Dense(64, flatten=False), nn.BatchNorm(axis=axis, in_channels=64),
                nn.Activation("relu"))
    net.add(nn.Dense(3, flatten=False))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(5)
    x = mx.nd.array(rs.randn(*shape).astype("float32") * 3 + 1)
    set_batchnorm_statistics(net, x)
    qnet = gq.quantize(net, [x[:8]], progress=False)
    report = qnet.report()
    assert [r.op for r in report] == ["FullyConnected"] * 3, report
    assert [r.pattern for r in report][:2] == ["FullyConnected+Activation(relu)"] * 2
    assert all(r.quantized for r in report)
    assert _agree(net, qnet, x[8:]) > (0.998 if PAIRS_SATURATE else 0.999)   # 7-bit codes
    qnet.export(str(tmp_path / "mlp"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "mlp"))
    assert np.array_equal(loaded(x[8:]).asnumpy(), qnet(x[8:]).asnumpy())


def test_recurrent_modes_without_int8_kernel_stay_fp32_with_the_reason():
    class Tagger(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.gru = rnn.GRU(16, layout="NTC")
                self.out = nn.Dense(4, flatten=False)

        def hybrid_forward(self, F, x):
            return self.out(self.gru(x))

    net = Tagger()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.randn(8, 10, 6).astype("float32"))
    net(x)
    qnet = gq.quantize(net, [x], progress=False)
    gru = _layer(qnet, "RNN")
    assert len(gru) == 1 and not gru[0].quantized
    assert "mode=gru has no int8 kernel on onednn" in gru[0].reason
    assert _agree(net, qnet, x) > 0.99


class Masked(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.proj = nn.Dense(16, flatten=False)
            self.out = nn.Dense(3)

    def hybrid_forward(self, F, x, mask=None):
        h = self.proj(x)
        if mask is not None:
            h = F.broadcast_mul(h, F.expand_dims(mask, axis=2))
        return self.out(F.mean(h, axis=1))


@pytest.fixture
def masked():
    net = Masked()
    net.initialize(mx.init.Xavier())
    x = RS.randn(8, 5, 4).astype("float32")
    mask = (RS.rand(8, 5) > 0.4).astype("float32")
    return net, x, mask


def test_optional_inputs_are_never_dropped_silently(masked):
    net, x, mask = masked
    labels = np.zeros(8, dtype="float32")
    with pytest.raises(gq.InputMismatchError,
                       match=r"takes x and, optionally, mask.*num_inputs=2.*num_inputs=1"):
        gq.quantize(net, [(x, mask, labels)], progress=False)
    qnet = gq.quantize(net, [(x, mask, labels)], num_inputs=2, progress=False)
    assert qnet.input_names == ["data0", "data1"]
    nd_x, nd_mask = mx.nd.array(x), mx.nd.array(mask)
    assert _agree(net, qnet, nd_x, nd_mask) > 0.99
    # The mask really is an input of the int8 net.
    assert not np.allclose(qnet(nd_x, nd_mask).asnumpy(), qnet(nd_x, nd_mask * 0).asnumpy())
    by_name = gq.quantize(net, [{"x": x, "mask": mask}], progress=False)
    assert by_name.input_names == ["data0", "data1"]
    assert _agree(net, by_name, nd_x, nd_mask) > 0.99
    without = gq.quantize(net, [x], progress=False)        # the mask is not fed: one input
    assert without.input_names == ["data"]


class _Tempered(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.out = nn.Dense(3)

    def hybrid_forward(self, F, x, mask=None, temperature=2.0):
        return self.out(x) / temperature


def test_a_dict_key_naming_an_option_is_refused():
    """``temperature=2.0`` is traced into the graph: a dict batch keying it was ignored
    silently (the int8 net divided by 2.0 where the batches said 3.0)."""
    net = _Tempered()
    net.initialize(mx.init.Xavier())
    x = RS.randn(8, 4).astype("float32")
    with pytest.raises(gq.InputMismatchError, match=r"the key 'temperature', an argument of "
                       r"_Tempered's hybrid_forward that is not a tensor input \(its default, "
                       r"2.0, .*inputs are .*: x, mask\)"):
        gq.quantize(net, [{"x": x, "temperature": 3.0}], progress=False)
    labelled = gq.quantize(net, [{"x": x, "label": np.zeros(8, "float32")}], progress=False)
    assert labelled.input_names == ["data"]     # other keys are labels, as before


def test_inputs_a_batch_showed_survive_clone_and_saved_tables(masked, tmp_path):
    """The mask a dict batch fed is an input of a clone and of a net rebuilt from the saved
    table too (both traced one input before: "computed on another graph")."""
    net, x, mask = masked
    qnet = gq.quantize(net, [{"x": x, "mask": mask}], progress=False)
    nd_x, nd_mask = mx.nd.array(x), mx.nd.array(mask)
    qnet.calibration_table.save(str(tmp_path / "table.json"))
    rebuilt = gq.quantize(net, calib_table=gq.CalibrationTable.load(str(tmp_path / "table.json")),
                          progress=False)
    clone = qnet.clone(granularity="tensor").finalize(qnet.calibration_table)
    for other in (rebuilt, clone):
        assert other.input_names == ["data0", "data1"]
        assert _agree(qnet, other, nd_x, nd_mask) > 0.999


class _Encoder(nn.HybridBlock):
    """GluonNLP's encoders' signature: ``inputs, states=None, valid_length=None``; called
    ``encoder(x, None, valid_length)``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.proj = nn.Dense(32, flatten=False)
            self.out = nn.Dense(8, flatten=False)

    def hybrid_forward(self, F, inputs, states=None, valid_length=None):
        h = F.relu(self.proj(inputs))
        if states is not None:
            h = F.broadcast_add(h, F.expand_dims(states, axis=1))
        if valid_length is not None:
            h = F.SequenceMask(h, sequence_length=valid_length, use_sequence_length=True,
                               axis=1)
        return self.out(h)


def test_an_argument_passed_as_none_before_a_given_one(tmp_path):
    """A dict batch without ``states`` but with ``valid_length`` (refused before: "supplies
    ['valid_length'] but not ['states'] before it"), or a tuple ``(x, None, valid_length)``
    with ``num_inputs=3`` (failed to trace: the None became a graph input), is traced with
    ``states=None``, as ``hybridize()`` does; a saved table rebuilds the same graph."""
    net = _Encoder()
    net.initialize(mx.init.Xavier())
    batches = [(RS.randn(4, 12, 16).astype("float32"),
                np.array([12, 7, 3, 9], dtype="float32")) for _ in range(3)]
    x, length = (mx.nd.array(a) for a in batches[0])
    ref = net(x, None, length).asnumpy()
    by_dict = gq.quantize(net, [{"inputs": a, "valid_length": v} for a, v in batches],
                          progress=False)
    by_tuple = gq.quantize(net, [(a, None, v) for a, v in batches], num_inputs=3,
                           progress=False)
    table = str(tmp_path / "table.json")
    by_dict.calibration_table.save(table)
    rebuilt = gq.quantize(net, calib_table=gq.CalibrationTable.load(table), progress=False)
    for qnet in (by_dict, by_tuple, rebuilt):
        assert qnet.input_names == ["data0", "data1"]
        out = qnet(x, None, length).asnumpy()
        assert cosine(ref, out) > 0.999
        assert np.all(out[2, 3:] == out[2, 3, 0])     # masked steps: the bias, exactly
        assert len(qnet.report().quantized) == 2
    qnet.export(str(tmp_path / "enc"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "enc"))
    np.testing.assert_array_equal(loaded(x, length).asnumpy(), out)
    with pytest.raises(gq.InputMismatchError, match=r"Pass 2 mx.nd.NDArray input\(s\) "
                                                    r"\(inputs, valid_length; None for "
                                                    r"states, as calibrated\)"):
        by_dict(x, x[:, 0], length)


def test_dict_output_gets_a_clear_error():
    class Heads(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.a = nn.Dense(2)

        def hybrid_forward(self, F, x):
            return {"logits": self.a(x), "probs": F.softmax(self.a(x))}

    net = Heads()
    net.initialize()
    with pytest.raises(gq.NotHybridizableError, match=r"returns a dict.*'logits'.*tuple"):
        gq.quantize(net, [RS.rand(4, 3).astype("float32")], progress=False)


def test_doctor_compares_every_output():
    """A detector-like net: exact class ids first, then scores that int8 changes."""
    class TwoHeads(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.body = nn.Dense(32, activation="relu")
                self.score = nn.Dense(6)

        def hybrid_forward(self, F, x):
            feat = self.body(x)
            return F.zeros_like(F.slice_axis(x, axis=1, begin=0, end=1)), self.score(feat)

    net = TwoHeads()
    net.initialize(mx.init.Xavier())
    x = RS.randn(32, 8).astype("float32")
    qnet = gq.quantize(net, [x], progress=False)
    report = compare(qnet, [x])
    assert len(report.outputs) == 2
    assert report.outputs[0][1] == 1.0                     # the constant output agrees
    assert report.outputs[1][0] < 100.0                    # the scores carry int8 noise
    assert report.output_sqnr_db == pytest.approx(report.outputs[1][0])
    assert "worst of 2 outputs" in str(report)


def test_mxnet_log_lines_go_to_the_report_not_the_terminal(capfd):
    class Stack(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.a = nn.Conv2D(8, 3, padding=1, in_channels=3)
                self.b = nn.Conv2D(8, 3, padding=1, in_channels=3)
                self.out = nn.Dense(2)

        def hybrid_forward(self, F, x):
            both = F.concat(F.relu(self.a(x)), F.relu(self.b(x)), dim=0)   # batch axis
            return self.out(both)

    net = Stack()
    net.initialize(mx.init.Xavier())
    x = RS.rand(4, 3, 8, 8).astype("float32")
    capfd.readouterr()
    qnet = gq.quantize(net, [x], progress=False)
    printed = capfd.readouterr()
    assert "quantized concat" not in printed.out + printed.err
    notes = qnet.report().notes
    assert any("quantized concat only supports dim>0" in n for n in notes), notes
    assert "MXNet said" in str(qnet.report())


# ---------------------------------------------------- defects the fuzz test found, guarded
def _quantized_agreement(net, x, **settings):
    net.initialize(mx.init.Xavier())
    set_batchnorm_statistics(net, x)
    qnet = gq.quantize(net, [x], progress=False, **settings)
    return qnet, min(cosine(a.asnumpy(), b.asnumpy())
                     for a, b in zip(_flat(net(x)), _flat(qnet(x))))


def _flat(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("layers, shape", [
    # oneDNN's int8 conv + (BatchNorm +) GELU computes a ReLU: cosine 0.970 unguarded
    (lambda: [nn.Conv2D(8, 3, in_channels=3), nn.BatchNorm(), nn.GELU(), nn.Conv2D(4, 3)],
     (8, 3, 12, 12)),
    # int8 dense + LeakyReLU emits uint8, zeroing the negative half: 0.995 unguarded
    (lambda: [nn.Dense(16, in_units=8), nn.LeakyReLU(0.1), nn.Dense(10)], (32, 8)),
])
def test_activation_fusions_that_oneDNN_gets_wrong_are_separated(layers, shape):
    net = nn.HybridSequential()
    net.add(*layers())
    x = mx.nd.array(RS.randn(*shape).astype("float32"))
    qnet, agreement = _quantized_agreement(net, x)
    first = qnet.report()[0]
    assert first.quantized and "LeakyReLU" not in first.pattern
    assert agreement > 0.999


def test_products_stay_fp32_with_the_measured_reason():
    class Gated(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.a = nn.Conv2D(8, 3, padding=1, in_channels=3)
                self.b = nn.Conv2D(8, 3, padding=1, in_channels=8)

        def hybrid_forward(self, F, x):
            y = self.a(x)
            return self.b(y * F.sigmoid(y))          # Swish between two convolutions

    qnet, agreement = _quantized_agreement(Gated(), mx.nd.array(RS.rand(8, 3, 10, 10)))
    product = next(r for r in qnet.report() if r.op == "elemwise_mul")
    assert not product.quantized and "wraps around" in product.reason
    assert agreement > 0.999


def test_dense_output_read_by_int8_and_fp32_layers_runs():
    """``return head(feat), feat``: MXNet's int8 fusion segfaulted on it."""
    class TwoOutputs(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.body, self.head = nn.Dense(16, in_units=20), nn.Dense(10, in_units=16)

        def hybrid_forward(self, F, x):
            feat = self.body(x)
            return self.head(feat), feat

    qnet, agreement = _quantized_agreement(TwoOutputs(), mx.nd.array(RS.randn(8, 20)))
    body = next(r for r in qnet.report() if r.layer.endswith("dense0"))
    assert not body.quantized and "fp32 readers" in body.reason
    assert next(r for r in qnet.report() if r.layer.endswith("dense1")).quantized
    assert agreement > 0.999


def test_dense_output_read_by_an_int8_dense_and_an_fp32_product_runs():
    """A Highway layer after a dense layer (GluonNLP's, written out): ``x`` is read by the
    int8 ``W x`` and by ``(1 - gate) * x``, a product the backend keeps fp32, so only the
    quantized graph shows the mixed readers. MXNet's int8 fusion segfaulted on it."""
    class Highway(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.inp = nn.Dense(64, in_units=20)
                self.proj = nn.Dense(128, in_units=64)
                self.out = nn.Dense(4, in_units=64)

        def hybrid_forward(self, F, x):
            x = self.inp(x)
            h, gate = F.split(self.proj(x), num_outputs=2, axis=1)
            gate = F.sigmoid(gate)
            return self.out(gate * F.relu(h) + (1 - gate) * x)

    qnet, agreement = _quantized_agreement(Highway(), mx.nd.array(RS.randn(32, 20)))
    rows = {r.layer.split("_")[-1]: r for r in qnet.report() if r.op == "FullyConnected"}
    assert not rows["dense0"].quantized and "fp32 readers" in rows["dense0"].reason
    assert rows["dense1"].quantized and rows["dense2"].quantized
    assert agreement > 0.999


def test_a_convolution_read_by_a_batchnorm_and_a_shortcut_quantizes():
    """A pre-activation block on a convolution's output (CIFAR ResNet v2's stem and first
    block): the output is read by the block's BatchNorm and by the shortcut sum. MXNet's
    fusion of the convolution with that BatchNorm gave the sum the normalized output
    (GluonCV's cifar_resnet56_v2: cosine 0.949 in fp32) or a graph it could not infer."""
    class PreActivation(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.stem = nn.Conv2D(16, 3, padding=1, use_bias=False, in_channels=3)
                self.bn = nn.BatchNorm(in_channels=16)
                self.conv = nn.Conv2D(16, 3, padding=1, use_bias=False, in_channels=16)
                self.head = nn.Dense(10, in_units=16)

        def hybrid_forward(self, F, x):
            y = self.stem(x)
            y = y + self.conv(F.relu(self.bn(y)))
            return self.head(F.contrib.AdaptiveAvgPooling2D(y, output_size=1))

    net = PreActivation()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(5)
    net.bn.gamma.set_data(mx.nd.array(rs.uniform(0.5, 1.5, 16)))
    net.bn.running_mean.set_data(mx.nd.array(rs.uniform(-0.5, 0.5, 16)))
    net.bn.running_var.set_data(mx.nd.array(rs.uniform(0.2, 2.0, 16)))
    x = mx.nd.array(rs.uniform(-1, 1, (8, 3, 12, 12)).astype("float32"))
    fp32 = gq.quantize(net, [x], exclude=["Convolution", "FullyConnected", "BatchNorm",
                                         "Activation"], progress=False)
    np.testing.assert_allclose(fp32(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-5)
    qnet, agreement = _quantized_agreement(net, x)
    assert [r.quantized for r in qnet.report() if r.op == "Convolution"] == [True, True]
    assert agreement > 0.999


def test_a_block_called_twice_quantizes():
    class Shared(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.conv = nn.Conv2D(8, 3, padding=1, in_channels=3, activation="relu")
                self.pool = nn.MaxPool2D(2)
                self.out = nn.Dense(3)

        def hybrid_forward(self, F, x):
            return self.out(self.pool(self.pool(self.conv(x))))

    qnet, agreement = _quantized_agreement(Shared(), mx.nd.array(RS.rand(4, 3, 16, 16)))
    assert [r.quantized for r in qnet.report() if r.op == "Pooling"] == [True, True]
    assert agreement > 0.999


def test_conv1d_with_deferred_shapes_and_the_doctor_on_rewritten_nets():
    net = nn.HybridSequential()
    net.add(nn.Conv1D(8, 3), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(16),
            nn.BatchNorm(), nn.Dense(3))            # never run: shapes are deferred
    net.initialize(mx.init.Xavier())
    x = RS.randn(8, 2, 20).astype("float32")
    qnet = gq.quantize(net, [x], progress=False)
    report = compare(qnet, [x])                     # fp32 reference of the rewritten graph
    assert report.output_cosine > 0.99
    assert all(r.quantized for r in qnet.report() if r.op == "Convolution")


class _Branches(nn.HybridBlock):
    """``F.contrib.cond`` between two dense layers: a batch runs one branch only."""

    def __init__(self, in_units=0):
        super().__init__()
        with self.name_scope():
            self.up = nn.Dense(8, in_units=in_units)
            self.down = nn.Dense(8, in_units=in_units)

    def hybrid_forward(self, F, x):
        return F.contrib.cond(x.sum() > 0, lambda: self.up(x), lambda: self.down(x))


def test_layers_in_a_branch_no_batch_took_are_named():
    """A layer in the branch of F.contrib.cond that the calibration batch did not take
    kept its deferred shape, and Gluon's DeferredInitializationError came out of
    quantize(); it is a GraphError naming the parameter and the fix, and with the input
    size given the net quantizes and agrees."""
    x = np.abs(RS.randn(8, 16)).astype("float32")        # sum > 0: the first branch
    net = _Branches()
    net.initialize(mx.init.Xavier())
    with pytest.raises(gq.GraphError, match=r"\['_branches\d+_dense1_weight'\] still have no "
                                            r"shape after _Branches ran.*in_units="):
        gq.quantize(net, [x], progress=False)
    net = _Branches(in_units=16)
    net.initialize(mx.init.Xavier())
    qnet = gq.quantize(net, [x, -x], progress=False)
    for batch in (x, -x):
        ref, out = net(mx.nd.array(batch)), qnet(mx.nd.array(batch))
        assert cosine(ref.asnumpy(), out.asnumpy()) > 0.999


class _StarArgs(nn.HybridBlock):
    """``hybrid_forward(F, x, *args)``: every extra argument is one more input."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.first = nn.Dense(8)
            self.rest = nn.Dense(8)

    def hybrid_forward(self, F, x, *args):
        out = self.first(x)
        for extra in args:
            out = out + self.rest(extra)
        return out


def test_a_net_taking_star_args_is_fed_them_with_num_inputs():
    """(x, y) batches of a net taking ``*args`` read y as a label (as GluonCV's YOLOv3's
    training targets are): called with both, the int8 net says to quantize with
    num_inputs=2, which feeds y."""
    net = _StarArgs()
    net.initialize(mx.init.Xavier())
    batches = [tuple(RS.randn(2, 4, 16).astype("float32")) for _ in range(3)]
    x, y = (mx.nd.array(a) for a in batches[0])
    with pytest.raises(gq.InputMismatchError, match=r"quantize it with num_inputs=2"):
        gq.quantize(net, batches, progress=False)(x, y)
    qnet = gq.quantize(net, batches, num_inputs=2, progress=False)
    assert cosine(net(x, y).asnumpy(), qnet(x, y).asnumpy()) > 0.999


class _GroupedResidual(nn.HybridBlock):
    """A grouped convolution whose output is summed with the block's input (oneDNN fuses
    the sum into it)."""

    def __init__(self, groups):
        super().__init__()
        with self.name_scope():
            self.grouped = nn.Conv2D(8, 3, padding=1, groups=groups)

    def hybrid_forward(self, F, x):
        # (the convolution reads relu(x), equal to x here: a sum of a convolution of x and
        # x itself would be merged into one convolution by graph.branches)
        return F.relu(self.grouped(F.relu(x)) + x)


@pytest.mark.parametrize("groups, residual", [(4, False), (8, False), (4, True)])
def test_grouped_convolutions_keep_every_channel(groups, residual):
    # MXNet 1.9.1's int8 convolution with 1 < groups < channels applies its per-channel
    # weight scales per group: with weights 10x smaller and larger than the rest, one
    # channel came out all zeros and others 1.3-1.9x too large. Such a convolution runs
    # int8 with one weight scale for the tensor (int32 out, then requantized), or stays
    # fp32 where a sum fused into it needs its output requantized inside; depthwise
    # (groups == channels) is right with per-channel scales.
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, activation="relu"),
            _GroupedResidual(groups) if residual else nn.Conv2D(8, 3, padding=1, groups=groups))
    net.initialize(mx.init.Xavier())
    net(mx.nd.ones((1, 3, 16, 16)))
    grouped = net[1].grouped if residual else net[1]
    weight = grouped.weight.data().asnumpy()
    weight *= np.array([1, 1, 1, 1, 3, 0.3, 1, 2], np.float32)[:, None, None, None]
    grouped.weight.set_data(mx.nd.array(weight))
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.rand(4, 3, 16, 16).astype("float32")) for _ in range(4)]
    qnet = gq.quantize(net, batches, progress=False)
    ref, out = net(batches[0]).asnumpy(), qnet(batches[0]).asnumpy()
    live = [c for c in range(8) if np.abs(ref[:, c]).max() > 0]    # ReLU may kill one
    assert len(live) >= 6 and not np.abs(out[:, [c for c in range(8) if c not in live]]).any()
    ratios = [np.linalg.norm(out[:, c]) / np.linalg.norm(ref[:, c]) for c in live]
    assert 0.9 < min(ratios) and max(ratios) < 1.1, ratios
    layer = next(r for r in qnet.report() if r.layer == grouped.name)
    if groups == 8:
        assert layer.quantized and layer.reason == "quantized"
    elif residual:
        assert not layer.quantized and "1 < groups < output channels" in layer.reason
    else:
        assert layer.quantized and "one weight scale" in layer.reason and layer.dtype == "int8"
        row = next(r for r in gq.debug.compare(qnet, batches[:1]) if r.layer == grouped.name)
        assert row.sqnr_db > 30, row        # the doctor reads it after its requantize


class _ConvThenGRU(nn.HybridBlock):
    """A tagger: Conv1D over embeddings, then a GRU. Folding the GRU's weight
    concatenation appended a variable after its reader, and the 1-D lift, which walks
    the graph in node order, failed on it (KeyError)."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.emb = nn.Embedding(50, 24)
            self.conv = nn.Conv1D(32, 3, padding=1, activation="relu")
            self.gru = rnn.GRU(16, layout="NTC")
            self.out = nn.Dense(7, flatten=False)

    def hybrid_forward(self, F, tokens):
        x = F.transpose(self.emb(tokens), axes=(0, 2, 1))
        x = F.transpose(self.conv(x), axes=(0, 2, 1))
        return self.out(self.gru(x))


def test_conv1d_before_a_recurrent_layer():
    mx.random.seed(0)
    net = _ConvThenGRU()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.randint(0, 50, (4, 15))) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    assert "Convolution" in [row.op for row in qnet.report() if row.quantized]
    assert cosine(net(batches[0]).asnumpy(), qnet(batches[0]).asnumpy()) > 0.999


class _ConvThenLSTMStates(nn.HybridBlock):
    """A Conv1D, then an LSTM whose new states are outputs too (ELMo's character CNN and
    bidirectional LM are built this way)."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.conv = nn.Conv1D(32, 3, padding=1, activation="relu")
            self.lstm = rnn.LSTM(16)

    def hybrid_forward(self, F, x, states):
        out, states = self.lstm(F.transpose(self.conv(x), axes=(2, 0, 1)), states)
        return out, states


def test_recurrent_states_returned_beside_lifted_convolutions():
    # The 1-D -> 2-D lift mapped one output per node (an LSTM has three: out, h, c), so
    # such nets failed to build with "KeyError: (n, 1)".
    mx.random.seed(0)
    net = _ConvThenLSTMStates()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(mx.nd.array(rs.rand(4, 8, 20)), net.lstm.begin_state(4)) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    assert "Convolution" in [row.op for row in qnet.report() if row.quantized]
    ref, got = net(*batches[1]), qnet(*batches[1])
    assert [a.shape for a in got[1]] == [(1, 4, 16), (1, 4, 16)]
    for a, b in zip([ref[0]] + list(ref[1]), [got[0]] + list(got[1])):
        assert cosine(a.asnumpy(), b.asnumpy()) > 0.999


def test_channels_last_convolutions_quantize():
    # MXNet 1.9.1 on CPU cannot run a layout='NHWC' convolution at all ("could not create
    # a descriptor"), fp32 included: a net trained channels-last (on a GPU) is run
    # channels-first between transposes, and then runs in int8 (graph/layout.py).
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, layout="NHWC", activation="relu", in_channels=3),
            nn.Conv2D(16, 3, padding=1, layout="NHWC", in_channels=8),
            nn.Dense(3, in_units=16 * 12 * 12))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.rand(4, 12, 12, 3).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    assert [row.op for row in qnet.report() if row.quantized].count("Convolution") == 2
    # fp32 reference: the same weights in the channels-first net, on transposed data
    ref = nn.HybridSequential()
    ref.add(nn.Conv2D(8, 3, padding=1, activation="relu", in_channels=3),
            nn.Conv2D(16, 3, padding=1, in_channels=8), nn.Dense(3, in_units=16 * 12 * 12))
    ref.initialize()
    for layer, twin in zip(net, ref):
        weight = layer.weight.data()
        twin.weight.set_data(weight.transpose((0, 3, 1, 2)) if weight.ndim == 4 else weight)
        twin.bias.set_data(layer.bias.data())
    x = batches[0]
    expected = ref[2](ref[1](ref[0](x.transpose((0, 3, 1, 2)))).transpose((0, 2, 3, 1)))
    assert cosine(expected.asnumpy(), qnet(x).asnumpy()) > 0.999


def test_a_failure_the_user_left_in_flight_is_not_reported_as_the_calibrations(caplog):
    """The fp32 channels-last net run once imperatively fails asynchronously; MXNet raises
    that at the next wait, whoever waits: it was reported as a failure of the calibration
    pass ("Calibration forward pass failed inside MXNet: ... could not create a
    descriptor"). It is logged and cleared before, and quantize() works."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, layout="NHWC", activation="relu"),
            nn.MaxPool2D(layout="NHWC"), nn.Conv2D(16, 3, padding=1, layout="NHWC"),
            nn.Dense(3))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(2)
    batches = [mx.nd.array(rs.rand(4, 12, 12, 3).astype("float32")) for _ in range(3)]
    net(batches[0])     # not read: its failure is still in flight
    with caplog.at_level(logging.WARNING, logger="gluon_quant"):
        qnet = gq.quantize(net, batches, progress=False)
    assert "could not create a descriptor" in caplog.text
    assert "before gluon_quant was called" in caplog.text
    assert [row.op for row in qnet.report() if row.quantized].count("Convolution") == 2
    assert qnet(batches[1]).asnumpy().shape == (4, 3)


def test_channels_last_net_with_deferred_shapes_quantizes():
    # Deferred parameters get their shapes by shape inference of the traced graph, not by
    # running the net: run imperatively, its channels-last convolution failed and the
    # asynchronous error surfaced in the calibration pass as a bad-input error.
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, layout="NHWC"), nn.BatchNorm(axis=3),
            nn.Activation("relu"), nn.Conv2D(16, 3, padding=1, layout="NHWC"),
            nn.GlobalAvgPool2D(layout="NHWC"), nn.Dense(3))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(1)
    batches = [mx.nd.array(rs.rand(4, 12, 12, 3).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    assert net[0].weight.shape == (8, 3, 3, 3) and net[3].weight.shape == (16, 3, 3, 8)
    assert [row.op for row in qnet.report() if row.quantized].count("Convolution") == 2
    assert qnet(batches[0]).shape == (4, 3)


class _Foreach(nn.HybridBlock):
    """A recurrence written with ``F.contrib.foreach``."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.inp = nn.Dense(16, flatten=False)
            self.cell = nn.Dense(16, in_units=16, activation="tanh", flatten=False)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F, x):
        def step(data, states):
            h = self.cell(data + states[0])
            return h, [h]
        steps = F.transpose(self.inp(x), axes=(1, 0, 2))
        outs, _ = F.contrib.foreach(step, steps, [F.zeros((4, 16))])
        return self.out(F.mean(outs, axis=0))


def test_control_flow_results_are_not_one_call_late(tmp_path):
    # Under a static_alloc CachedOp, MXNet 1.9.1 returned for every call the result of
    # the previous call's input (garbage on the first): graphs with control flow run
    # without static memory (_mxnet.static_flags).
    mx.random.seed(0)
    net = _Foreach()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.rand(4, 7, 5).astype("float32")) for _ in range(4)]
    qnet = gq.quantize(net, batches[:3], progress=False)
    # The report names the loop for what it is (it used to show the loop body as a fused
    # "FullyConnected+..." layer, with the fp32 reason of an operator inside it).
    loop = [row for row in qnet.report() if "foreach" in row.reason]
    assert [(row.op, row.pattern, row.quantized) for row in loop] == [
        ("_foreach", "_foreach", False)]
    assert "control-flow operator (F.contrib.foreach)" in loop[0].reason
    qnet.export(str(tmp_path / "loop"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "loop"))
    for index in (0, 1, 3, 3, 1):
        expected = net(batches[index]).asnumpy()
        assert cosine(expected, qnet(batches[index]).asnumpy()) > 0.9999, index
        assert cosine(expected, loaded(batches[index]).asnumpy()) > 0.9999, index
    # A user's habitual hybridize(static_alloc=True, static_shape=True) does not bring
    # static memory back (results were one call late again: cosine 0.76-0.84).
    qnet.hybridize(static_alloc=True, static_shape=True)
    loaded.hybridize(static_alloc=True, static_shape=True)
    for index in (0, 1, 3, 3, 1):
        expected = net(batches[index]).asnumpy()
        assert cosine(expected, qnet(batches[index]).asnumpy()) > 0.9999, index
        assert cosine(expected, loaded(batches[index]).asnumpy()) > 0.9999, index


class _SharedIndices(nn.HybridBlock):
    """Picks positions given by an index vector the whole batch shares (no batch axis)."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.conv = nn.Conv2D(8, 3, padding=1, activation="relu")
            self.dense = nn.Dense(4)

    def hybrid_forward(self, F, x, idx):
        flat = F.reshape(self.conv(x), shape=(0, 0, -1))
        return self.dense(F.take(flat, idx, axis=2))


def test_an_input_without_batch_axis_is_not_joined_across_batches():
    # Bias correction and the first run join the kept calibration batches along axis 0:
    # the index vectors became one longer vector, and the dense layer after them failed
    # ("Provided = [4,40], inferred (4,64)"), reported as an MXNet kernel failure.
    mx.random.seed(0)
    net = _SharedIndices()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(mx.nd.array(rs.rand(2, 3, 10, 10).astype("float32")),
                mx.nd.array(rs.randint(0, 100, (5,)).astype("float32"))) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    x, idx = batches[1]
    assert cosine(net(x, idx).asnumpy(), qnet(x, idx).asnumpy()) > 0.99


class StatefulEncoder(mx.gluon.HybridBlock):
    """``net(x, [h, c])`` -> ``(projection, [h', c'])``: an RNN step carried across calls."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.rnn = rnn.LSTM(48, input_size=24)
            self.proj = nn.Dense(512, flatten=False)

    def hybrid_forward(self, F, x, states):
        out, new_states = self.rnn(x, states)
        return self.proj(out), new_states


def test_list_arguments_such_as_rnn_states_are_inputs(tmp_path):
    """``lstm(x, [h, c])`` is how Gluon RNNs take their states, and ``hybridize()`` accepts
    nested lists of arrays: so does quantize, calling and the exported model."""
    net = StatefulEncoder()
    net.initialize(mx.init.Xavier())
    make = lambda: (mx.nd.array(RS.normal(size=(10, 8, 24))),
                    [mx.nd.array(RS.normal(size=(1, 8, 48))) for _ in range(2)])
    batches = [make() for _ in range(4)]
    qnet = gq.quantize(net, batches, num_inputs=2)
    x, states = make()
    ref, out = net(x, states), qnet(x, states)
    assert isinstance(out, tuple) and isinstance(out[1], tuple) and len(out[1]) == 2
    assert [r.quantized for r in _layer(qnet, "FullyConnected")] == [True]
    for a, b in zip([ref[0], *ref[1]], [out[0], *out[1]]):
        assert cosine(a.asnumpy(), b.asnumpy()) > 0.999
    assert qnet.input_names == ["data0", "data1", "data2"]
    # a dict batch by argument name, and the flat call, give the same
    qdict = gq.quantize(net, [{"x": b[0], "states": b[1]} for b in batches])
    assert np.array_equal(qdict(x, states)[0].asnumpy(), out[0].asnumpy())
    assert np.array_equal(qnet(x, *states)[0].asnumpy(), out[0].asnumpy())
    for other in (qnet.clone(granularity="tensor").finalize(qnet.calibration_table),
                  gq.quantize(net, calib_table=qnet.calibration_table)):
        assert other.input_names == qnet.input_names
        assert cosine(other(x, states)[0].asnumpy(), out[0].asnumpy()) > 0.999
    # the doctor runs the fp32 net with the same nesting
    assert "worst of 3 outputs" in str(gq.debug.compare(qnet, batches[:1]))
    assert len(gq.debug.sensitivity(qnet, batches[:1])) == 1
    assert gq.debug.activation_floor(qnet, batches[:1]).int8_cosine > 0.999
    qnet.export(str(tmp_path / "enc"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "enc"))
    assert np.array_equal(loaded(x, states)[1][0].asnumpy(), out[1][0].asnumpy())
    # a batch nested differently from the first is refused, naming both structures
    with pytest.raises(gq.InputMismatchError, match=r"nested as \[0, 0\].*traced with "
                                                    r"\[0, \[0, 0\]\]"):
        gq.quantize(net, batches + [(x, states[0])], num_inputs=2)


@pytest.mark.parametrize("variant", ["SyncBatchNorm", "BatchNormReLU"])
def test_batchnorm_variants_fold_like_batchnorm(variant):
    """A net trained with GluonCV's ``norm_layer=SyncBatchNorm``, or written with Gluon's
    ``nn.BatchNormReLU``: each runs as the BatchNorm (+ ReLU) it is at inference, folded
    into its convolution (it stayed fp32 between a dequantize and a quantize)."""
    from mxnet.gluon.contrib.nn import SyncBatchNorm

    def norm():
        if variant == "SyncBatchNorm":
            return [SyncBatchNorm(num_devices=1), nn.Activation("relu")]
        return [nn.BatchNormReLU()]
    net = nn.HybridSequential()
    net.add(nn.Conv2D(32, 3, padding=1), *norm(), nn.Conv2D(32, 3, padding=1), *norm(),
            nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(5)
    x = mx.nd.array(rs.uniform(-1, 1, (8, 3, 16, 16)).astype("float32"))
    net(x)
    for name, param in net.collect_params().items():     # trained-looking statistics
        if name.endswith(("running_mean", "running_var", "gamma", "beta")):
            low = 0.5 if name.endswith(("running_var", "gamma")) else -0.2
            param.set_data(mx.nd.array(rs.uniform(low, low + 0.6, param.shape)))
    qnet = gq.quantize(net, [x[:4], x[4:]], progress=False)
    report = qnet.report()
    assert not [row.op for row in report if row.op.startswith("_contrib_")]
    folded = [row for row in report if row.pattern == "Convolution+BatchNorm+Activation(relu)"]
    assert len(folded) == 2 and all(row.quantized for row in folded)
    assert coverage(report) == (3, 3)
    assert _agree(net, qnet, x) > 0.999


@pytest.mark.parametrize("rows", [True, False])
def test_a_standalone_batchnorm_is_int8_on_feature_maps_and_fp32_on_rows(rows):
    """A BatchNorm after a ReLU cannot fold into the layer before it. On (N, C, L) feature
    maps MXNet's int8 BatchNorm keeps the data int8 between the convolutions (faster); on
    (N, C) rows it measured 1.6-4.3x slower than the fp32 one, so there it stays fp32,
    with the reason in the report, and the dense layers around it stay int8."""
    from gluon_quant.backends import ONEDNN, why_not_int8
    net = nn.HybridSequential()
    if rows:
        net.add(nn.Dense(32, activation="relu"), nn.BatchNorm(), nn.Dense(32, activation="relu"),
                nn.BatchNorm(), nn.Dense(4))
        shape = (64, 16)
    else:
        net.add(nn.Conv1D(32, 3, padding=1, activation="relu"), nn.BatchNorm(),
                nn.Conv1D(32, 3, padding=1, activation="relu"), nn.BatchNorm(),
                nn.GlobalAvgPool1D(), nn.Dense(4))
        shape = (8, 3, 64)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(3)
    batches = [mx.nd.array(rs.randn(*shape).astype("float32")) for _ in range(3)]
    set_batchnorm_statistics(net, mx.nd.concat(*batches, dim=0))
    qnet = gq.quantize(net, batches, progress=False)
    norms = [row for row in qnet.report() if row.op == "BatchNorm"]
    assert len(norms) == 2
    for row in norms:
        assert row.quantized is not rows, row
        if rows:
            assert row.reason.startswith("input rank 2: MXNet 1.9.1's int8 BatchNorm on (N, C) "
                                         "rows is slower than its fp32 one"), row.reason
    layers = [row for row in qnet.report() if row.op in ("FullyConnected", "Convolution")]
    assert sum(row.quantized for row in layers) >= 2
    assert _agree(net, qnet, batches[0]) > 0.995     # four logits a sample
    # the condition itself: rank from the data's shape, where the attributes give none
    support = ONEDNN.ops["BatchNorm"]
    assert why_not_int8(support, {"axis": "1"}, rank=2).startswith("input rank 2: ")
    assert why_not_int8(support, {"axis": "1"}, rank=3) is None
    assert why_not_int8(support, {"axis": "1"}) is None      # shape unknown: not judged


class _MeanPooled(nn.HybridBlock):
    """Global pooling written as means, as nets ported from PyTorch write it: the squeeze of
    a squeeze-excite block (keepdims) and the pooling before the classifier; and a global
    max written as a max."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.conv = nn.Conv2D(16, 3, padding=1, activation="relu")
            self.squeeze = nn.Conv2D(4, 1, activation="relu")
            self.excite = nn.Conv2D(16, 1)
            self.out = nn.Dense(10)

    def hybrid_forward(self, F, x):
        h = self.conv(x)
        gate = F.sigmoid(self.excite(self.squeeze(F.mean(h, axis=(2, 3), keepdims=True))))
        h = F.broadcast_mul(h, gate)
        return (self.out(F.mean(h, axis=(-2, -1))), F.mean(h, axis=1),
                F.max(self.conv(x), axis=(2, 3)))


def test_spatial_means_and_maxima_run_as_int8_global_pooling(disable_pass):
    mx.random.seed(0)
    net = _MeanPooled()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.rand(8, 3, 12, 12).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    reductions = [(row.op, row.pattern, row.quantized) for row in report
                  if row.op in ("mean", "max", "Pooling", "Flatten")]
    # The squeeze and the max pool the convolution's uint8 output in int8 (the second
    # mean reads the fp32 gated product, signed as far as the graph can tell:
    # signed_global_pools); the mean over channels runs as a Deconvolution of ones, in
    # fp32 (graph.pooling.axis_reductions).
    assert sorted(reductions) == sorted([
        ("Pooling", "Pooling(avg)", True), ("Pooling", "Pooling(avg)", False),
        ("Flatten", "Flatten", True),
        ("Pooling", "Pooling(max)", True), ("Flatten", "Flatten", True)])
    assert [row.op for row in report if row.node.endswith("mean2_deconv")] == \
        ["Deconvolution"]
    assert coverage(report) == (5, 5)      # the convolution is called twice
    for a, b in zip(net(batches[1]), qnet(batches[1])):
        assert a.shape == b.shape and cosine(a.asnumpy(), b.asnumpy()) > 0.999
    disable_pass("spatial_reductions")
    disable_pass("axis_reductions")
    before = gq.quantize(net, batches, progress=False).report()
    assert sorted(row.op for row in before if row.op in ("mean", "max", "Pooling")) == [
        "max", "mean", "mean", "mean"]


class _PointFeatures(nn.HybridBlock):
    """PointNet's global feature (a max over the points of 1-D convolutions) and a 1-D CNN
    flattened into its classifier."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.conv = nn.Conv1D(32, 1, activation="relu")
            self.feat = nn.Dense(8)
            self.flat = nn.Dense(4)

    def hybrid_forward(self, F, x):
        h = self.conv(x)
        return self.feat(F.max(h, axis=2)), self.flat(F.flatten(h))


def test_a_max_over_1d_positions_pools_in_int8_and_flatten_reads_it_unsqueezed(disable_pass):
    net = _PointFeatures()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(1)
    batches = [mx.nd.array(rs.randn(8, 3, 64).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    report = qnet.report()
    assert not [row for row in report if row.op in ("max", "squeeze")]
    assert [(row.pattern, row.quantized) for row in report if row.op == "Pooling"] == [
        ("Pooling(max)", True)]
    assert coverage(report) == (3, 3)
    for a, b in zip(net(batches[2]), qnet(batches[2])):
        assert cosine(a.asnumpy(), b.asnumpy()) > 0.999
    disable_pass("spatial_reductions")
    disable_pass("axis_reductions")
    assert "max" in [row.op for row in gq.quantize(net, batches, progress=False).report()]


class _AdaptiveHead(nn.HybridBlock):
    """torchvision's VGG as ported: an adaptive average pooling to a fixed grid, flattened."""

    def __init__(self, grid):
        super().__init__()
        self.grid = grid
        with self.name_scope():
            self.conv = nn.Conv2D(16, 3, padding=1, activation="relu")
            self.out = nn.Dense(10)

    def hybrid_forward(self, F, x):
        pooled = F.contrib.AdaptiveAvgPooling2D(self.conv(x), output_size=self.grid)
        return self.out(F.flatten(pooled))


@pytest.mark.parametrize("grid, int8_pool", [((4, 2), True), (8, True), (3, False)])
def test_adaptive_poolings_that_tile_their_input_run_as_int8_pooling(grid, int8_pool):
    net = _AdaptiveHead(grid)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(3)
    batches = [mx.nd.array(rs.rand(4, 3, 8, 8).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    pools = [(row.op, row.quantized) for row in qnet.report()
             if "Pool" in row.op]
    # 8x8 tiles into 4x2 and 8x8 grids; a 3x3 grid has overlapping windows: left as it is.
    assert pools == ([("Pooling", True)] if int8_pool
                     else [("_contrib_AdaptiveAvgPooling2D", False)])
    assert cosine(net(batches[1]).asnumpy(), qnet(batches[1]).asnumpy()) > 0.999


class _UnsizedGlobalPool(nn.HybridBlock):
    """``F.Pooling(global_pool=True)`` with no kernel, as a hand-written net says it."""
    def __init__(self, conv):
        super().__init__()
        self.conv, self.out = conv, nn.Dense(10)

    def hybrid_forward(self, F, x):
        return self.out(F.Pooling(self.conv(x), global_pool=True, pool_type="avg"))


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv2D(16, 3, activation="relu"), (8, 3, 12, 12)),
    (nn.Conv3D(16, 3, activation="relu"), (2, 3, 6, 8, 8)),
    (nn.Conv1D(16, 3, activation="relu"), (8, 3, 20))])
def test_a_global_pooling_written_without_a_kernel_runs_in_int8_with_no_rebuild(
        conv, shape, caplog):
    """MXNet's int8 pooling read the missing kernel as a 0-D pooling and failed at the
    first run; the node was kept fp32 after a rebuild. It gets the unit kernel of its
    input's rank (1-D data is then lifted to 2-D with its convolution, as a kernel-sized
    1-D pooling is)."""
    net = _UnsizedGlobalPool(conv)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(4)
    batches = [mx.nd.array(rs.rand(*shape).astype("float32")) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="gluon_quant"):
        qnet = gq.quantize(net, batches, progress=False)
    assert "failed at the first run" not in caplog.text
    pools = [row for row in qnet.report() if row.op == "Pooling"]
    assert [row.quantized for row in pools] == [True]
    assert cosine(net(batches[1]).asnumpy(), qnet(batches[1]).asnumpy()) > 0.999

@pytest.mark.parametrize("target", [(0, -1), (-1, 16 * 4 * 4)])
def test_a_reshape_that_flattens_runs_as_an_int8_flatten(target, disable_pass):
    class Head(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.conv = nn.Conv2D(16, 3, padding=1, activation="relu")
                self.pool = nn.MaxPool2D(2)
                self.out = nn.Dense(10)

        def hybrid_forward(self, F, x):
            return self.out(F.reshape(self.pool(self.conv(x)), shape=target))

    net = Head()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(6)
    batches = [mx.nd.array(rs.rand(8, 3, 8, 8).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    assert [(row.op, row.quantized) for row in qnet.report()] == [
        ("Convolution", True), ("Pooling", True), ("Flatten", True), ("FullyConnected", True)]
    x = mx.nd.array(rs.rand(3, 3, 8, 8).astype("float32"))    # another batch size
    assert cosine(net(x).asnumpy(), qnet(x).asnumpy()) > 0.999
    disable_pass("reshapes_as_flatten")
    assert ("Reshape", False) in [(row.op, row.quantized)
                                  for row in gq.quantize(net, batches, progress=False).report()]


class _UnrolledCell(nn.HybridBlock):
    """A cell unrolled from its begin_state (F.zeros(shape=(0, hidden)))."""

    def __init__(self, cell):
        super().__init__()
        with self.name_scope():
            self.inp = nn.Dense(32, flatten=False)
            self.cell = cell
            self.out = nn.Dense(10)

    def hybrid_forward(self, F, x):
        outs, _ = self.cell.unroll(4, self.inp(x), layout="NTC", merge_outputs=False)
        return self.out(outs[-1])


def _unrolled(cell, caplog):
    net = _UnrolledCell(cell)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(7)
    batches = [mx.nd.array(rs.randn(8, 4, 16).astype("float32")) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="gluon_quant"):
        qnet = gq.quantize(net, batches, progress=False)
    assert "failed at the first run" not in caplog.text
    assert cosine(net(batches[1]).asnumpy(), qnet(batches[1]).asnumpy()) > (
        0.997 if PAIRS_SATURATE else 0.999)           # 7-bit codes where pairs saturate
    return [row for row in qnet.report() if row.op == "elemwise_add"]


def test_an_unrolled_cell_builds_without_a_first_run_fallback(caplog):
    """A ReLU RNN cell: its sums are read by an int8 ReLU, the first step's reads the
    zero-batch begin_state and stays fp32."""
    sums = _unrolled(rnn.RNNCell(64, activation="relu", input_size=32), caplog)
    first = [row for row in sums if "known only at run time" in row.reason]
    assert len(first) == 1 and not first[0].quantized and "_t0_" in first[0].node
    assert [row.quantized for row in sums].count(True) == 3     # the later steps' sums


def test_lstm_cell_sums_read_by_the_gate_split_stay_fp32(caplog):
    """An LSTM cell's i2h + h2h is read by the SliceChannel that splits the gates (no int8
    kernel): an int8 sum there quantized both inputs and was dequantized at once."""
    sums = _unrolled(rnn.LSTMCell(64, input_size=32), caplog)
    gates = [row for row in sums if row.node.endswith("plus0")]
    assert len(gates) == 4
    assert all(not row.quantized and "read by fp32 operators only" in row.reason
               for row in gates), [(row.node, row.reason) for row in gates]


class _TwoStreams(nn.HybridBlock):
    """Dropout twice on one input, F.identity twice on the other."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.image = nn.Conv2D(32, 3, padding=1, activation="relu")
            self.mc = nn.Dense(8)

    def hybrid_forward(self, F, x, y):
        x = F.Dropout(F.Dropout(x, p=0.3), p=0.2)
        y = F.identity(F.identity(y))
        return F.broadcast_add(F.mean(self.image(x), axis=(2, 3)), self.mc(y).sum(axis=1,
                                                                              keepdims=True))


@pytest.mark.parametrize("layers", [
    ["dropout", "dropout"], ["dropout", "identity", "dropout"], ["two inputs"]])
def test_no_op_chains_after_an_input_quantize(layers, disable_pass):
    """Two dropouts (or F.identity calls) in a row after an input: MXNet's oneDNN fusion
    left a variable reading the input, and quantize failed ("inputs that are neither
    network inputs nor parameters: ['data0']"). The chain runs as one no-op; the layer
    after it is int8."""
    if layers == ["two inputs"]:
        net, shapes = _TwoStreams(), [(8, 3, 16, 16), (8, 4)]
    else:
        net, shapes = nn.HybridSequential(), [(16, 10, 64)]
        make = {"dropout": lambda: nn.Dropout(0.5),
                "identity": lambda: nn.HybridLambda(lambda F, x: F.identity(x))}
        net.add(*[make[k]() for k in layers], nn.Dense(128, flatten=False, activation="relu"),
                nn.Dense(128, flatten=False))
    net.initialize(mx.init.Xavier())
    inputs = [mx.nd.array(RS.uniform(-1, 1, s).astype("float32")) for s in shapes]
    batches = [tuple(a[i:i + 4] for a in inputs) for i in range(0, shapes[0][0], 4)]
    qnet = gq.quantize(net, batches if len(shapes) > 1 else [b[0] for b in batches],
                       progress=False)
    assert coverage(qnet.report())[0] >= 1
    assert _agree(net, qnet, *inputs) > 0.999
    disable_pass("identity_chains")
    with pytest.raises(gq.GraphError, match="neither network inputs nor parameters"):
        gq.quantize(net, batches if len(shapes) > 1 else [b[0] for b in batches],
                    progress=False)


class _PaddedConvs(nn.HybridBlock):
    """Explicit padding before convolutions, as nets ported from TensorFlow write it."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        with self.name_scope():
            self.stem = nn.Conv2D(16, 3, padding=1, activation="relu")
            self.a = nn.Conv2D(16, 3, dilation=2 if kind == "dilated" else 1)
            self.b = nn.Conv2D(16, 3)
            self.head = nn.Conv2D(8, 1)

    def hybrid_forward(self, F, x):
        x = self.stem(x)
        grow = 2 if self.kind == "dilated" else 1
        width = {"asymmetric": (0, 0, 0, 0, 0, 1, 0, 1), "reflect": (0, 0, 0, 0, 1, 1, 1, 1)}.get(
            self.kind, (0, 0, 0, 0, grow, grow, grow, grow))
        padded = F.pad(x, mode="reflect" if self.kind == "reflect" else "constant",
                       pad_width=width)
        y = F.relu(self.a(padded))
        if self.kind == "two readers":
            y = y + self.b(padded)
        if self.kind == "conv and pooling":
            y = y + F.Pooling(padded, kernel=(3, 3), pool_type="max")
        return self.head(y)


@pytest.mark.parametrize("kind, folded", [
    ("symmetric", True), ("dilated", True), ("two readers", True),
    ("asymmetric", True), ("reflect", False), ("conv and pooling", True)])
def test_a_zero_pad_before_convolutions_becomes_their_padding(kind, folded, disable_pass):
    """F.pad then an unpadded convolution (Xception, DeepLab): Pad has no int8 kernel, and
    each one cost a dequantize and a quantize (Xception-65: 63 of them; 2.25x faster int8
    folded). Folded only where exact: zeros, read by convolutions (an asymmetric one into
    a kernel with zero taps) and poolings that compute the same with it (below)."""
    net = _PaddedConvs(kind)
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.uniform(-1, 1, (8, 3, 14, 14)).astype("float32"))
    qnet = gq.quantize(net, [x[:4], x[4:]], progress=False)
    pads = [r for r in qnet.report() if r.op == "Pad"]
    assert (pads == []) == folded
    assert _agree(net, qnet, x) > 0.999
    if folded:
        disable_pass("pads_into_convolutions")
        assert [r.op for r in gq.quantize(net, [x[:4], x[4:]], progress=False).report()
                if r.op == "Pad"] == ["Pad"]


class _SamePadded(nn.HybridBlock):
    """TF-port "same" padding: asymmetric zero pads before convolutions of several kinds."""
    def __init__(self, dims=2):
        super().__init__()
        conv = nn.Conv2D if dims == 2 else nn.Conv3D
        self.dims = dims
        with self.name_scope():
            self.stem = conv(16, 3, padding=1, activation="relu")
            self.depthwise = conv(16, 3, strides=2, groups=16, activation="relu")
            self.narrow = conv(8, 3, padding=1, activation="relu")   # its own pad added
            self.last = conv(8, 5, strides=(2,) * dims)

    def hybrid_forward(self, F, x):
        side = (0, 0, 0, 0) + (0, 1, 0, 1, 0, 1)[:2 * self.dims]
        mixed = (0, 0, 0, 0) + (1, 0, 0, 2, 1, 1)[:2 * self.dims]
        y = self.depthwise(F.pad(self.stem(x), mode="constant", pad_width=side))
        y = self.narrow(F.pad(y, mode="constant", pad_width=mixed))
        return self.last(F.pad(y, mode="constant", pad_width=(0, 0, 0, 0) + (2, 1) * self.dims))


@pytest.mark.parametrize("dims", [2, 3])
def test_asymmetric_zero_pads_fold_into_kernels_with_zero_taps_exactly(dims, tmp_path):
    """A TF "same" pad (one pixel after, none before) before a stride-2 depthwise
    convolution is not the convolution's own (symmetric) padding: it stayed an fp32 Pad,
    MXNet's slow copy between a dequantize and a quantize (EfficientNet-Lite0 at batch
    40: int8 580 ms, 187 ms folded). Padded by the larger side with zero taps on the
    smaller one, the convolution computes the same windows: equal in fp32, every Pad gone,
    and the export reloads the grown kernels."""
    net = _SamePadded(dims)
    net.initialize(mx.init.Xavier())
    shape = (4, 3, 12, 12) if dims == 2 else (2, 3, 6, 8, 8)
    x = mx.nd.array(RS.uniform(-1, 1, shape).astype("float32"))
    fp32 = gq.quantize(net, [x], exclude=["Convolution", "Activation"], progress=False)
    np.testing.assert_allclose(fp32(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-5)
    qnet = gq.quantize(net, [x], progress=False)
    report = qnet.report()
    assert [r.op for r in report if r.op == "Pad"] == []
    folded = [r for r in report if "asymmetric zero pad" in r.reason]
    assert len(folded) == 3 and all(r.quantized for r in folded), str(report)
    assert "kernel (4, 4" in folded[0].reason and "padded (1, 1" in folded[0].reason
    assert _agree(net, qnet, x) > 0.999
    qnet.export(str(tmp_path / "same"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "same"))
    assert np.array_equal(loaded(x).asnumpy(), qnet(x).asnumpy())


def test_an_asymmetric_pad_stays_before_a_wide_convolution_and_on_the_input():
    """A wide convolution is bound by its multiply-adds: a 3x3 kernel grown to 4x4 would
    cost more than the pad (512 -> 1024 channels at 14 px: 0.93x int8, 0.60x fp32). A pad
    of the network's input is between no int8 layers: both stay."""
    class Wide(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.stem = nn.Conv2D(64, 3, activation="relu")
                self.wide = nn.Conv2D(512, 3, strides=2)

        def hybrid_forward(self, F, x):
            pad = (0, 0, 0, 0, 0, 1, 0, 1)
            y = self.stem(F.pad(x, mode="constant", pad_width=pad))
            return self.wide(F.pad(y, mode="constant", pad_width=pad))

    net = Wide()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.uniform(-1, 1, (2, 3, 14, 14)).astype("float32"))
    report = gq.quantize(net, [x], progress=False).report()
    assert [r.op for r in report if r.op == "Pad"] == ["Pad", "Pad"], str(report)
    assert not any("asymmetric zero pad" in r.reason for r in report)

class _PaddedPool(nn.HybridBlock):
    """A pad between a convolution (ReLU or not) and a pooling, as Keras ports write it."""
    def __init__(self, pad, pool, relu=True, **pool_args):
        super().__init__()
        self.pad, self.relu, self.pool, self.pool_args = pad, relu, pool, pool_args
        with self.name_scope():
            self.conv = nn.Conv2D(16, 3, padding=1)
            self.head = nn.Conv2D(8, 1)

    def hybrid_forward(self, F, x):
        y = self.conv(x)
        y = F.relu(y) if self.relu else y
        y = F.pad(y, mode="constant", pad_width=(0, 0, 0, 0) + self.pad)
        return self.head(F.Pooling(y, kernel=(3, 3), stride=(2, 2), pool_type=self.pool,
                                   **self.pool_args))


@pytest.mark.parametrize("pad, pool, relu, size, args, folded", [
    ((1, 1, 1, 1), "max", True, 16, {}, True),      # Keras ResNet's stem pooling
    ((0, 1, 0, 1), "max", True, 16, {}, True),      # TF "same": the full convention
    ((1, 1, 1, 1), "avg", False, 16, {}, True),     # counts the padding either way
    ((1, 1, 1, 1), "max", False, 16, {}, False),    # negative values: 0 is not -inf
    ((0, 1, 0, 1), "max", True, 15, {}, True),      # the pad is never read
    ((0, 1, 0, 0), "max", True, 16, {}, False),     # full would add a column
    ((1, 1, 1, 1), "avg", False, 16, {"count_include_pad": False}, False),
])
def test_a_zero_pad_before_a_pooling_becomes_its_padding_where_exact(
        pad, pool, relu, size, args, folded):
    """A Keras-ported ResNet stem pads after its ReLU and max-pools unpadded: the fp32 Pad
    between the int8 convolution and the int8 pooling cost it 45% of its int8 time (batch
    16 at 224 px: 156 ms, 105 ms folded). Folded only where the pooling computes the same
    values; the int8 pooling reads the convolution's output directly."""
    net = _PaddedPool(pad, pool, relu, **args)
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.uniform(-1, 1, (4, 3, size, size)).astype("float32"))
    fp32 = gq.quantize(net, [x], exclude=["Convolution", "Pooling", "Activation"],
                       progress=False)
    np.testing.assert_allclose(fp32(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
    qnet = gq.quantize(net, [x], progress=False)
    report = qnet.report()
    assert ([r.op for r in report if r.op == "Pad"] == []) == folded, str(report)
    assert [r.quantized for r in report if r.op == "Pooling"] == [True]
    assert _agree(net, qnet, x) > 0.999

class _Cropped(nn.HybridBlock):
    """Crops of convolutions' outputs: a TCN block's causal "chomp" (``Conv1D`` padded
    ``(k - 1) * d``, the last ``(k - 1) * d`` steps sliced off), and others."""
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        two_d = kind in ("2-D both sides", "more than its padding", "two readers")
        conv = nn.Conv2D if two_d else nn.Conv1D
        pad = {"2-D both sides": 2, "more than its padding": 1, "strided": 2}.get(kind, 4)
        with self.name_scope():
            self.a = conv(16, 3, padding=pad, dilation=1 if two_d else 2,
                          strides=2 if kind == "strided" else 1)
            self.b = conv(16, 3, padding=pad if two_d else 2, in_channels=16)
            self.head = conv(8, 1)

    def hybrid_forward(self, F, x):
        y = self.a(x)
        if self.kind in ("causal", "strided"):
            y = F.slice_axis(y, axis=2, begin=0, end=-4)
        elif self.kind == "anti-causal":
            y = F.slice_axis(y, axis=-1, begin=4, end=None)
        elif self.kind == "channels":
            y = F.slice_axis(y, axis=1, begin=0, end=8)
        else:
            crop = 1 if self.kind != "more than its padding" else 2
            z = F.slice(y, begin=(None, None, crop, crop), end=(None, None, -crop, -crop))
            y = z + F.Pooling(y, kernel=(3, 3), pool_type="max") \
                if self.kind == "two readers" else z
        y = F.relu(y)
        return self.head(F.relu(self.b(y)) if self.kind != "channels" else y)


@pytest.mark.parametrize("kind, folded", [
    ("causal", True), ("anti-causal", True), ("2-D both sides", True),
    ("more than its padding", False), ("strided", False), ("channels", None),
    ("two readers", False)])
def test_a_crop_of_a_convolution_becomes_its_padding(kind, folded, tmp_path):
    """A causal TCN (Conv1D padded (k - 1) * d, its last (k - 1) * d steps sliced off,
    before each ReLU): the slice has no int8 kernel, and each one cost a dequantize, a
    slice of oneDNN's blocked output and a quantize (5 blocks of 128 channels, batch 16 x
    1000 steps, int8: 106 ms, 68 ms folded). The convolution pads the left only instead:
    symmetrically, with zero taps after its kernel. Exact in fp32, at any length; crops
    that are no padding (wider than it, of a strided convolution, of an output read
    twice) stay, and one of the channels runs as a convolution of those filters."""
    net = _Cropped(kind)
    net.initialize(mx.init.Xavier())
    shape = (4, 3, 12, 12) if "2-D" in kind or kind in ("more than its padding",
                                                         "two readers") else (4, 3, 40)
    x = mx.nd.array(RS.uniform(-1, 1, shape).astype("float32"))
    fp32 = gq.quantize(net, [x], exclude=["Convolution", "Activation", "Pooling",
                                          "elemwise_add"], progress=False)
    other = mx.nd.array(RS.uniform(-1, 1, shape[:2] + (64,) * (len(shape) - 2))
                        .astype("float32"))
    if kind != "more than its padding":
        np.testing.assert_allclose(fp32(other).asnumpy(), net(other).asnumpy(), rtol=1e-4,
                                   atol=1e-5)
    qnet = gq.quantize(net, [x], progress=False)
    report = qnet.report()
    crops = [r for r in report if r.op in ("slice_axis", "slice")]
    assert (crops == []) == (folded is not False), str(report)
    assert len([r for r in report if "the crop" in r.reason]) == bool(folded)
    # a crop of the channels is a convolution of fewer filters (graph.channelsplits)
    assert len([r for r in report if "channel slices" in r.reason]) == (folded is None)
    assert _agree(net, qnet, x) > 0.999
    if kind == "causal":
        grown = [r for r in report if "the crop" in r.reason][0]
        assert "kernel (5,)" in grown.reason and grown.quantized, str(report)
        qnet.export(str(tmp_path / "tcn"))
        loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "tcn"))
        assert np.array_equal(loaded(other).asnumpy(), qnet(other).asnumpy())


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="MXNet 1.9.1's bfloat16 kernels "
                    "(oneDNN) need AVX-512: the fp32 AMP net itself cannot run here")
def test_a_bfloat16_amp_graph_with_float32_weights_quantizes(tmp_path):
    """mx.contrib.amp's bfloat16 conversion that keeps the weights float32 (amp_cast nodes
    around each layer) quantizes: every convolution in int8, near its fp32 source, and its
    export reloads bit-identically."""
    from mxnet.contrib import amp
    mx.random.seed(2)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
            nn.Conv2D(16, 3, padding=1), nn.Activation("relu"), nn.GlobalAvgPool2D(),
            nn.Dense(10))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.rand(16, 3, 16, 16).astype("float32"))
    set_batchnorm_statistics(net, x)
    net.hybridize()
    net(x)
    converted = amp.convert_hybrid_block(net, target_dtype="bfloat16", ctx=mx.cpu(),
                                         cast_optional_params=False)
    converted(x)
    converted.export(str(tmp_path / "fp32"), remove_amp_cast=False)
    assert "amp_cast" in (tmp_path / "fp32-symbol.json").read_text()
    qnet = gq.quantize(converted, [x[:8], x[8:]], progress=False)
    assert coverage(qnet.report()) == (3, 3)
    assert _agree(net, qnet, x) >= 0.995
    qnet.export(str(tmp_path / "amp"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "amp"))
    assert np.array_equal(loaded(x).asnumpy(), qnet(x).asnumpy())


class _LoggedPair(nn.HybridBlock):
    """Two inputs, behind a ``__call__`` that only passes them on (as logging or timing
    wrappers do): its ``*args`` say nothing of the inputs, ``hybrid_forward`` does."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a, self.b, self.out = nn.Dense(8), nn.Dense(8), nn.Dense(3)

    def __call__(self, x, *args):       # pylint: disable=arguments-differ
        return super().__call__(x, *args)

    def hybrid_forward(self, F, x, y):
        return self.out(F.relu(self.a(x) + self.b(y)))


def test_a_call_wrapper_passing_args_on_leaves_the_inputs_to_hybrid_forward():
    """RoBERTa's named __call__ says its inputs; a wrapper's ``(x, *args)`` does not: read
    alone, it made a two-input net a one-input one ("missing ... 'y'")."""
    net = _LoggedPair()
    net.initialize(mx.init.Xavier())
    batches = [(mx.nd.array(RS.rand(4, 5)), mx.nd.array(RS.rand(4, 6))) for _ in range(2)]
    qnet = gq.quantize(net, batches, progress=False)
    assert qnet.fused.inputs.arg_names == ["x", "y"]
    assert _agree(net, qnet, *batches[0]) >= 0.999


class _SparseLinear(nn.HybridBlock):
    """A linear model over sparse features: ``F.sparse.dot(csr, W)``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(500, 32), init=mx.init.Xavier())
            self.out = nn.Dense(8)

    def hybrid_forward(self, F, x, weight):  # pylint: disable=arguments-differ
        return self.out(F.relu(F.sparse.dot(x, weight)))


def test_sparse_inputs_are_read_dense(tmp_path):
    """CSR batches (``F.sparse.dot`` features) failed calibration with a bare
    NotImplementedError (a CSR array has no ``size``): they are read dense, and the int8
    net and its export take CSR calls as the fp32 net does."""
    net = _SparseLinear()
    net.initialize()
    rs = np.random.RandomState(7)
    make = lambda: mx.nd.array((rs.rand(16, 500) < 0.02) * rs.rand(16, 500)).tostype("csr")
    batches = [make() for _ in range(4)]
    qnet = gq.quantize(net, batches[:3], progress=False)
    assert [(r.op, placed(r)) for r in _layer(qnet, "FullyConnected")] == \
        [("FullyConnected", True)] * 2, qnet.report()
    x = batches[3]
    assert _agree(net, qnet, x) > 0.9995
    qnet.export(str(tmp_path / "sparse"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "sparse"))
    assert np.array_equal(loaded(x).asnumpy(), qnet(x).asnumpy())


class _GraphConv(nn.HybridBlock):
    """A graph convolution, ``relu(A . (X . W) + b)``: node features ``(N, F)`` and the
    normalized adjacency ``(N, N)``, with no batch axis (N varies from graph to graph)."""

    def __init__(self, in_units, units, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(in_units, units),
                                          init=mx.init.Xavier())
            self.bias = self.params.get("bias", shape=(units,), init="zeros")

    def hybrid_forward(self, F, adj, x, weight, bias):  # pylint: disable=arguments-differ
        return F.relu(F.broadcast_add(F.dot(adj, F.dot(x, weight)), bias))


class _GCN(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1, self.conv2 = _GraphConv(64, 128), _GraphConv(128, 128)
            self.out = nn.Dense(7)

    def hybrid_forward(self, F, adj, x):  # pylint: disable=arguments-differ
        return self.out(self.conv2(adj, self.conv1(adj, x)))


def test_inputs_whose_leading_axes_are_not_a_batch(tmp_path):
    """A graph net's inputs share their leading axis (N nodes) but it is not a batch
    axis: the calibration samples kept for bias correction and the first run cut both to
    their first rows, giving a (32, N) adjacency ("dot shape error: [32,300] X [32,256]",
    blamed on an MXNet kernel). The cut is kept only where the graph takes it."""
    rs = np.random.RandomState(4)

    def graph(n):
        adj = (rs.rand(n, n) < 0.05).astype("float32") + np.eye(n, dtype="float32")
        adj = adj + adj.T
        return adj / adj.sum(axis=1, keepdims=True), rs.rand(n, 64).astype("float32")

    net = _GCN()
    net.initialize()
    qnet = gq.quantize(net, [graph(n) for n in (120, 100, 140)], progress=False)
    assert [placed(r) for r in _layer(qnet, "FullyConnected")][:2] == [True, True], \
        qnet.report()
    adj, x = (mx.nd.array(a) for a in graph(150))
    assert _agree(net, qnet, adj, x) > 0.999
    qnet.export(str(tmp_path / "gcn"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "gcn"))
    assert np.array_equal(loaded(adj, x).asnumpy(), qnet(adj, x).asnumpy())
    kept = gq.quantize(net, [graph(n) for n in (120, 100)], exclude=["*"],
                       progress=False)      # nothing int8: parameters from a kept batch
    assert _agree(net, kept, adj, x) > 0.99999


class _WeightNormConv(nn.HybridBlock):
    """A weight-normalized convolution (WaveNet, TTS vocoders): ``w = g * v / ||v||``."""

    def __init__(self, in_channels, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        with self.name_scope():
            self.v = self.params.get("v", shape=(channels, in_channels, 3, 3),
                                     init=mx.init.Xavier())
            self.g = self.params.get("g", shape=(channels, 1, 1, 1), init=mx.init.One())
            self.b = self.params.get("b", shape=(channels,), init="zeros")

    def hybrid_forward(self, F, x, v, g, b):  # pylint: disable=arguments-differ
        norm = F.sqrt(F.sum(F.square(v), axis=(1, 2, 3), keepdims=True))
        w = F.broadcast_mul(g, F.broadcast_div(v, norm))
        return F.Convolution(x, w, b, kernel=(3, 3), pad=(1, 1), num_filter=self.channels)


def test_a_weight_computed_from_parameters_is_computed_once(tmp_path):
    """A convolution's weight computed from parameters (weight normalization) was
    recomputed at every call, fp32, and the export kept its parameters fp32 (0.98x the
    fp32 file): it is folded into one parameter, packed as int8."""
    net = nn.HybridSequential()
    net.add(_WeightNormConv(3, 16), nn.Activation("relu"), _WeightNormConv(16, 16),
            nn.GlobalAvgPool2D(), nn.Dense(4))
    net.initialize()
    rs = np.random.RandomState(5)
    batches = [mx.nd.array(rs.rand(4, 3, 12, 12)) for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    assert {r.op for r in qnet.report()} == {"Convolution", "Pooling", "FullyConnected"}, \
        qnet.report()
    assert _agree(net, qnet, batches[2]) > 0.999
    paths = qnet.export(str(tmp_path / "wn"))
    assert len(json.load(open(paths["meta"]))["packed"]) == 3
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "wn"))
    assert np.array_equal(loaded(batches[2]).asnumpy(), qnet(batches[2]).asnumpy())


class _GatedTCN(nn.HybridBlock):
    """WaveNet/ConvS2S-style gated 1-D convolutions: each output split into halves along
    the channels (``F.split``, i.e. slices), ``tanh(a) * sigmoid(b)``; a causal chomp of
    the padded time steps (``slice_axis(axis=-1)``) and a residual sum."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.inp = nn.Conv1D(16, 1)
            self.gates = [nn.Conv1D(32, 3, padding=2 * d, dilation=d) for d in (1, 2)]
            for gate in self.gates:
                self.register_child(gate)
            self.out = nn.Conv1D(4, 1)

    def hybrid_forward(self, F, x):
        x = self.inp(x)
        for gate in self.gates:
            y = gate(x).slice_axis(axis=-1, begin=0, end=-2 * gate._kwargs["dilate"][0])
            a, b = F.split(y, 2, axis=1)
            x = x + F.tanh(a) * F.sigmoid(b)
        return self.out(x)


def test_gated_1d_convolutions_stay_4d_through_their_slices(tmp_path):
    """The lifted (N, C, 1, W) tensors stay 4-D through channel and time slices: no
    squeeze between the layers (one per gated layer before), int8 convolutions,
    the same values at another length, the export reloads identical."""
    net = _GatedTCN()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 50)).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    ops = [n["op"] for n in json.loads(qnet.quantized_graph.tojson())["nodes"]]
    assert ops.count("squeeze") == 1, ops       # the output's alone
    assert all(r.quantized for r in _layer(qnet, "Convolution")), qnet.report()
    longer = mx.nd.array(RS.uniform(-1, 1, (2, 3, 77)).astype("float32"))
    qnet.export(str(tmp_path / "m"))
    again = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    for x in (batches[2], longer):
        assert _agree(net, qnet, x) > 0.999
        assert np.array_equal(qnet(x).asnumpy(), again(x).asnumpy())
