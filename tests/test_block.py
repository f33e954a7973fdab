"""QuantizedHybridBlock: stages one by one, exclusion, the report, and the errors."""
import logging
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import QuantizedHybridBlock
from conftest import coverage, placed


def test_stages_one_by_one(tiny_cnn, tiny_batches):
    qnet = QuantizedHybridBlock(tiny_cnn, calibrator="minmax", progress=False)
    fused = qnet.fuse()
    ops = [n["op"] for n in __import__("json").loads(fused.tojson())["nodes"]]
    assert ops.count("_sg_mkldnn_conv") == 2 and ops.count("_sg_mkldnn_fully_connected") == 2
    names = qnet.quantize_graph()
    assert names[0] == "data" and all(n.endswith("_output") for n in names[1:])
    table = qnet.calibrate(tiny_batches)
    assert set(table) == set(names) and table.fingerprint == qnet.fingerprint
    qnet.finalize()
    x = mx.nd.array(tiny_batches[0])
    one_call = gq.quantize(tiny_cnn, tiny_batches, calibrator="minmax", progress=False)
    assert np.array_equal(qnet(x).asnumpy(), one_call(x).asnumpy())


def test_report_answers_what_was_fused_and_quantized(tiny_cnn, tiny_batches):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    report = qnet.report()
    convs = [r for r in report if r.op == "Convolution"]
    assert [r.layer for r in convs] == ["cnn_conv0", "cnn_conv1"]
    assert all(r.pattern == "Convolution+BatchNorm+Activation(relu)" for r in convs)
    assert all(r.quantized and r.dtype == "uint8" for r in convs)
    assert all(r.threshold[0] == 0.0 and r.threshold[1] > 0 for r in convs)
    dense = [r for r in report if r.op == "FullyConnected"]
    assert dense[0].pattern == "FullyConnected+Activation(relu)" and dense[0].dtype == "uint8"
    assert dense[-1].dtype == "float32"            # the logits come out in fp32
    text = str(report)
    assert "cnn_conv0" in text and "Convolution+BatchNorm+Activation(relu)" in text
    assert "4 of 4" in text
    assert report.to_dict()["layers"][0]["node"] == convs[0].node


def test_report_text_shows_a_layers_fp32_nodes_as_one_row():
    """A GroupNorm runs as eleven fp32 operators (reshapes, a LayerNorm, broadcasts): its
    rows took most of a report's text. They print as one row: the operators, their count,
    the range of the layer's output, the reasons without repeats; the rows themselves stay
    one per node."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1), nn.GroupNorm(num_groups=4), nn.Activation("relu"),
            nn.Conv2D(16, 3, padding=1), nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).rand(8, 3, 24, 24).astype("float32") for i in (0, 1)]
    report = gq.quantize(net, batches, progress=False).report()
    layer = [r.layer for r in report if r.op == "LayerNorm"][0]   # groupnorm<k>
    norm = [r for r in report if r.layer == layer]
    assert layer.startswith("groupnorm") and len(norm) > 5
    assert not any(r.quantized for r in norm)
    lines = [line for line in str(report).splitlines() if line.startswith(layer + " ")]
    assert len(lines) == 1, str(report)
    assert "%d nodes" % len(norm) in lines[0] and "LayerNorm" in lines[0]
    ranged = [r for r in norm if r.threshold is not None]
    assert "[%.4g, %.4g]" % tuple(ranged[-1].threshold) in lines[0]
    assert lines[0].count("no int8 kernel for") == 1 and "Reshape, " in lines[0]
    assert "no int8 LayerNorm" in lines[0]
    assert len(str(report).splitlines()) == 4 + len(report) - len(norm) + 1


def test_report_text_shows_a_split_read_between_its_parts_as_one_row():
    """``F.split`` runs as one slice per part; in graph order each slice sits beside the
    reshapes and products that read it, so its parts printed as three rows of one name
    among the attention's other fp32 nodes. The fp32 nodes of one layer between two int8
    nodes print as one row, at the first one's place."""
    class Attention(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Dense(48, flatten=False)
            self.out = nn.Dense(10)

        def hybrid_forward(self, F, x):
            q, k, v = F.split(self.qkv(x), num_outputs=3, axis=-1)
            att = F.softmax(F.batch_dot(q, k, transpose_b=True), axis=-1)
            return self.out(F.batch_dot(att, v))

    net = Attention()
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).rand(8, 12, 20).astype("float32") for i in (0, 1)]
    report = gq.quantize(net, batches, progress=False).report()
    parts = [r for r in report if r.op == "slice_axis"]
    assert len(parts) == 3 and len({r.layer for r in parts}) == 1, str(report)
    assert not any(r.quantized for r in parts)
    lines = str(report).splitlines()
    named = [line for line in lines if line.startswith(parts[0].layer + " ")]
    assert len(named) == 1 and "3 nodes" in named[0], str(report)
    assert "split into 3 parts run as slices" in named[0]
    rows = lines[4:]
    order = [r.layer for r in report]
    assert [row.split()[0] for row in rows] == list(dict.fromkeys(order)), str(report)
    assert rows[0].startswith(order[0] + " ") and report[0].quantized   # the int8 qkv first

def test_report_text_says_mxnets_repeated_message_once_and_names_the_nodes():
    """An unrolled LSTM made MXNet say "exclude <gate> which act_type is 1" for every gate
    of every step: 60 lines of a 5-step, 2-layer cell closed its report. Messages that
    differ only in the node they name print once, the other nodes named after it; the
    report's data keeps every message."""
    class Unrolled(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.cell = mx.gluon.rnn.HybridSequentialRNNCell()
                self.cell.add(mx.gluon.rnn.LSTMCell(16))
                self.cell.add(mx.gluon.rnn.LSTMCell(16))
                self.out = nn.Dense(3)

        def hybrid_forward(self, F, x):
            outs, _ = self.cell.unroll(5, x, layout="NTC", merge_outputs=True)
            return self.out(outs)

    net = Unrolled()
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).randn(4, 5, 8).astype("float32") for i in (0, 1)]
    report = gq.quantize(net, batches, progress=False).report()
    sigmoids = [n for n in report.notes if n.endswith("which act_type is 1")]
    assert len(sigmoids) == 5 * 2 * 3, report.notes     # i, f, o gates
    text = str(report).split("MXNet said while building the int8 graph:\n")[1]
    said = [line for line in text.splitlines() if line.endswith("which act_type is 1")]
    assert said == ["  " + sigmoids[0]], text
    others = re.search(r"\(and (\d+) more like it, naming ([^)]*)\)", text)
    assert int(others.group(1)) == len(sigmoids) - 1
    named = others.group(2).split("; ")
    assert len(named) == 7 and named[-1] == "..."
    assert named[0] in sigmoids[1] and named[0] not in sigmoids[0]
    assert len(text.splitlines()) < 8

