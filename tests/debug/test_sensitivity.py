"""gluon_quant.debug.sensitivity: the gain of keeping each layer alone in fp32."""
import json

import gluon_quant as gq
from gluon_quant.debug import sensitivity


def test_fragile_layer_ranks_first(fragile_mlp):
    qnet = gq.quantize(fragile_mlp["net"], fragile_mlp["calib"], progress=False)
    report = sensitivity(qnet, [fragile_mlp["test"]], num_batches=1)
    names = {r.node: r.layer for r in qnet.report()}
    assert names[report[0].node] == "mlp_fragile"
    # the Gluon layer is named beside the fused node (sg_mkldnn_fully_connected_1)
    assert [e.layer for e in report] == [names[e.node] for e in report]
    assert report[0].layer == "mlp_fragile" != report[0].node
    row = str(report).splitlines()[2].split()
    assert row[0] == "mlp_fragile" and row[-1] == report[0].node
    assert report[0].gain_db > 10.0
    assert report[0].cosine > 0.999 > report.baseline_cosine
    assert all(e.gain_db < report[0].gain_db for e in report[1:])
    assert len(report) == 3 and not report.skipped
    # No new calibration: the variants reuse the block's table.
    assert qnet.calibration_table.meta["batches"] == 4
    assert json.loads(report.to_json())["layers"][0]["node"] == report.nodes[0]
    assert "gain dB" in str(report)


def test_max_pooling_between_int8_layers_is_measured_not_skipped(tiny_cnn, tiny_batches):
    """An int8 max pooling gets no range of its own at calibration (it keeps its input's
    scale); kept fp32 it needs one for the convolution after it, and every such candidate
    was skipped ("The calibration table has no range for ... pool0_fwd_output"). The
    variants now take the pooling's input range."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    pools = [r.node for r in qnet.report() if r.op == "Pooling" and r.quantized]
    assert pools and not any(p + "_output" in qnet.calibration_table for p in pools)
    report = sensitivity(qnet, tiny_batches[:1], num_batches=1)
    assert not report.skipped, report.skipped
    measured = {e.node: e for e in report}
    assert set(pools) <= set(measured)
    # the pooling's input range is as good as a calibrated one: keeping it fp32 costs
    # nothing, as max pooling of the same values cannot
    assert all(abs(measured[p].gain_db) < 0.5 for p in pools)


def test_passed_ranges_fill_only_what_the_table_lacks():
    import mxnet as mx
    from gluon_quant.calib.table import CalibrationTable
    from gluon_quant.debug.sensitivity import with_passed_ranges
    x = mx.sym.var("data")
    a = mx.sym.relu(x, name="a")
    b = mx.sym.tanh(x, name="b")
    pool = mx.sym.Pooling(a, kernel=(2, 2), pool_type="max", name="pool")
    cat = mx.sym.concat(pool, b, dim=1, name="cat")
    flat = mx.sym.flatten(mx.sym.exp(cat, name="e"), name="flat")
    table = CalibrationTable({"a_output": (0.0, 3.0), "b_output": (-1.0, 1.0),
                              "e_output": (0.0, 9.0), "flat_output": (0.0, 1.0)},
                             fingerprint="f")
    ranges = dict(with_passed_ranges(table, json.loads(flat.tojson())).items())
    assert ranges == {"a_output": (0.0, 3.0), "b_output": (-1.0, 1.0),
                      "e_output": (0.0, 9.0), "flat_output": (0.0, 1.0),
                      "pool_output": (0.0, 3.0), "cat_output": (-1.0, 3.0)}
    full = CalibrationTable(ranges, fingerprint="f")
    assert with_passed_ranges(full, json.loads(flat.tojson())) is full
