"""gluon_quant.tune: accuracy-aware tuning guided by the doctor."""
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant.tune import StopReason

from conftest import PAIRS_SATURATE, SIGNED_DENSE_REASON, agreement_fn, coverage


def test_tuning_keeps_the_fragile_layer_in_fp32(fragile_mlp):
    net = fragile_mlp["net"]
    eval_fn = agreement_fn(net, fragile_mlp["test"])
    qnet, result = gq.tune(net, fragile_mlp["calib"], eval_fn, tolerance=0.02, progress=False)
    assert result.stopped is StopReason.TOLERANCE_MET
    assert result.fp32_score == 1.0
    assert result.chosen.within and result.chosen.score >= 0.98
    assert eval_fn(qnet) == result.chosen.score
    if PAIRS_SATURATE:
        # Where int8 pairs saturate, granularity='tensor' keeps the fragile layer fp32 (a
        # dense layer with signed input and one weight scale: graph/saturation.py).
        assert [t.within for t in result.trials] == [False] * 4 + [True]
        assert sum(SIGNED_DENSE_REASON in r.reason for r in qnet.report()) >= 1
        return
    # No calibrator or granularity rescues it; one layer in fp32 does.
    assert [t.within for t in result.trials[:5]] == [False] * 5
    assert {t.calibrator for t in result.trials[:5]} == {"mse", "entropy", "percentile",
                                                           "minmax"}
    layers = {r.node: r for r in qnet.report()}
    assert [layers[n].layer for n in result.chosen.exclude] == ["mlp_fragile"]
    assert not layers[result.chosen.exclude[0]].quantized
    assert sum(r.quantized for r in qnet.report() if r.op == "FullyConnected") == 2
    assert "stopped: the score is within the tolerance" in str(result)
    # the fallback trial names the Gluon layer beside the fused node it keeps fp32
    assert "keep mlp_fragile (%s) in fp32" % result.chosen.exclude[0] in str(result)
    # The tuned model's table alone rebuilds it (its settings, inputs and their shapes:
    # the int8 regions depend on the shapes, and a conv net's rebuild quantized a pooling
    # the tuned model kept fp32).
    assert qnet.calibration_table.meta["input_shapes"] == [[64, 8]]
    x = mx.nd.array(fragile_mlp["test"][:64])
    rebuilt = gq.quantize(net, calib_table=qnet.calibration_table, progress=False)
    np.testing.assert_array_equal(rebuilt(x).asnumpy(), qnet(x).asnumpy())


def test_budget_stops_tuning(fragile_mlp):
    net = fragile_mlp["net"]
    qnet, result = gq.tune(net, fragile_mlp["calib"], agreement_fn(net, fragile_mlp["test"]),
                           tolerance=0.0, max_trials=2, progress=False)
    assert result.stopped is StopReason.BUDGET and len(result.trials) == 2
    assert result.chosen.score == max(t.score for t in result.trials)
    # NumPy numbers (a budget computed with NumPy) are taken as the Python ones
    _, again = gq.tune(net, fragile_mlp["calib"], agreement_fn(net, fragile_mlp["test"]),
                       tolerance=np.float32(0.0), max_trials=np.int64(2), progress=False)
    assert [t.score for t in again.trials] == [t.score for t in result.trials]
    assert type(again.tolerance) is float


def test_quantize_with_eval_fn_tunes(tiny_cnn, tiny_batches):
    eval_fn = agreement_fn(tiny_cnn, np.concatenate(tiny_batches))
    qnet = gq.quantize(tiny_cnn, tiny_batches, eval_fn=eval_fn, tolerance=0.5, progress=False)
    assert qnet.tune_result.stopped is StopReason.TOLERANCE_MET
    assert len(qnet.tune_result.trials) == 1  # the defaults were good enough
    # The chosen table records the weights it was measured with, as quantize()'s does:
    # saved and applied to other weights, it is refused.
    assert qnet.calibration_table.meta["weights"] == gq.quantize(
        tiny_cnn, tiny_batches, progress=False).calibration_table.meta["weights"]


def test_bad_settings_are_refused(tiny_cnn, tiny_batches):
    with pytest.raises(gq.ConfigError, match="tolerance"):
        gq.tune(tiny_cnn, tiny_batches, lambda m: 1.0, tolerance=-1)
    with pytest.raises(gq.ConfigError, match="eval_fn"):
        gq.quantize(tiny_cnn, tiny_batches, tolerance=0.1)