class SharedBlocks(gluon.HybridBlock):
    """One pooling block and one activation block, each called twice."""

    def __init__(self):
        super().__init__(prefix="shared_")
        with self.name_scope():
            self.c1 = nn.Conv2D(16, 3, padding=1, activation="relu", prefix="c1_")
            self.c2 = nn.Conv2D(16, 3, padding=1, activation="relu", prefix="c2_")
            self.pool = nn.MaxPool2D(prefix="pool_")
            self.act = nn.Activation("sigmoid", prefix="act_")
            self.out = nn.Dense(3, prefix="out_")

    def hybrid_forward(self, F, x):
        x = self.pool(self.c2(self.pool(self.c1(x))))
        return self.out(self.act(self.act(x)))


def test_a_block_called_twice_names_its_second_call_in_reports_and_exclude():
    """Both calls of a shared pooling block were rows named alike in the report and the
    doctor, and only both could be excluded at once."""
    net = SharedBlocks()
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).rand(8, 3, 32, 32).astype("float32") for i in (0, 1)]
    qnet = gq.quantize(net, batches, progress=False)
    assert [r.layer for r in qnet.report() if r.op in ("Pooling", "Activation")] == [
        "shared_pool", "shared_pool (call 2)", "shared_act", "shared_act (call 2)"]
    text = str(qnet.report())
    assert "shared_act (call 2)" in text and "2 nodes" not in text
    rows = {r.layer for r in gq.debug.compare(qnet, batches)}
    assert {"shared_pool", "shared_pool (call 2)"} <= rows
    second = gq.quantize(net, batches, exclude=["shared_pool (call 2)"], progress=False)
    assert [r.quantized for r in second.report() if r.op == "Pooling"] == [True, False]
    both = gq.quantize(net, batches, exclude=["shared_pool"], progress=False)
    assert [r.quantized for r in both.report() if r.op == "Pooling"] == [False, False]


class TwoOpsOneBlock(gluon.HybridBlock):
    """A convolution and a dense layer written as F.* calls on the block's own parameters."""

    def __init__(self):
        super().__init__(prefix="mine_")
        with self.name_scope():
            self.cw = self.params.get("cw", shape=(8, 3, 3, 3))
            self.w = self.params.get("w", shape=(4, 8))

    def hybrid_forward(self, F, x, cw, w):
        y = F.relu(F.Convolution(x, cw, kernel=(3, 3), num_filter=8, no_bias=True))
        return F.FullyConnected(F.mean(y, axis=(2, 3)), w, no_bias=True, num_hidden=4)


def test_report_names_each_op_of_a_hand_written_block():
    """Both rows were named 'mine' (the block's name), which says neither which row is
    which nor how to exclude one: an F.* call's row is named by its operator, which
    exclude= takes."""
    net = TwoOpsOneBlock()
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).rand(8, 3, 12, 12).astype("float32") for i in (0, 1)]
    report = gq.quantize(net, batches, progress=False).report()
    layers = {r.op: r.layer for r in report}
    assert layers["Convolution"] == "mine_convolution0"
    assert layers["FullyConnected"] == "mine_fullyconnected0"
    qnet = gq.quantize(net, batches, exclude=["mine_convolution0"], progress=False)
    assert [r.quantized for r in qnet.report() if r.op == "Convolution"] == [False]
    # Gluon's own layers keep their block's name, whichever name their operator has
    # (nn.Flatten's is <prefix>flatten0, not <prefix>fwd)
    seq = nn.HybridSequential(prefix="seq_")
    with seq.name_scope():
        seq.add(nn.Conv2D(8, 3, prefix="c_"), nn.Flatten(prefix="f_"), nn.Dense(4, prefix="d_"))
    seq.initialize(mx.init.Xavier())
    report = gq.quantize(seq, batches, progress=False).report()
    assert [r.layer for r in report] == ["seq_c", "seq_f", "seq_d"]


@pytest.mark.parametrize("exclude, expected_fp32", [
    (["Convolution"], {"cnn_conv0", "cnn_conv1"}),
    (["Conv2D"], {"cnn_conv0", "cnn_conv1"}),
    (["FullyConnected"], {"cnn_dense0", "cnn_dense1"}),
    (["cnn_conv1"], {"cnn_conv1"}),                    # block name, as in the Gluon net
    (["4"], {"cnn_conv1"}),                             # attribute path in the Sequential
    (["cnn_dense*"], {"cnn_dense0", "cnn_dense1"}),     # glob
    (["cnn_conv0_fwd"], {"cnn_conv0"}),                 # original operator node name
    (["Pooling"], {"cnn_pool0", "cnn_pool1"}),
])
def test_exclude_by_name_pattern_and_operator(tiny_cnn, tiny_batches, exclude, expected_fp32):
    qnet = gq.quantize(tiny_cnn, tiny_batches, exclude=exclude, progress=False)
    report = qnet.report()
    fp32 = {r.layer for r in report if not r.quantized and r.op in
            ("Convolution", "FullyConnected", "Pooling")}
    assert fp32 == expected_fp32
    for r in report:
        if r.layer in expected_fp32:
            assert r.reason.startswith("excluded by user")
    x = mx.nd.array(tiny_batches[0])
    a, b = tiny_cnn(x).asnumpy().ravel(), qnet(x).asnumpy().ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_exclude_by_the_blocks_themselves(tiny_cnn, tiny_batches):
    qnet = gq.quantize(tiny_cnn, tiny_batches, exclude=[tiny_cnn[4], "Pooling"],
                       progress=False)
    assert {r.layer for r in qnet.report() if not r.quantized and r.op in (
        "Convolution", "FullyConnected", "Pooling")} == {"cnn_conv1", "cnn_pool0", "cnn_pool1"}
    assert qnet.config.exclude == ("4", "Pooling")     # kept as attribute paths: JSON data
    assert gq.QuantConfig.from_dict(qnet.config.to_dict()).exclude == ("4", "Pooling")
    # built without the net, a config can only keep the block's name
    assert gq.QuantConfig(exclude=[tiny_cnn[4]]).exclude == ("cnn_conv1",)
    single = gq.quantize(tiny_cnn, tiny_batches, exclude=tiny_cnn[4], progress=False)
    assert [r.layer for r in single.report() if r.reason.startswith("excluded")] == [
        "cnn_conv1"]


