"""quantize_parts: the blocks that trace, quantized in place inside a model whose own
Python code does not trace (greedy decoding loops, branches on shapes, .asnumpy())."""
import json
import logging
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd
from mxnet.gluon import nn

import gluon_quant as gq


def cosine(a, b):
    a, b = a.asnumpy().ravel().astype("f8"), b.asnumpy().ravel().astype("f8")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class Encoder(nn.HybridBlock):
    def __init__(self, vocab=40, units=32, **kwargs):
        super().__init__(**kwargs)
        self.embed = nn.Embedding(vocab, units)
        self.conv = nn.Conv1D(units, 3, padding=1, activation="relu")
        self.proj = nn.Dense(units, flatten=False)

    def hybrid_forward(self, F, tokens):
        x = self.embed(tokens)                                       # (N, T, C)
        x = self.conv(F.transpose(x, axes=(0, 2, 1)))                # (N, C, T)
        return self.proj(F.transpose(x, axes=(0, 2, 1)))


class Step(nn.HybridBlock):
    """One decoding step: attention over the encoder's memory, then two dense layers."""

    def __init__(self, vocab=40, units=32, **kwargs):
        super().__init__(**kwargs)
        self.query = nn.Dense(units, flatten=False)
        self.hidden = nn.Dense(64, activation="relu")
        self.out = nn.Dense(vocab)

    def hybrid_forward(self, F, prev, memory):
        q = self.query(prev).expand_dims(1)                           # (N, 1, C)
        weights = F.softmax(F.batch_dot(q, memory, transpose_b=True))  # (N, 1, T)
        context = F.batch_dot(weights, memory).reshape((0, -1))
        return self.out(self.hidden(F.concat(context, prev, dim=1)))


