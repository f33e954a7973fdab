"""Accuracy-aware tuning: quantize, measure with the user's metric, adjust until good enough.

:func:`tune` starts from the defaults and, until ``eval_fn(qnet)`` is within ``tolerance``
of ``eval_fn(net)``:

1. tries the other built-in calibrators, each re-scoring the statistics collected once
   (no new pass over the data), then the other weight granularity, then AdaRound weight
   rounding (:mod:`gluon_quant.weights.adaround`) where the backend has it;
2. keeps in fp32, one more at a time, the layers the doctor ranks most sensitive (its
   per-layer comparison preselects candidates, its sensitivity analysis orders them: both
   run on a few calibration batches, so few full evaluations are needed).

Every quantized variant reuses the same fused graph and calibration statistics.

With ``engine='ray'`` the candidates of each step are evaluated side by side as Ray tasks.
The steps above fix which candidates are independent: step 1's calibrators, and step 2's
growing fp32 sets (the ranking is known before the first of them runs), are rounds of as
many candidates as the cluster has CPUs; the granularity trial waits for step 1's best.
Results are taken in the sequential order and stop at the same trial, so the outcome is
that of the sequential run.
"""
import enum
import logging
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from .block import QuantizedHybridBlock
from .calib import (CALIBRATORS, CalibrationTable, HistogramCalibrator, MSECalibrator,
                    get_calibrator)
from .backends import get_spec
from .config import Granularity, QuantConfig, WeightRounding
from .data import keep_batches
from .debug.compare import compare
from .debug.sensitivity import sensitivity
from .engines import Task, get_engine
from .errors import ConfigError, EmptyCalibrationError, GluonQuantError
from .pipeline import release_calibration_memory
from .portable import PortableModel

__all__ = ["tune", "TuneResult", "Trial", "StopReason"]

_log = logging.getLogger(__name__)

#: Calibrators tried after the first one, in this order.
_CALIBRATOR_ORDER = ("mse", "entropy", "percentile", "minmax")


class StopReason(enum.Enum):
    """Why :func:`tune` stopped."""

    TOLERANCE_MET = "the score is within the tolerance of fp32"
    BUDGET = "max_trials evaluations were spent"
    NO_CANDIDATES = "no layer is left to keep in fp32"