class _Unit(gluon.HybridBlock):
    """A residual unit made as Gluon's ResNet makes them: prefix='' (the stage's name)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            self.body.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                          nn.Conv2D(8, 3, padding=1), nn.BatchNorm())

    def hybrid_forward(self, F, x):
        return F.relu(self.body(x) + x)


def test_blocks_sharing_their_stage_name_are_excluded_one_by_one():
    """Units made with prefix='' (Gluon's ResNets and DenseNets, YOLOv3's blocks) share the
    stage's name: exclude=['features.1.0'] or the unit itself kept the whole stage fp32."""
    net = nn.HybridSequential(prefix="res_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1, activation="relu"))
        stage = nn.HybridSequential(prefix="stage1_")
        with stage.name_scope():
            stage.add(_Unit(prefix=""), _Unit(prefix=""))
        net.add(stage, nn.GlobalAvgPool2D(), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).rand(4, 3, 12, 12).astype("float32")
               for i in range(2)]
    assert stage[0].name == stage[1].name == stage.name == "res_stage1"

    def fp32_convs(**kwargs):
        qnet = gq.quantize(net, batches, progress=False, **kwargs)
        return sorted(r.layer for r in qnet.report()
                      if r.op == "Convolution" and not r.quantized)

    first, second = ["res_stage1_conv0", "res_stage1_conv1"], ["res_stage1_conv2",
                                                               "res_stage1_conv3"]
    assert fp32_convs() == []
    assert fp32_convs(exclude=["1.0"]) == first
    assert fp32_convs(exclude=[stage[1]]) == second
    assert fp32_convs(exclude=["1.1.body.3"]) == ["res_stage1_conv3"]
    assert fp32_convs(exclude=["1"]) == fp32_convs(exclude=["res_stage1"]) == first + second
    assert fp32_convs(exclude=[stage]) == first + second


class _NoScope(gluon.HybridBlock):
    """Children made outside name_scope(): their names do not start with the parent's."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv, self.proj = nn.Conv2D(8, 3, padding=1, activation="relu"), nn.Conv2D(8, 1)

    def hybrid_forward(self, F, x):
        return self.proj(self.conv(x))      # no operator of its own to carry its name


def test_a_block_owns_children_made_outside_its_name_scope():
    """exclude=['first'] matched no layer (the convolutions' names are conv<N>, not the
    block's first<N>_...): a block owns what its attribute tree holds."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1), _NoScope(), _NoScope(), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    batches = [np.random.RandomState(i).rand(4, 3, 12, 12).astype("float32")
               for i in range(2)]
    own = lambda unit: sorted([unit.conv.name, unit.proj.name])
    for exclude, expected in ((["1"], own(net[1])), ([net[2]], own(net[2])),
                              ([net[1].name], own(net[1]))):
        qnet = gq.quantize(net, batches, exclude=exclude, progress=False)
        assert sorted(r.layer for r in qnet.report()
                      if r.op == "Convolution" and not r.quantized) == expected, exclude


def test_a_table_of_a_net_first_called_by_quantize_rebuilds_it(tiny_batches):
    """A net with deferred shapes, calibrated before it ever ran: its parameters' shapes
    were unknown when it was first traced and known at the next trace, which changed the
    graph's fingerprint, so quantize(net, calib_table=table) refused the table as "computed
    on another graph". Tables saved with the older fingerprint (shapes included) still
    match."""
    net = nn.HybridSequential()
    net.add(nn.Conv1D(8, 3, activation="relu"), nn.Flatten(), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    batches = [b.reshape(8, 28, 28) for b in tiny_batches]
    table = gq.quantize(net, batches, progress=False).calibration_table
    rebuilt = gq.quantize(net, calib_table=table, progress=False)
    assert rebuilt.fingerprint == table.fingerprint
    for earlier in rebuilt.fused.view.earlier_fingerprints():
        assert earlier != table.fingerprint
        assert gq.quantize(net, calib_table=table.with_fingerprint(earlier), progress=False)
    with pytest.raises(gq.CalibrationTableError, match="computed on another graph"):
        gq.quantize(net, calib_table=table.with_fingerprint("0" * 64), progress=False)


class _WithConstant(nn.HybridBlock):
    """A Gluon constant (named by its id(), another in every process) beside a layer with
    an initializer of its own."""

    def __init__(self):
        super().__init__(prefix="withconstant_")     # the same names as in another process
        with self.name_scope():
            self.conv = nn.Conv2D(8, 3, weight_initializer=mx.init.Xavier(magnitude=2))
            self.scale = self.params.get_constant("scale", mx.nd.ones((1, 8, 1, 1)) * 2)
            self.out = nn.Dense(4)

    def hybrid_forward(self, F, x, scale):  # pylint: disable=arguments-differ
        return self.out(F.relu(F.broadcast_mul(self.conv(x), scale)))


def test_a_saved_table_rebuilds_a_net_with_a_constant_in_another_process(tmp_path):
    """A table saved in one process, the same net built again in another (here: built
    again): the graph's `__init__` attributes name a constant by its id(), which made every
    such table "computed on another graph" in any other process."""
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.rand(2, 3, 16, 16)) for _ in range(2)]
    first = _WithConstant()
    first.initialize()
    qnet = gq.quantize(first, batches, progress=False)
    qnet.calibration_table.save(str(tmp_path / "t.json"))
    first.save_parameters(str(tmp_path / "n.params"))
    again = _WithConstant()
    again.load_parameters(str(tmp_path / "n.params"))
    rebuilt = gq.quantize(again, calib_table=str(tmp_path / "t.json"), progress=False)
    assert rebuilt.fingerprint == qnet.fingerprint
    np.testing.assert_array_equal(rebuilt(batches[0]).asnumpy(), qnet(batches[0]).asnumpy())


