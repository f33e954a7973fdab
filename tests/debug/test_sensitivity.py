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