class Translator(gluon.Block):
    """Greedy decoding in Python: the loop, ``.asnumpy()`` and the early stop cannot be
    traced, so quantize() refuses the model."""

    def __init__(self, steps=5, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps
        self.encoder = Encoder()
        self.step = Step()
        self.bos = nn.Embedding(40, 32)

    def forward(self, tokens, targets=None):
        """Greedy decoding; with ``targets``, each step is fed the target token instead
        of the best one (teacher forcing: how such a model is scored step by step)."""
        memory = self.encoder(tokens)
        prev = self.bos(nd.zeros((tokens.shape[0],)))
        logits = []
        for t in range(self.steps):
            out = self.step(prev, memory)
            logits.append(out)
            best = out.argmax(axis=1) if targets is None else targets[:, t]
            if (best.asnumpy() == 0).all():
                break
            prev = self.bos(best)
        return nd.stack(*logits, axis=1)


def _tokens(seed, count=4):
    rng = np.random.RandomState(seed)
    return [nd.array(rng.randint(1, 40, size=(8, 12))) for _ in range(count)]


@pytest.fixture()
def translator():
    net = Translator()
    net.initialize(mx.init.Xavier())
    net(_tokens(0, 1)[0])
    return net


def test_quantize_refuses_the_whole_and_names_quantize_parts(translator):
    with pytest.raises(gq.NotHybridizableError, match=r"quantize_parts\(net, calib_data\)"):
        gq.quantize(translator, _tokens(0))


def test_traceable_blocks_run_int8_inside_the_python_loop(translator):
    held_out, targets = _tokens(7, 2)
    ref = translator(held_out, targets)
    result = gq.quantize_parts(translator, _tokens(0))      # calibrated on greedy decoding
    assert sorted(result.parts) == ["encoder", "step"]
    assert isinstance(translator.encoder, gq.QuantizedPart)
    rows = {r.path: r for r in result.results}
    assert (rows["encoder"].calls, rows["encoder"].int8_layers, rows["encoder"].layers) \
        == (4, 2, 2)
    assert (rows["step"].calls, rows["step"].int8_layers, rows["step"].layers) == (20, 3, 3)
    # the shared-free Embedding of the start token has no int8 layer: it stays fp32
    assert not rows["bos"].quantized and "no convolution or dense" in rows["bos"].reason
    out = translator(held_out, targets)
    assert out.shape == ref.shape
    assert cosine(ref, out) >= 0.995
    assert (out.argmax(axis=2) == ref.argmax(axis=2)).mean().asscalar() >= 0.9
    assert "encoder" in result.report() and "3 of 3 convolution/dense" in result.report()
    result.restore()
    assert not isinstance(translator.encoder, gq.QuantizedPart)
    assert np.array_equal(translator(held_out, targets).asnumpy(), ref.asnumpy())


def test_export_and_load_into_a_fresh_model(translator, tmp_path):
    held_out = _tokens(7, 1)[0]
    weights = str(tmp_path / "fp32.params")
    translator.save_parameters(weights)
    result = gq.quantize_parts(translator, _tokens(0))
    out = translator(held_out).asnumpy()
    folder = tmp_path / "export"
    folder.mkdir()
    manifest = result.export(str(folder / "tr"))
    assert os.path.basename(manifest) == "tr-parts.json"
    assert sorted(os.listdir(folder)) == sorted(
        ["tr-parts.json"] + ["tr.%s%s" % (p, s) for p in ("encoder", "step")
                             for s in ("-symbol.json", "-int8.params", "-meta.json")])
    fresh = Translator()        # as users rebuild a model: its code, then its weights
    fresh.load_parameters(weights)
    loaded = gq.load_parts(fresh, str(folder / "tr"))
    assert sorted(loaded.parts) == ["encoder", "step"]
    assert np.array_equal(fresh(held_out).asnumpy(), out)
    assert "loaded" in loaded.report()
    gq.load_parts(fresh, str(folder / "tr"))        # again, over the loaded parts
    assert np.array_equal(fresh(held_out).asnumpy(), out)
    assert not isinstance(fresh.step.fp32, gq.QuantizedPart)


def test_load_refuses_bad_manifests_and_other_models(translator, tmp_path):
    prefix = str(tmp_path / "tr")
    gq.quantize_parts(translator, _tokens(0)).export(prefix)
    with open(prefix + "-parts.json") as f:
        manifest = json.load(f)

    class Other(gluon.Block):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.encoder = nn.Dense(4)
            self.step = Step()

    with pytest.raises(gq.ConfigError, match="has a Encoder at 'encoder' but this Other has "
                                            "a Dense there"):
        gq.load_parts(Other(), prefix)
    manifest["version"] = 99
    with open(prefix + "-parts.json", "w") as f:
        json.dump(manifest, f)
    with pytest.raises(gq.ArtifactError, match="version 99"):
        gq.load_parts(Translator(), prefix)
    with open(prefix + "-parts.json", "w") as f:
        f.write('{"format": "gluon_quant.parts"}')
    with pytest.raises(gq.ArtifactError, match="KeyError"):
        gq.load_parts(Translator(), prefix)
    with pytest.raises(gq.ConfigError, match="got str"):
        gq.load_parts("model", prefix)
    with pytest.raises(gq.ArtifactError, match="Cannot read the parts manifest"):
        gq.load_parts(Translator(), str(tmp_path / "missing"))
    with pytest.raises(gq.ArtifactError, match=r"one whole int8 model.*QuantizedSymbolBlock"):
        gq.load_parts(Translator(), prefix + ".encoder")


def test_failed_export_leaves_no_files(translator, tmp_path, monkeypatch):
    result = gq.quantize_parts(translator, _tokens(0))
    real = gq.QuantizedHybridBlock.export
    calls = []

    def failing(self, prefix, *args, **kwargs):
        calls.append(prefix)
        if len(calls) == 2:
            raise gq.ArtifactError("disk full")
        return real(self, prefix, *args, **kwargs)

    monkeypatch.setattr(gq.QuantizedHybridBlock, "export", failing)
    with pytest.raises(gq.ArtifactError, match="disk full"):
        result.export(str(tmp_path / "tr"))
    assert os.listdir(tmp_path) == []


class Unrolled(nn.HybridBlock):
    """A HybridBlock that does not trace (it reads .shape) holding ones that do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = nn.HybridSequential()
        self.stem.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"))
        self.blocks = nn.HybridSequential()
        for _ in range(2):
            self.blocks.add(nn.Conv2D(16, 3, padding=1, activation="relu"))
        self.head = nn.Dense(10)

    def hybrid_forward(self, F, x):
        x = self.stem(x)
        for block in self.blocks:               # called one by one, not as the list
            x = block(x) if x.shape[2] >= 8 else x
        return self.head(x)


class Model(gluon.Block):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.backbone = Unrolled()
        self.extra = nn.HybridSequential()      # only predict() calls it
        self.extra.add(nn.Dense(8, activation="relu"), nn.Dense(3))

    def forward(self, x):
        return self.backbone(x)

    def predict(self, x):
        return self.extra(self.backbone(x))


def _images(seed, count=3):
    rng = np.random.RandomState(seed)
    return [nd.array(rng.uniform(-1, 1, size=(4, 3, 16, 16))) for _ in range(count)]


def test_descends_into_blocks_that_do_not_trace_and_keeps_their_hybridize():
    net = Model()
    net.initialize(mx.init.Xavier())
    net.backbone.blocks.hybridize()             # its layers run as cached graphs
    x = _images(5, 1)[0]
    ref = net(x)
    # a generator: read once, though each level of the descent runs the model again
    result = gq.quantize_parts(net, (batch for batch in _images(0)))
    rows = {r.path: r for r in result.results}
    assert {r.calls for r in result.results if r.path != "extra"} == {3}
    assert sorted(result.parts) == ["backbone.blocks.0", "backbone.blocks.1",
                                    "backbone.head", "backbone.stem"]
    assert rows["extra"].calls == 0 and rows["extra"].reason == \
        "never called on the calibration data"
    assert "backbone.blocks" not in rows        # never called as a whole: its cells stand
    assert "extra.0" not in rows                # inside a block never called: it stands
    assert cosine(ref, net(x)) >= 0.995
    # run imperatively while its layers' calls were recorded, hybridized again after
    assert net.backbone.blocks._active             # noqa: SLF001  (Gluon's own flag)


class Spares(gluon.Block):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.used = nn.Dense(16, activation="relu")
        self.spare = nn.Dense(16)
        self.other = nn.Dense(16)

    def forward(self, x):
        return self.used(x)


def test_report_gives_a_repeated_reason_once():
    """A model whose 50 GroupNorms do not trace printed the same 300-character reason 50
    times; the report names the first block given it (same reason as PATH)."""
    net = Spares()
    net.initialize()
    result = gq.quantize_parts(net, [nd.ones((64, 256))])
    assert result.report().splitlines()[1:] == [
        "  used   Dense                        1 call(s)  int8  1 of 1 convolution/dense "
        "layers",
        "  other  Dense                        0 call(s)  fp32  never called on the "
        "calibration data",
        "  spare  Dense                        0 call(s)  fp32  same reason as other"]


def test_run_fn_reaches_blocks_forward_does_not_call_and_parts_names_them():
    net = Model()
    net.initialize(mx.init.Xavier())
    x = _images(5, 1)[0]
    ref = net.predict(x)
    result = gq.quantize_parts(net, _images(0), parts=["backbone.stem", net.extra],
                               run_fn=lambda model, batch: model.predict(batch))
    assert sorted(result.parts) == ["backbone.stem", "extra"]
    assert [r.calls for r in result.results] == [3, 3]
    assert cosine(ref, net.predict(x)) >= 0.995
    with pytest.raises(gq.UnknownNameError, match=r"no block 'backbone.stme'.*Did you mean "
                                                  r"'backbone.stem'"):
        gq.quantize_parts(Model(), _images(0), parts=["backbone.stme"])
    with pytest.raises(gq.UnknownNameError, match="not a block of this Model"):
        gq.quantize_parts(Model(), _images(0), parts=[nn.Dense(3)])
    with pytest.raises(gq.ConfigError, match="run_fn must be callable"):
        gq.quantize_parts(Model(), _images(0), run_fn=3)
    with pytest.raises(gq.ConfigError, match="names 'backbone' and 'backbone.head', which is "
                                             "inside it"):
        gq.quantize_parts(Model(), _images(0), parts=["backbone", "backbone.head"])
    whole = Model()
    with pytest.raises(gq.ConfigError, match=r"the model itself.*gluon_quant.quantize"):
        gq.quantize_parts(whole, _images(0), parts=[whole])


def test_a_part_mxnet_fails_on_stays_fp32_and_the_rest_go_on(monkeypatch):
    import gluon_quant.parts as parts_module
    net = Model()
    net.initialize(mx.init.Xavier())
    real = parts_module.quantize

    def failing(block, *args, **kwargs):
        if isinstance(block, nn.Dense):
            raise gq.GraphError("MXNet's pass failed")
        return real(block, *args, **kwargs)

    monkeypatch.setattr(parts_module, "quantize", failing)
    result = gq.quantize_parts(net, _images(0))
    rows = {r.path: r for r in result.results}
    assert rows["backbone.head"].reason == "quantize() raised GraphError: MXNet's pass failed"
    assert "backbone.stem" in result.parts


class Siamese(gluon.Block):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        shared = nn.HybridSequential()
        shared.add(nn.Conv2D(8, 3), nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Flatten())
        self.left = shared
        self.right = shared

    def forward(self, a, b):
        if a.shape != b.shape:
            raise ValueError("pairs of equal shapes only")
        return nd.norm(self.left(a) - self.right(b), axis=1)


def test_a_block_shared_by_two_attributes_is_quantized_once():
    net = Siamese()
    net.initialize(mx.init.Xavier())
    pairs = [(a, b) for a, b in zip(_images(0), _images(1))]
    ref = net(*pairs[0])
    result = gq.quantize_parts(net, pairs, num_inputs=2)
    assert list(result.parts) == ["left"]
    assert net.left is net.right and isinstance(net.right, gq.QuantizedPart)
    assert [r.calls for r in result.results] == [6]
    assert cosine(ref, net(*pairs[0])) >= 0.995
    result.restore()
    assert net.left is net.right and not isinstance(net.right, gq.QuantizedPart)
    registry = dict(net._children)                  # noqa: SLF001  (Gluon's own)
    assert registry["left"] is registry["right"] is net.left
    assert np.array_equal(net(*pairs[0]).asnumpy(), ref.asnumpy())


def test_part_proxies_the_fp32_blocks_attributes(translator, tmp_path):
    held_out = _tokens(7, 1)[0]
    ref = translator(held_out).asnumpy()
    gq.quantize_parts(translator, _tokens(0))
    # the model's weights file is still its fp32 one: it loads into the fp32 model
    translator.save_parameters(str(tmp_path / "w.params"))
    fresh = Translator()
    fresh.load_parameters(str(tmp_path / "w.params"))
    assert np.array_equal(fresh(held_out).asnumpy(), ref)
    assert translator.step.out is translator.step.fp32.out   # the model's code may read them
    assert isinstance(translator.step.int8, gq.QuantizedHybridBlock)
    assert "QuantizedPart(Step" in repr(translator.step)
    with pytest.raises(AttributeError):
        translator.step.no_such_attribute  # noqa: B018


def test_errors_say_what_failed():
    net = Model()
    net.initialize()
    with pytest.raises(gq.ModelExecutionError, match="raised on a calibration batch"):
        gq.quantize_parts(net, [nd.ones((2, 5))])    # a Conv2D on a 2-d batch
    with pytest.raises(gq.ConfigError, match="calib_data is empty"):
        gq.quantize_parts(net, [])

    class Nothing(gluon.Block):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rnn = gluon.rnn.GRU(8)

        def forward(self, x):
            return self.rnn(x).asnumpy()

    empty = Nothing()
    empty.initialize()
    with pytest.raises(gq.NotHybridizableError, match=r"No block of Nothing could be "
                       r"quantized:\n  rnn \(GRU\): no layer runs in int8; \S+ \(RNN\) stays "
                       r"fp32: mode=gru has no int8 kernel on onednn"):
        gq.quantize_parts(empty, [nd.ones((3, 2, 4))])


class Tokens(nn.HybridBlock):
    """Projects (N, C) or (N, T, C) inputs: called with both ranks, so it cannot be one
    int8 graph, while the MLP inside always gets 2-d inputs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mlp = nn.HybridSequential()
        self.mlp.add(nn.Dense(16, activation="relu"), nn.Dense(8))

    def hybrid_forward(self, F, x):
        return self.mlp(x.reshape((-1, 12)))


class TwoRanks(gluon.Block):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.proj = Tokens()

    def forward(self, x):
        return self.proj(x[:, 0]).sum() + self.proj(x).sum(axis=0)


def test_children_of_a_hybridized_block_are_recorded_imperatively():
    net = TwoRanks()
    net.initialize(mx.init.Xavier())
    net.hybridize()                             # proj runs as one cached graph per rank
    rng = np.random.RandomState(0)
    batches = [nd.array(rng.uniform(-1, 1, size=(4, 3, 12))) for _ in range(3)]
    ref = net(batches[0])
    result = gq.quantize_parts(net, batches)
    rows = {r.path: r for r in result.results}
    assert "proj" not in rows       # its two ranks need two graphs: its MLP stands for it
    assert list(result.parts) == ["proj.mlp"] and rows["proj.mlp"].calls == 6
    assert (rows["proj.mlp"].int8_layers, rows["proj.mlp"].layers) == (2, 2)
    assert cosine(ref, net(batches[0])) >= 0.995


def test_exclude_takes_layer_names_and_block_paths_in_the_model(translator, caplog):
    result = gq.quantize_parts(translator, _tokens(0), exclude=["step.out", "encoder"])
    rows = {r.path: r for r in result.results}
    assert rows["encoder"].reason == "excluded by user ('encoder')"
    assert list(result.parts) == ["step"]
    rows = result.parts["step"].int8.report()
    out = [row for row in rows if row.reason == "excluded by user ('out')"]
    assert [(row.op, row.quantized) for row in out] == [("FullyConnected", False)]
    assert [row.quantized for row in rows if row.op == "FullyConnected"].count(True) == 2
    assert "matched no layer" not in caplog.text
    result.restore()
    with caplog.at_level(logging.WARNING, logger="gluon_quant"):
        gq.quantize_parts(translator, _tokens(0), exclude=["step.outt", "Convolution"])
    assert caplog.text.count("matched no layer") == 1
    assert "'step.outt' matched no layer of the quantized parts" in caplog.text


class Tagger(gluon.Block):
    """An LSTM tagger whose forward builds its state with ``.shape`` (does not trace)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = nn.Embedding(50, 16)
        self.lstm = gluon.rnn.LSTM(16, layout="NTC")
        self.out = nn.Dense(5, flatten=False)

    def forward(self, tokens):
        state = self.lstm.begin_state(batch_size=tokens.shape[0])
        return self.out(self.lstm(self.embed(tokens), state)[0])


def test_a_part_left_fp32_says_why_its_layer_doing_the_work_is(caplog):
    """An LSTM part stays fp32 (int8 LSTM is opt-in): the report gives the LSTM's own reason
    and the option that changes it, not only that no convolution or dense layer runs. The
    per-part warning of quantize(), which named only the class ("No layer of Embedding
    runs in int8"), is not repeated: the parts' report names the part by its path."""
    net = Tagger()
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    with caplog.at_level(logging.INFO, logger="gluon_quant"):
        result = gq.quantize_parts(net, [nd.array(rs.randint(0, 50, (4, 7)))
                                         for _ in range(3)], progress=False)
    assert not [r for r in caplog.records if r.getMessage().startswith("No layer of")]
    assert [r for r in caplog.records if "embed" in r.getMessage()
            and "no convolution or dense layer runs in int8" in r.getMessage()]
    rows = {r.path: r for r in result.results}
    assert rows["out"].quantized and not rows["lstm"].quantized
    assert rows["lstm"].reason.startswith("no layer runs in int8; ")
    assert "(RNN) stays fp32: int8 LSTM is opt-in (int8_lstm=True)" in rows["lstm"].reason
    assert rows["embed"].reason == "no convolution or dense layer runs in int8"