def test_a_table_of_the_same_net_built_again_rebuilds_it(tiny_batches, caplog):
    """A notebook cell run twice builds `hybridsequential1_...` where the table was saved
    from `hybridsequential0_...`: the table was refused as "another network". The graph,
    its prefix renamed to the table's, is the table's graph: the names are read with this
    net's, the weights still checked, and the model is the same bit for bit."""
    def make(**kwargs):
        net = nn.HybridSequential(**kwargs)
        with net.name_scope():
            net.add(nn.Conv2D(8, 3, activation="relu"), nn.MaxPool2D(), nn.Flatten(),
                    nn.Dense(4))
        return net

    def copy_of(source, **kwargs):
        net = make(**kwargs)
        net.initialize()
        net(x)
        for dst, src in zip(net.collect_params().values(), source.collect_params().values()):
            dst.set_data(src.data())
        return net
    x = mx.nd.array(tiny_batches[0])
    first = make()
    first.initialize(mx.init.Xavier())
    qnet = gq.quantize(first, tiny_batches, bias_correction=True, progress=False)
    table = qnet.calibration_table
    again = copy_of(first)
    assert first.prefix != again.prefix
    with caplog.at_level(logging.INFO, logger="gluon_quant.pipeline"):
        rebuilt = gq.quantize(again, calib_table=table, progress=False)
    assert "under other block names (%s -> %s)" % (first.prefix, again.prefix) in caplog.text
    np.testing.assert_array_equal(rebuilt(x).asnumpy(), qnet(x).asnumpy())
    changed = copy_of(first)
    changed.collect_params()[changed.prefix + "conv0_weight"].set_data(
        first.collect_params()[first.prefix + "conv0_weight"].data() * 3)
    with pytest.raises(gq.CalibrationTableError, match="conv0_weight"):
        gq.quantize(changed, calib_table=table, progress=False)    # weights still checked
    excluding = gq.quantize(first, tiny_batches, exclude=[first.prefix + "conv0"],
                            progress=False).calibration_table
    with pytest.raises(gq.CalibrationTableError, match="other block names \\(%s -> %s"
                       % (first.prefix, again.prefix)):
        gq.quantize(again, calib_table=excluding, progress=False)    # its names match nothing
    assert gq.quantize(again, calib_table=excluding, exclude=[again.prefix + "conv0"],
                       progress=False).report()[0].quantized is False
    other = nn.HybridSequential(prefix="other_")    # other layers, same names: refused
    with other.name_scope():
        other.add(nn.Conv2D(8, 5, activation="relu"), nn.Flatten(), nn.Dense(4))
    other.initialize()
    with pytest.raises(gq.CalibrationTableError, match="another network"):
        gq.quantize(other, [x], calib_table=table, progress=False)


class _Unscoped(gluon.HybridBlock):
    """Layers created outside ``with self.name_scope():``: Gluon numbers them across the
    process (conv0_, dense0_; built again, conv1_, dense1_)."""

    def __init__(self, pool=False):
        super().__init__(prefix="unscoped_")
        self.conv = nn.Conv2D(8, 3, activation="relu")
        self.pool = nn.MaxPool2D() if pool else None
        self.fc = nn.Dense(4)

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        y = self.conv(x)
        return self.fc(self.pool(y) if self.pool is not None else y)


@pytest.mark.parametrize("pool", [False, True])
def test_a_table_of_layers_numbered_across_the_process(tmp_path, tiny_batches, pool):
    """The same net built twice: its layers made outside a name_scope are conv1_, dense1_
    where the table says conv0_, dense0_. Where every numbered block shows in the table,
    the renaming is checked against the table's fingerprint and applied; where one does not
    (the pooling layer has no parameters and no range), the refusal says what happened."""
    x = mx.nd.array(tiny_batches[0])
    first = _Unscoped(pool)
    first.initialize(mx.init.Xavier())
    qnet = gq.quantize(first, tiny_batches, progress=False)
    first.save_parameters(str(tmp_path / "n.params"))
    again = _Unscoped(pool)
    again.load_parameters(str(tmp_path / "n.params"))
    assert first.conv.prefix != again.conv.prefix
    if not pool:
        rebuilt = gq.quantize(again, calib_table=qnet.calibration_table, progress=False)
        np.testing.assert_array_equal(rebuilt(x).asnumpy(), qnet(x).asnumpy())
        return
    with pytest.raises(gq.CalibrationTableError,
                       match="in the numbers Gluon gives blocks only .*%sweight"
                       % first.conv.prefix):
        gq.quantize(again, calib_table=qnet.calibration_table, progress=False)


def test_unmatched_exclude_pattern_warns_with_close_names(tiny_cnn, tiny_batches, caplog):
    with caplog.at_level(logging.WARNING, logger="gluon_quant"):
        gq.quantize(tiny_cnn, tiny_batches, exclude=["cnn_conv9"], progress=False)
    assert "'cnn_conv9' matched no layer" in caplog.text
    assert "cnn_conv0" in caplog.text