@dataclass(frozen=True)
class Trial:
    """One evaluated configuration.

    Attributes
    ----------
    calibrator : str
    granularity : str
    exclude : tuple of str
        Layers kept in fp32 beyond the user's own ``exclude``.
    score : float
        ``eval_fn`` of the quantized net.
    within : bool
        Whether the score is within the tolerance of fp32.
    why : str
        What the trial tried.
    weight_rounding : str
        ``'nearest'`` or ``'adaround'``.
    """

    calibrator: str
    granularity: str
    exclude: Tuple[str, ...]
    score: float
    within: bool
    why: str
    weight_rounding: str = "nearest"


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` tried and why it stopped.

    Attributes
    ----------
    fp32_score : float
        ``eval_fn(net)``.
    tolerance : float
        Allowed loss against fp32.
    trials : tuple of Trial
        In order of evaluation.
    chosen : Trial
        The configuration returned: the first within tolerance, else the best score.
    stopped : StopReason
    """

    fp32_score: float
    tolerance: float
    trials: Tuple[Trial, ...]
    chosen: Trial
    stopped: StopReason

    def __str__(self):
        lines = ["tune: fp32 score %.6g, tolerance %g; %d trial(s); stopped: %s"
                 % (self.fp32_score, self.tolerance, len(self.trials), self.stopped.value),
                 "%-3s %-11s %-8s %-12s %-6s %s" % ("#", "calibrator", "weights", "score",
                                                     "ok", "tried")]
        for i, t in enumerate(self.trials, 1):
            mark = "*" if t is self.chosen else " "
            lines.append("%-3s %-11s %-8s %-12.6g %-6s %s%s" % (
                "%d%s" % (i, mark), t.calibrator, t.granularity, t.score,
                "yes" if t.within else "no", t.why,
                "" if not t.exclude else " [fp32: %s]" % ", ".join(t.exclude)))
        return "\n".join(lines)


def tune(net, calib_data, eval_fn: Callable, *, tolerance: float, max_trials: int = 12,
         higher_is_better: bool = True, max_candidates: int = 16, doctor_batches: int = 2,
         engine: Optional[str] = None, address: Optional[str] = None,
         config: Optional[QuantConfig] = None, **settings):
    """Quantize ``net`` and adjust the settings until ``eval_fn`` is within ``tolerance``.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The fp32 network (not modified).
    calib_data : iterable of batches
        Calibration batches (as for :func:`gluon_quant.quantize`); read once, and the first
        ``doctor_batches`` of them also guide the layer fallback.
    eval_fn : callable
        ``eval_fn(model) -> float`` (or a one-element NDArray, or an ``EvalMetric.get()``
        pair), e.g. accuracy on a validation set; called with ``net``
        once and with each quantized candidate.
    tolerance : float
        Allowed loss: ``eval_fn(net) - eval_fn(qnet) <= tolerance`` (or the opposite
        difference when ``higher_is_better=False``, e.g. for a loss).
    max_trials : int, default 12
        Most quantized candidates evaluated with ``eval_fn``.
    higher_is_better : bool, default True
    max_candidates : int, default 16
        Layers (those adding the most error in the doctor's comparison) whose sensitivity
        is measured to order the fallback.
    doctor_batches : int, default 2
        Calibration batches the doctor measures on.
    engine : {None, 'local', 'ray'}, default None
        ``None``/``'local'``: candidates are evaluated one after another in this process.
        ``'ray'``: each candidate is built here and evaluated in a Ray task, as many at
        once as the cluster has CPUs; trials whose choice depends on earlier scores wait
        for them, so the trials, scores and chosen configuration are those of the
        sequential run (extra candidates of a round after the first one within
        tolerance are evaluated and dropped).  ``eval_fn`` must then be picklable by
        Ray (a function or closure over numpy arrays or NDArrays) and receives a
        :class:`~gluon_quant.QuantizedSymbolBlock` over the candidate's graph and
        parameters; ``eval_fn(net)`` still runs here.
    address : str, optional
        Ray cluster address (``'auto'``, ``'HOST:PORT'``); see
        :func:`gluon_quant.calibrate_parallel`.
    config : QuantConfig, optional
        The starting settings (its ``calibrator`` and ``granularity`` are tried first, its
        ``exclude`` is always kept in fp32); ``**settings`` replace its fields.

    Returns
    -------
    qnet : QuantizedHybridBlock
        The chosen quantized network; its ``config`` is the starting config with the
        chosen calibrator, granularity and fp32 layers.
    result : TuneResult

    Examples
    --------
    >>> qnet, result = gluon_quant.tune(net, calib, lambda m: accuracy(m, val), tolerance=0.003)
    >>> print(result)
    """
    tolerance, max_trials, max_candidates, doctor_batches = _check_settings(
        eval_fn, tolerance, max_trials, max_candidates, doctor_batches)
    config = QuantConfig.build(config, net=net, **settings)
    batches = keep_batches(calib_data, config.num_calib_batches)
    if not batches:
        raise EmptyCalibrationError("tune() got no calibration batch: pass a non-empty "
                                    "iterable of batches.")
    with get_engine("local" if engine is None else engine, address=address,
                    allowed=("local", "ray")) as runner:
        runner.check_shared(_EVALUATE, eval_fn)     # before calibrating, not after
        return _search(net, batches, eval_fn, runner, config, tolerance=tolerance,
                       max_trials=max_trials, sign=1.0 if higher_is_better else -1.0,
                       max_candidates=max_candidates, doctor_batches=doctor_batches)


def _search(net, batches, eval_fn, runner, config, *, tolerance, max_trials, sign,
            max_candidates, doctor_batches):
    """The search of :func:`tune`, evaluating candidates in rounds on ``runner``."""
    first = get_calibrator(config.calibrator)
    collector = first if isinstance(first, HistogramCalibrator) else MSECalibrator()
    base = QuantizedHybridBlock(net, config.replace(calibrator=collector))
    base.calibrate(batches)
    fp32 = _score(eval_fn(net), "eval_fn(net), the fp32 network,")
    trials, built = [], {}

    def build(cal, gran, extra, rounding):
        rescored = collector if cal is collector else _rescore(collector, cal)
        variant = base.clone(calibrator=rescored, granularity=gran,
                             exclude=tuple(base.exclude) + tuple(extra),
                             weight_rounding=rounding or base.config.weight_rounding)
        variant.quantize_graph()
        ranges = rescored.compute() if rescored.names else CalibrationTable(
            {}, method=rescored.method_name)    # no layer worth int8: every trial is fp32
        variant.finalize(_with_base_meta(ranges, base.calibration_table))
        return rescored, variant

    def run(candidates):
        """Evaluate ``(calibrator, granularity, extra, why, rounding)`` candidates in order, in
        rounds of ``runner.slots``; the StopReason of the first within tolerance or over
        budget (checked before each trial, as one at a time would), else None."""
        for start in range(0, len(candidates), runner.slots):
            chunk = candidates[start:start + min(runner.slots, max_trials - len(trials))]
            if not chunk:
                return StopReason.BUDGET
            variants = []

            def models(chunk=chunk, variants=variants):
                # Built one at a time: on Ray, the next is built while the last one runs.
                for cal, gran, extra, _, rounding in chunk:
                    variants.append(build(cal, gran, extra, rounding))
                    yield PortableModel.of(variants[-1][1]) if runner.remote \
                        else variants[-1][1]
            values = runner.map(_EVALUATE, eval_fn, models(), first_number=len(trials) + 1)
            scores = [_score(value, "eval_fn of trial %d" % (len(trials) + 1 + i),
                             worst=-sign * np.inf) for i, value in enumerate(values)]
            for (_, _, extra, why, _), (rescored, variant), score in zip(chunk, variants,
                                                                          scores):
                trial = Trial(calibrator=rescored.method_name,
                              granularity=variant.granularity.value, exclude=tuple(extra),
                              score=score, within=sign * (fp32 - score) <= tolerance, why=why,
                              weight_rounding=variant.config.weight_rounding.value)
                _log.info("tune trial %d: %s %s fp32=%s -> %.6g (%s)", len(trials) + 1,
                          trial.calibrator, trial.granularity, list(extra), score,
                          "within tolerance" if trial.within else "not within tolerance")
                trials.append(trial)
                built[id(trial)] = variant
                # Only the best so far (and one within tolerance) can be chosen or guide
                # the next step: the others' int8 graphs and buffers are let go.
                keep = {id(max(trials, key=lambda t: sign * t.score))}
                if trial.within:
                    keep.add(id(trial))
                for key in [k for k in built if k not in keep]:
                    del built[key]
                if trial.within:
                    return StopReason.TOLERANCE_MET
        return None

    def finish(reason):
        chosen = next((t for t in trials if t.within), None) \
            or max(trials, key=lambda t: sign * t.score)
        result = TuneResult(fp32_score=fp32, tolerance=float(tolerance), trials=tuple(trials),
                            chosen=chosen, stopped=reason)
        _log.info("%s", result)
        release_calibration_memory(base.calibration)     # its variants' shared samples
        return built[id(chosen)], result

    # 1. the defaults, then each other calibrator (independent: one round).
    plan = [(first, base.granularity, (), "defaults", None)]
    plan += [(name, base.granularity, (), "calibrator %r on the same statistics" % name, None)
             for name in _CALIBRATOR_ORDER if CALIBRATORS[name] is not type(first)]
    stop = run(plan)
    if stop is not None:
        return finish(stop)
    # 2. the other granularity, with the best calibrator so far.
    best = max(trials, key=lambda t: sign * t.score)
    best_cal = best.calibrator if best.calibrator in CALIBRATORS else first
    other = _other_granularity(base)
    if other is not None:
        stop = run([(best_cal, other, (), "weights per %s" % other.value, None)])
        if stop is not None:
            return finish(stop)
        if sign * trials[-1].score > sign * best.score:
            best = trials[-1]
    # 3. AdaRound weight rounding, with the best so far, where the backend has it.
    if best.weight_rounding == WeightRounding.NEAREST.value and not get_spec(
            base.backend.value).refusal("weight_rounding", WeightRounding.ADAROUND.value):
        cal = best.calibrator if best.calibrator in CALIBRATORS else first
        stop = run([(cal, best.granularity, (), "AdaRound weight rounding",
                     WeightRounding.ADAROUND.value)])
        if stop is not None:
            return finish(stop)
        if sign * trials[-1].score > sign * best.score:
            best = trials[-1]
    # 4. keep the most sensitive layers in fp32, one more per trial (known in advance).
    ranking = _fallback_order(built[id(best)], batches[:doctor_batches], max_candidates)
    cal = best.calibrator if best.calibrator in CALIBRATORS else first
    stop = run([(cal, best.granularity, tuple(e.node for e in ranking[:i + 1]),
                 "keep %s in fp32" % (e.node if e.layer in ("", e.node)
                                      else "%s (%s)" % (e.layer, e.node)),
                 best.weight_rounding) for i, e in enumerate(ranking)])
    if stop is not None:
        return finish(stop)
    return finish(StopReason.NO_CANDIDATES if len(trials) < max_trials else StopReason.BUDGET)


def _evaluate(eval_fn, model):
    """One trial's ``eval_fn`` value, read by :func:`_score` where the search runs (in a
    Ray task, ``model`` arrives as a PortableModel)."""
    if isinstance(model, PortableModel):
        model = model.build()
    return eval_fn(model)


def _score(value, what, worst=None):
    """``eval_fn``'s value as a float: a number, a one-element NDArray or NumPy array, or
    the ``(name, value)`` pair of an MXNet ``EvalMetric.get()``; :class:`ConfigError`
    naming ``what`` returned anything else. NaN or infinity is an error for the fp32
    network (no score is within the tolerance of it); a candidate's NaN (an int8 net gone
    wrong) scores ``worst``."""
    shown = value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = value[1]            # metric.get(): ('accuracy', 0.93)
    value = value.asnumpy() if hasattr(value, "asnumpy") else value
    number = None
    if not isinstance(value, (str, bytes)) and np.size(value) == 1:
        try:
            number = float(np.asarray(value).reshape(-1)[0])
        except (TypeError, ValueError):
            number = None
    if number is not None and np.isnan(number) and worst is not None:
        return worst
    if number is None or (worst is None and not np.isfinite(number)):
        raise ConfigError(
            "%s returned %s: eval_fn must return one finite number, the score the tolerance "
            "is measured on (a float, a one-element NDArray such as (pred == label).mean(), "
            "or metric.get()'s (name, value) pair)." % (what, _shown(shown)))
    return number


def _shown(value):
    text = repr(value)
    return "%s %s" % (type(value).__name__, text if len(text) <= 80 else text[:77] + "...")


def _eval_setup(eval_fn):
    return eval_fn


_EVALUATE = Task(setup=_eval_setup, run=_evaluate, label="trial",
                 shared_label="eval_fn (with everything it refers to: a function or closure "
                              "over numpy arrays or NDArrays, loading anything else, such as "
                              "Gluon blocks or transformed datasets, inside the function)")


def _with_base_meta(table, base_table):
    """``table`` (re-scored ranges) with the base calibration's fingerprint and its meta:
    the cross-layer equalization (the ranges were collected on the equalized network),
    the weights it was measured with, and the inputs and their shapes (the int8 regions
    depend on them: without them, the tuned model's table rebuilt another graph)."""
    return CalibrationTable(dict(table.items()), method=table.method,
                            fingerprint=base_table.fingerprint,
                            meta=dict(base_table.meta, **table.meta))


def _rescore(collector, calibrator):
    if isinstance(calibrator, str):
        return collector.rescore(CALIBRATORS[calibrator])
    if isinstance(calibrator, type):
        return collector.rescore(calibrator)
    # A user's instance: its own options, fed the collected statistics.
    return collector.rescore(type(calibrator), **calibrator.options())


def _other_granularity(block):
    """The backend's other weight granularity, or None where it has only one."""
    others = [g for g in get_spec(block.backend.value).granularities
              if g != block.granularity.value]
    return Granularity(others[0]) if others else None


def _fallback_order(qnet, batches, max_candidates):
    """Layers (:class:`~gluon_quant.debug.LayerSensitivity`) in the order to keep them in
    fp32: sensitivity gain among the worst layers."""
    try:
        worst = [r.node for r in compare(qnet, batches, num_batches=len(batches))
                 .by_added_error() if r.quantized][:max_candidates]
        ranked = sensitivity(qnet, batches, num_batches=len(batches), candidates=worst)
    except GluonQuantError as err:
        _log.warning("The doctor could not rank layers (%s); no layer falls back to fp32.", err)
        return []
    return list(ranked)


def _check_settings(eval_fn, tolerance, max_trials, max_candidates, doctor_batches):
    """The numeric settings as Python numbers (NumPy's are taken), or ConfigError."""
    if not callable(eval_fn):
        raise ConfigError("eval_fn must be callable as eval_fn(model) -> float, got %r."
                          % (eval_fn,))
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) \
            or not tolerance >= 0:
        raise ConfigError("tolerance must be a number >= 0 (the allowed loss of eval_fn "
                          "against fp32), got %r." % (tolerance,))
    for name, value in (("max_trials", max_trials), ("max_candidates", max_candidates),
                        ("doctor_batches", doctor_batches)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError("%s must be a positive int, got %r." % (name, value))
    return float(tolerance), int(max_trials), int(max_candidates), int(doctor_batches)