def test_tuning_a_net_with_no_layer_worth_int8_stops_at_the_defaults(int8_regions):
    """A net whose layers all stay fp32 (too small to gain) has no ranges to re-score: the
    defaults trial is the fp32 net and meets any tolerance (it raised 'MSECalibrator has
    no statistics' from the first trial)."""
    import mxnet as mx
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Embedding(50, 16), mx.gluon.nn.Dense(8, flatten=False),
            mx.gluon.nn.HybridLambda(lambda F, x: F.sum(x, axis=1)), mx.gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = [rs.randint(0, 50, (4, 12)).astype("float32") for _ in range(3)]
    eval_fn = agreement_fn(net, np.concatenate(batches))
    qnet, result = gq.tune(net, batches, eval_fn, tolerance=0.0, progress=False)
    assert result.stopped is StopReason.TOLERANCE_MET and len(result.trials) == 1
    assert result.chosen.score == result.fp32_score == 1.0
    assert coverage(qnet.report()) == (0, 2)


def test_eval_fn_may_return_an_ndarray_or_a_metric_pair(fragile_mlp):
    """MXNet code scores with NDArrays ((pred == label).mean(), shape (1,)) and
    EvalMetric.get() pairs; tune() read both as the number (it raised float()'s TypeError)."""
    import mxnet as mx
    net, x = fragile_mlp["net"], mx.nd.array(fragile_mlp["test"])
    expected = net(x).argmax(axis=1)
    as_array = lambda model: (model(x).argmax(axis=1) == expected).mean()   # noqa: E731

    def as_metric(model):
        metric = mx.metric.Accuracy()
        metric.update([expected], [model(x)])
        return metric.get()
    runs = [gq.tune(net, fragile_mlp["calib"], fn, tolerance=0.02, max_trials=6,
                    progress=False)[1]
            for fn in (agreement_fn(net, fragile_mlp["test"]), as_array, as_metric)]
    scores = [[t.score for t in result.trials] for result in runs]
    # where int8 pairs saturate the per-tensor trial (the fifth) keeps the fragile layer
    # fp32 (signed input, no per-channel bias to shift it) and meets the tolerance
    assert scores[0] == scores[1] == scores[2] and len(scores[0]) == (5 if PAIRS_SATURATE
                                                                      else 6)
    assert runs[0].fp32_score == runs[1].fp32_score == runs[2].fp32_score == 1.0


@pytest.mark.parametrize("value, shown", [(None, "NoneType None"), (float("nan"), "float nan"),
                                          ((0.9, 0.1), r"tuple \(0.9, 0.1\)"),
                                          ("0.9", "str '0.9'")])
def test_eval_fn_returning_no_number_is_refused(tiny_cnn, tiny_batches, value, shown):
    with pytest.raises(gq.ConfigError, match=r"eval_fn\(net\), the fp32 network, returned "
                                             + shown + ": eval_fn must return one finite"):
        gq.tune(tiny_cnn, tiny_batches, lambda m: value, tolerance=0.1, progress=False)


def test_a_candidate_scoring_nan_counts_as_the_worst(fragile_mlp):
    net = fragile_mlp["net"]
    score = agreement_fn(net, fragile_mlp["test"])
    eval_fn = lambda model: score(model) if model is net else float("nan")   # noqa: E731
    _, result = gq.tune(net, fragile_mlp["calib"], eval_fn, tolerance=0.02, max_trials=3,
                        progress=False)
    assert result.stopped is StopReason.BUDGET
    assert [t.score for t in result.trials] == [-np.inf] * 3
    assert not any(t.within for t in result.trials)


def test_endless_calibration_data_stops_before_memory_runs_out(tiny_cnn, tiny_batches,
                                                               monkeypatch):
    """tune() keeps its batches: from an endless generator (GluonTS's TrainDataLoader, a
    stream) it filled the machine's memory; now it stops past data.KEPT_BATCHES_BUDGET
    bytes unless num_calib_batches bounds the data."""
    from gluon_quant import data
    batch_bytes = tiny_batches[0].nbytes
    monkeypatch.setattr(data, "KEPT_BATCHES_BUDGET", 3 * batch_bytes)

    def stream():
        while True:
            yield from tiny_batches

    with pytest.raises(gq.CalibrationDataError, match=r"tune\(\) keeps its calibration batches "
                       r"in memory.*\(generator\) has given 4 batches.*num_calib_batches=N"):
        gq.tune(tiny_cnn, stream(), lambda m: 1.0, tolerance=0.5, progress=False)
    qnet, result = gq.tune(tiny_cnn, stream(), lambda m: 1.0, tolerance=0.5, progress=False,
                           num_calib_batches=5)
    assert result.stopped is StopReason.TOLERANCE_MET
    # a finite stream under the budget needs no bound
    gq.tune(tiny_cnn, iter(tiny_batches[:3]), lambda m: 1.0, tolerance=0.5, progress=False)