def test_unknown_settings_raise_with_valid_names(tiny_cnn, tiny_batches):
    with pytest.raises(gq.UnknownNameError, match=r"backend 'tensorrt'.*'onednn'"):
        gq.quantize(tiny_cnn, tiny_batches, backend="tensorrt")
    with pytest.raises(gq.UnknownNameError, match=r"dtype 'int4'.*'int8'.*'uint8'"):
        gq.quantize(tiny_cnn, tiny_batches, dtype="int4")
    with pytest.raises(gq.UnknownNameError, match=r"'kl-fast'.*entropy"):
        gq.quantize(tiny_cnn, tiny_batches, calibrator="kl-fast")
    with pytest.raises(gq.UnknownNameError, match=r"granularity 'row'"):
        gq.quantize(tiny_cnn, tiny_batches, granularity="row")
    with pytest.raises(gq.ConfigError, match="calibration data"):
        gq.quantize(tiny_cnn)


def test_empty_and_exhausted_data(tiny_cnn, tiny_batches):
    with pytest.raises(gq.EmptyCalibrationError, match="no batch"):
        gq.quantize(tiny_cnn, [], progress=False)
    gen = (b for b in tiny_batches)
    list(gen)
    with pytest.raises(gq.EmptyCalibrationError, match="exhausted"):
        gq.quantize(tiny_cnn, gen, progress=False)
    with pytest.raises(gq.CalibrationDataError, match="single NDArray"):
        gq.quantize(tiny_cnn, mx.nd.array(tiny_batches[0]), progress=False)
    with pytest.raises(gq.CalibrationDataError, match="not iterable"):
        gq.quantize(tiny_cnn, 42, progress=False)


def test_a_dataset_of_samples_is_refused_with_how_to_batch_it(tiny_cnn, tiny_batches):
    samples = mx.gluon.data.ArrayDataset(np.concatenate(tiny_batches), np.zeros(32))
    with pytest.raises(gq.CalibrationDataError, match=r"ArrayDataset.*single samples.*"
                                                      r"DataLoader\(dataset, batch_size"):
        gq.quantize(tiny_cnn, samples, progress=False)
    loader = mx.gluon.data.DataLoader(samples, batch_size=8)
    assert gq.quantize(tiny_cnn, loader, progress=False).report().quantized


def test_batches_from_a_dataloader_with_workers_run_the_int8_net(tiny_cnn, tiny_batches,
                                                                 tmp_path):
    """A DataLoader with ``num_workers`` yields arrays in shared memory (``cpu_shared``),
    which MXNet's cached graphs refuse: an evaluation loop over it failed on the int8 net
    ("inputs are on cpu_shared(0)"), quantized or loaded; they are copied to ``cpu``, as
    are ``ImageRecordIter``'s, in pinned memory."""
    data = mx.gluon.data.ArrayDataset(np.concatenate(tiny_batches))
    loader = mx.gluon.data.DataLoader(data, batch_size=8, num_workers=2)
    qnet = gq.quantize(tiny_cnn, loader, progress=False)
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    for batch in loader:
        assert batch.context.device_type == "cpu_shared"
        plain = batch.as_in_context(mx.cpu())
        np.testing.assert_array_equal(qnet(batch).asnumpy(), qnet(plain).asnumpy())
        np.testing.assert_array_equal(loaded(batch).asnumpy(), loaded(plain).asnumpy())
        # ImageRecordIter's batches are in pinned memory: the same.
        pinned = plain.as_in_context(mx.Context("cpu_pinned", 0))
        np.testing.assert_array_equal(qnet(pinned).asnumpy(), qnet(plain).asnumpy())


def test_calibrating_twice_covers_both_calls(tiny_cnn, tiny_batches):
    """A second ``calibrate()`` adds its batches' statistics to the first's: the table is
    that of one pass over both, and its counts (read by the debug checks on how much data
    the ranges rest on) count both calls, not the last one only."""
    first, second = tiny_batches[:1], [b * 3.0 for b in tiny_batches[1:]]
    qnet = QuantizedHybridBlock(tiny_cnn, calibrator="entropy", progress=False)
    qnet.calibrate(first)
    table = qnet.calibrate(second)
    one_pass = QuantizedHybridBlock(tiny_cnn, calibrator="entropy", progress=False)
    expected = one_pass.calibrate(first + second)
    assert dict(table) == dict(expected) and len(table) >= 5
    assert (table.meta["batches"], table.meta["samples"]) == (
        len(tiny_batches), sum(len(b) for b in tiny_batches))
    assert (table.meta["batches"], table.meta["samples"]) == (
        expected.meta["batches"], expected.meta["samples"])


def test_batches_of_python_lists_are_arrays(tiny_cnn, tiny_batches):
    """``[[0.1, ...]]`` (a batch written as nested Python lists) is one array, not a list
    argument of thousands of inputs."""
    listed = [[b.tolist()] for b in tiny_batches]
    table = gq.quantize(tiny_cnn, listed, progress=False).calibration_table
    expected = gq.quantize(tiny_cnn, tiny_batches, progress=False).calibration_table
    assert table == expected and len(table) > 4


def test_non_finite_data_names_the_tensor(tiny_cnn, tiny_batches):
    bad = [b.copy() for b in tiny_batches]
    bad[2][0, 0, 3, 3] = np.nan
    with pytest.raises(gq.NonFiniteDataError, match=r"'data'.*1 NaN/Inf"):
        gq.quantize(tiny_cnn, bad, progress=False)
    bad[2][0, 0, 3, 3] = np.inf
    with pytest.raises(gq.NonFiniteDataError):
        gq.quantize(tiny_cnn, bad, progress=False)


def test_batches_that_do_not_fit_the_inputs(tiny_cnn, tiny_batches):
    with pytest.raises(gq.InputMismatchError, match="shapes"):
        gq.quantize(tiny_cnn, [np.zeros((4, 3, 28, 28), "float32")], progress=False)
    with pytest.raises(gq.InputMismatchError, match="ranks"):
        gq.quantize(tiny_cnn, [tiny_batches[0], tiny_batches[1][0]], progress=False)
    with pytest.raises(gq.InputMismatchError, match="not numeric"):
        gq.quantize(tiny_cnn, [np.array([["a"]])], progress=False)
    with pytest.raises(gq.InputMismatchError, match="type str"):
        gq.quantize(tiny_cnn, ["not a batch"], progress=False)


def test_two_input_net_with_one_array_batches():
    class Two(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.d = nn.Dense(4)

        def hybrid_forward(self, F, x, y):
            return self.d(x + y)

    net = Two()
    net.initialize()
    with pytest.raises(gq.InputMismatchError, match=r"takes 2 inputs \(x, y\)"):
        gq.quantize(net, [np.ones((2, 3), "float32")], progress=False)
    with pytest.raises(gq.InputMismatchError, match="1 element"):
        gq.quantize(net, [(np.ones((2, 3), "float32"),)], progress=False)
    with pytest.raises(gq.InputMismatchError, match="no entry for input 'y'"):
        gq.quantize(net, [{"x": np.ones((2, 3), "float32")}], progress=False)


def test_non_hybridizable_nets():
    class Plain(gluon.Block):
        def forward(self, x):
            return mx.nd.relu(x) * 2        # an nd.* function: no symbol goes through it

    with pytest.raises(gq.NotHybridizableError, match=r"Plain could not be traced.*Plain is "
                       r"a plain gluon.Block.*no nd.\* function.*HybridBlock"):
        gq.quantize(Plain(), [np.ones((1, 2), "float32")])

    class NumpyInside(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.d = nn.Dense(2)

        def hybrid_forward(self, F, x):
            return self.d(x) * float(x.asnumpy().mean())

    net = NumpyInside()
    net.initialize()
    with pytest.raises(gq.NotHybridizableError, match="could not be traced"):
        gq.quantize(net, [np.ones((1, 2), "float32")], progress=False)


def test_plain_block_calling_hybrid_layers_is_quantized(tmp_path):
    """A plain ``gluon.Block`` whose forward calls its HybridBlock layers (how many users
    write a model: ``class Net(gluon.Block)``) is traced through that forward, with its
    inputs read from the forward's signature; its layers keep their names (report,
    exclude). It was refused as not a HybridBlock."""
    class TwoTower(gluon.Block):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.image = nn.HybridSequential()
                self.image.add(nn.Conv2D(16, 3, padding=1, activation="relu"),
                               nn.GlobalAvgPool2D(), nn.Flatten())
                self.text = nn.Dense(16, activation="relu")
                self.head = nn.Dense(4)

        def forward(self, image, tokens, scale=None):
            joint = self.image(image) + self.text(tokens)
            out = self.head(joint.relu())
            return out if scale is None else out * scale

    net = TwoTower(prefix="tower_")
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [(rs.rand(8, 3, 12, 12).astype("float32"), rs.randn(8, 10).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    assert type(qnet.net).__name__ == "TwoTower"
    x = [mx.nd.array(a) for a in batches[0]]
    ref, out = net(*x).asnumpy().ravel(), qnet(*x).asnumpy().ravel()
    assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999
    layers = {r.layer: r for r in qnet.report()}
    assert {"tower_conv0", "tower_dense0", "tower_dense1"} <= set(layers)
    assert all(placed(layers[n]) for n in ("tower_conv0", "tower_dense0", "tower_dense1"))
    kept = gq.quantize(net, batches, exclude=["head"], progress=False)
    assert [r.quantized for r in kept.report() if r.layer == "tower_dense1"] == [False]
    qnet.export(str(tmp_path / "tower"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "tower"))
    np.testing.assert_array_equal(loaded(*x).asnumpy(), qnet(*x).asnumpy())


def test_plain_sequential_of_hybrid_layers_is_quantized(tmp_path):
    """``nn.Sequential`` (not Hybrid) is how many users stack hybridizable layers: it is
    quantized over the same layers (it was refused as not a HybridBlock); a child that is
    not hybridizable is named by its position."""
    net = nn.Sequential()
    inner = nn.Sequential()
    inner.add(nn.Conv2D(16, 3, activation="relu"), nn.MaxPool2D())
    net.add(inner, nn.Conv2D(16, 3, activation="relu"), nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.rand(4, 3, 20, 20).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    x = batches[0]
    ref = net(x).asnumpy()
    out = qnet(x).asnumpy()
    assert np.dot(ref.ravel(), out.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(out)) > 0.999
    assert coverage(qnet.report()) == (3, 3)
    assert [row.layer for row in qnet.report()][:2] == [inner[0].name, inner[1].name]

    class Plain(gluon.Block):
        def forward(self, x):
            return x * 2

    bad = nn.Sequential()
    bad_inner = nn.Sequential()
    bad_inner.add(nn.Dense(4), Plain())
    bad.add(nn.Dense(4), bad_inner)
    bad.initialize()
    with pytest.raises(gq.NotHybridizableError, match=r"net\[1\]\[1\] of this nn.Sequential "
                                                      r"is a Plain.*HybridBlock; every"):
        gq.quantize(bad, [np.ones((1, 2), "float32")], progress=False)
    scaled = nn.Sequential()
    scaled.add(nn.Dense(4), nn.Lambda(lambda x: x * 2))
    scaled.initialize()
    with pytest.raises(gq.NotHybridizableError, match=r"net\[1\] .* Lambda .*nn.HybridLambda"):
        gq.quantize(scaled, [np.ones((1, 2), "float32")], progress=False)


def test_forward_that_raises_is_reported(tiny_batches):
    class Broken(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.d = nn.Dense(3, in_units=7)

        def hybrid_forward(self, F, x):
            return self.d(x)

    net = Broken()
    net.initialize()
    with pytest.raises(gq.InputMismatchError, match=r"Calibration forward pass failed"):
        gq.quantize(net, [np.ones((2, 5), "float32")], progress=False)


def test_calibrator_that_saw_nothing(tiny_cnn):
    cal = gq.MinMaxCalibrator()
    with pytest.raises(gq.EmptyCalibrationError):
        cal.compute()


def test_not_built_yet(tiny_cnn, tiny_batches):
    qnet = QuantizedHybridBlock(tiny_cnn, progress=False)
    with pytest.raises(gq.GraphError, match="not built"):
        qnet(mx.nd.array(tiny_batches[0]))
    with pytest.raises(gq.GraphError, match="not built"):
        qnet()
    with pytest.raises(gq.GraphError, match="not quantized yet"):
        qnet.report()
    with pytest.raises(gq.EmptyCalibrationError, match="calibrate"):
        qnet.finalize()


def test_a_call_with_no_input_says_what_the_network_takes(tiny_cnn, tiny_batches, tmp_path):
    """``qnet()`` raised Gluon's bare ``TypeError`` (forward() missing 'x'); it is an
    InputMismatchError naming the inputs and their calibrated shapes, loaded or not."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    shape = tuple(np.asarray(tiny_batches[0]).shape)
    with pytest.raises(gq.InputMismatchError, match=r"no input was given\. Pass 1 mx\.nd\."
                       r"NDArray input\(s\) \(x\).*%s" % re.escape(str(shape))):
        qnet()
    qnet.export(str(tmp_path / "m"))
    with pytest.raises(gq.InputMismatchError, match="no input was given"):
        gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))()


def test_uninitialized_net_is_refused_without_data():
    net = nn.HybridSequential()
    net.add(nn.Dense(3))
    net.initialize()                    # deferred: shapes unknown until first batch
    qnet = gq.quantize(net, [np.ones((2, 4), "float32")], progress=False)  # data finishes it
    assert qnet(mx.nd.ones((2, 4))).shape == (2, 3)
    fresh = nn.HybridSequential()
    fresh.add(nn.Dense(3))
    fresh.initialize()
    with pytest.raises(gq.GraphError, match="not initialized"):
        gq.quantize(fresh, calib_table=qnet.calibration_table.with_fingerprint(None),
                    progress=False)


def test_table_from_another_graph_is_refused(tiny_cnn, tiny_batches):
    other = nn.HybridSequential()
    other.add(nn.Dense(3))
    other.initialize()
    qother = gq.quantize(other, [np.ones((2, 4), "float32")], progress=False)
    with pytest.raises(gq.CalibrationTableError, match="another graph"):
        gq.quantize(tiny_cnn, calib_table=qother.calibration_table, progress=False)


def test_cudnn_backend_builds_without_onednn_passes(tiny_cnn, tiny_batches):
    qnet = gq.quantize(tiny_cnn, tiny_batches, backend="cudnn", progress=False)
    text = qnet.quantized_graph.tojson()
    assert "_sg_mkldnn" not in text
    with pytest.raises(gq.GraphError, match="GPU"):
        qnet(mx.nd.array(tiny_batches[0]))


def _small_cnn_built_and_loaded(tmp_path, *extra):
    """conv-relu, max pooling, ``extra`` layers, dense: the fp32 net, its batches, the int8
    net and its export loaded back."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, activation="relu"), nn.MaxPool2D(), *extra,
            nn.Flatten(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [mx.nd.array(rs.rand(4, 3, 16, 16).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches, progress=False)
    qnet.export(str(tmp_path / "m"))
    return net, batches, qnet, gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))


def test_int8_nets_run_for_inference_under_autograd(tmp_path):
    """Under ``autograd.train_mode()`` or ``record()`` the int8 nets run in predict mode,
    paused: one training-mode call of an int8 max pooling left the static buffers broken
    ("MKLDNN Pooling: incorrect workspace input" at every later call), and dropout would
    have been applied. Calibration under ``train_mode()`` gives the same table."""
    net, batches, qnet, loaded = _small_cnn_built_and_loaded(tmp_path, nn.Dropout(0.5))
    x = batches[0]
    for block in (qnet, loaded):
        ref = block(x).asnumpy()
        with mx.autograd.train_mode():
            trained = block(x).asnumpy()
        with mx.autograd.record():
            recorded = block(x)
        assert np.array_equal(trained, ref) and np.array_equal(recorded.asnumpy(), ref)
        assert np.array_equal(block(x).asnumpy(), ref)      # still usable afterwards
    with mx.autograd.train_mode():
        again = gq.quantize(net, batches, progress=False)
    assert dict(again.calibration_table) == dict(qnet.calibration_table)
    assert np.array_equal(again(x).asnumpy(), qnet(x).asnumpy())


def test_reinitializing_a_model_keeps_its_int8_weights(tmp_path):
    """``initialize(force_reinit=True)`` over an int8 block, or over a new model holding it
    as a backbone, used to empty the int8 weights and ranges: every later call failed
    ("Parameter ... has not been initialized yet"). Their initializer now gives them back."""
    _, batches, qnet, loaded = _small_cnn_built_and_loaded(tmp_path)
    x = batches[0]
    for block in (qnet, loaded):
        ref = block(x).asnumpy()
        block.initialize(mx.init.Xavier(), force_reinit=True)
        assert np.array_equal(block(x).asnumpy(), ref)
        model = nn.HybridSequential()
        model.add(block, nn.Dense(3))
        model.initialize(mx.init.Xavier(), force_reinit=True)    # a new head, a kept backbone
        model.hybridize()
        assert model(x).shape == (4, 3)
        assert np.array_equal(block(x).asnumpy(), ref)


def test_a_head_trains_over_an_int8_backbone_with_one_trainer(tmp_path):
    """``Trainer(model.collect_params())`` over a new head and an int8 backbone: the int8
    parameters have no gradient (grad_req 'null', no buffers), so the Trainer skips them
    (it refused to step: "Gradient of Parameter ... has not been updated") and weight decay
    never touches them."""
    _, batches, qnet, loaded = _small_cnn_built_and_loaded(tmp_path)
    x = batches[0]
    for block in (qnet, loaded):
        ref = block(x).asnumpy()
        assert {p.grad_req for p in block.collect_params().values()} == {"null"}
        model = nn.HybridSequential()
        model.add(block, nn.Dense(3))
        model[1].initialize(mx.init.Xavier())
        model(x)                                # the head's shapes
        trainer = gluon.Trainer(model.collect_params(), "sgd",
                                {"learning_rate": 0.1, "wd": 0.01})
        head = model[1].weight.data().asnumpy()
        for _ in range(2):
            with mx.autograd.record():
                loss = model(x).sum()
            loss.backward()
            trainer.step(4)
        assert not np.array_equal(model[1].weight.data().asnumpy(), head)   # the head learnt
        assert np.array_equal(block(x).asnumpy(), ref)                      # the backbone not


@pytest.mark.parametrize("kind", ["nd", "numpy"])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "bool", "float16", "float64"])
def test_inputs_of_any_numeric_dtype_are_read_as_their_values(dtype, kind, tmp_path):
    """A uint8 image fed to the int8 net gives what its float32 copy gives (MXNet's
    quantize read uint8 bytes as already-quantized values of the calibrated range, and
    failed on int32 and float16: "data_quantize: Check failed"; a float64 input failed
    too); numpy arrays run as calibration batches given as numpy do."""
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(16, 3, padding=1, activation="relu"),
            mx.gluon.nn.Conv2D(16, 3, padding=1), mx.gluon.nn.GlobalAvgPool2D())
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    raw = rs.randint(0, 2 if dtype == "bool" else 200, (12, 3, 12, 12))
    batches = [mx.nd.array(raw[i:i + 4], dtype="float32") for i in range(0, 12, 4)]
    qnet = gq.quantize(net, batches, progress=False)
    x = mx.nd.array(raw[:4].astype(dtype), dtype=dtype)
    expected = qnet(x.astype("float32")).asnumpy()
    given = x if kind == "nd" else x.asnumpy()
    np.testing.assert_array_equal(qnet(given).asnumpy(), expected)
    qnet.export(str(tmp_path / "m"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    np.testing.assert_array_equal(loaded(given).asnumpy(), expected)
    assert np.abs(expected - net(x.astype("float32")).asnumpy()).max() < 0.05 * np.abs(
        expected).max()


def test_layers_the_forward_never_calls_need_no_initialization(tiny_batches):
    """Only the parameters the graph reads must be initialized: an auxiliary head a net
    keeps but never calls may stay bare (as after ``load_parameters(allow_missing=True)``)."""
    class WithAuxHead(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.body = nn.Conv2D(8, 3, in_channels=1)
            self.head = nn.Dense(10, in_units=8)
            self.aux = nn.Dense(10, in_units=8)       # trained elsewhere, unused here

        def hybrid_forward(self, F, x):
            return self.head(F.relu(self.body(x)).mean(axis=(2, 3)))

    net = WithAuxHead()
    net.body.initialize(mx.init.Xavier())
    net.head.initialize(mx.init.Xavier())
    qnet = gq.quantize(net, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[0])
    assert np.abs(qnet(x).asnumpy() - net(x).asnumpy()).max() < 0.05 * np.abs(
        net(x).asnumpy()).max()


def test_a_net_never_initialized_is_refused_before_its_layers_are_judged(caplog, int8_regions):
    """A net the user forgot to initialize was traced, fused and judged first: the log
    said "No layer ... runs in int8 (every layer is excluded, has no int8 kernel, or would
    be slower in int8)" before the error that named the real problem."""
    net = nn.HybridSequential()
    net.add(nn.Dense(4))
    with caplog.at_level(logging.DEBUG, logger="gluon_quant"):
        with pytest.raises(gq.ConfigError, match=r"2 parameter\(s\) .* never initialized"):
            gq.quantize(net, [np.ones((8, 16), "float32")], progress=False)
    assert not [r.getMessage() for r in caplog.records if "int8" in r.getMessage()]


def test_repr_says_what_the_int8_net_is(tiny_cnn, tiny_batches, tmp_path):
    """Gluon's repr printed ``QuantizedHybridBlock(\\n)``: the int8 net is one graph with no
    child blocks. It now names the fp32 net, the settings and how much runs in int8."""
    qnet = QuantizedHybridBlock(tiny_cnn, calibrator="entropy", progress=False)
    assert repr(qnet) == ("QuantizedHybridBlock(HybridSequential, backend=onednn, calibrator="
                          "entropy, dtype=auto, granularity=channel: not built yet: "
                          "calibrate() and finalize())")
    qnet.calibrate(tiny_batches)
    qnet.finalize()
    assert repr(qnet).endswith("granularity=channel: 4 of 4 convolution/dense layers in int8)")
    qnet.export(str(tmp_path / "cnn"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "cnn"))
    assert repr(loaded) == "QuantizedSymbolBlock(%s: 4 of 4 convolution/dense layers in int8)" % (
        tmp_path / "cnn-meta.json")


def test_a_call_inside_autograd_record_says_once_that_int8_outputs_carry_no_gradient(
        tiny_cnn, tiny_batches, caplog):
    """Training the int8 net (its outputs alone in a loss) failed in ``backward()`` with
    MXNet's "Cannot differentiate node ... You need to set is_recording to true", read as
    if record() had been forgotten. The first call inside ``record()`` says why, once; a
    distillation step (the int8 net as a fixed teacher) trains the student."""
    from gluon_quant import calls
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    x = mx.nd.array(tiny_batches[0])
    calls._recording_noted.clear()
    qnet(x)
    assert "inference only" not in caplog.text
    student = nn.Dense(qnet(x).shape[1])
    student.initialize(mx.init.Xavier())
    trainer = mx.gluon.Trainer(student.collect_params(), "sgd", {"learning_rate": 0.01})
    for _ in range(2):
        with mx.autograd.record():
            loss = ((student(x) - qnet(x)) ** 2).sum()
        loss.backward()
        trainer.step(x.shape[0])
    assert caplog.text.count("it is inference only and its outputs carry no gradient") == 1
    assert "train the fp32 network and quantize it again" in caplog.text
    with mx.autograd.record():
        alone = qnet(x).sum()
    with pytest.raises(mx.base.MXNetError, match="Cannot differentiate node"):
        alone.backward()
