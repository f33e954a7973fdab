"""The safety net: a model that quantizes is a model that runs.

MXNet 1.9.1's int8 kernels can fail at run time on graphs its quantization pass accepted
(layouts it does not reorder, shapes a kernel does not take, memory reused across calls).
The graph passes guard every such failure found so far (:mod:`gluon_quant.graph.guards`);
this module catches the ones not found yet. After building, the int8 graph runs on a few
calibration samples (twice: static-memory failures show from the second call). If MXNet
raises, the failing layer is kept fp32 and the graph rebuilt:

1. the layer is read off the error message when MXNet names a node of the graph;
2. otherwise it is found by bisection over the int8 layers (each step builds and runs the
   graph with half of the remaining candidates in fp32, bias correction off).

At most :data:`MAX_FALLBACKS` layers are sent back this way, each logged with MXNet's
message and shown in ``report()``. When no int8 layer is to blame but the graph runs
without static memory, it is marked to run that way (``_mxnet.without_static_memory``:
the mark travels with the graph into exports). A process crash (a segfault inside a kernel) cannot be
caught here: those are what the guards are for.
"""
import dataclasses
import logging

import numpy as np

from . import _mxnet, bias
from ._stage import stage
from .backends import get_spec
from .calib import CalibrationTable
from .collect import build_runner
from .errors import CalibrationTableError, GluonQuantError, ModelExecutionError
from .pipeline import build, check_table, plan_quantization

__all__ = ["build_runnable", "MAX_FALLBACKS", "FIRST_RUN_SAMPLES"]

_log = logging.getLogger(__name__)

#: Layers the first run may send back to fp32 before giving up.
MAX_FALLBACKS = 3

#: Samples the first run uses: it checks that the graph runs (its outputs are not used),
#: and on 8 samples it took 0.24 s of resnet18_v1's 1.4 s ``finalize()``.
FIRST_RUN_SAMPLES = 2


@stage
def build_runnable(plan, params, table, *, config, samples=None):
    """:func:`~gluon_quant.pipeline.build`, then run the result once; see the module doc.

    Parameters
    ----------
    plan : QuantPlan
    params : dict of str to NDArray
        fp32 parameters.
    table : CalibrationTable
        Checked ranges.
    config : QuantConfig
    samples : tuple of NDArray, optional
        Calibration samples (one array per input). Without them nothing is run.

    Returns
    -------
    BuiltModel
        Its ``plan`` lists the layers sent back to fp32, with MXNet's reason.

    Raises
    ------
    ModelExecutionError
        The graph still fails after :data:`MAX_FALLBACKS` layers went back to fp32, or the
        failure cannot be pinned on a layer; the message has MXNet's own words.
    """
    model = build(plan, params, table, config=config, bias_inputs=samples)
    if samples is None:
        return model
    batch = samples[0].shape[0] if samples[0].ndim else None
    # an input without the batch axis (indices the batch shares) is passed whole
    inputs = [s[:FIRST_RUN_SAMPLES] if s.ndim and s.shape[0] == batch else s for s in samples]
    if not _mxnet.accepts_shapes(plan.fused.symbol, dict(zip(plan.fused.inputs.names,
                                                             (a.shape for a in inputs)))):
        inputs = list(samples)      # the graph takes only its calibration batch size
    ctx = inputs[0].context
    for attempt in range(MAX_FALLBACKS + 1):
        error = _first_run(model, inputs, config)
        if error is None:
            return model
        culprits = _named_layers(model, error) or _bisect(model.plan, params, model.table,
                                                           config, inputs)
        if not culprits and _first_run(model, inputs, config, static=False) is None:
            _log.warning("MXNet fails to run the int8 graph with static memory (%s), and no "
                         "int8 layer is to blame; it runs without static memory (slower per "
                         "call).", _mxnet.first_line(error))
            symbol = _mxnet.without_static_memory(model.symbol)
            return dataclasses.replace(model, symbol=symbol, block=_mxnet.symbol_block(
                symbol, model.plan.fused.inputs.names, model.params, ctx, trainable=False))
        if not culprits or attempt == MAX_FALLBACKS:
            raise ModelExecutionError(
                "The int8 graph fails inside MXNet when it runs%s: %s. This is an MXNet "
                "kernel failure, not a problem with your data; keep the layer named in the "
                "message in fp32 with exclude=[...] and please report the network."
                % (" (after keeping %s in fp32)" % sorted(set(model.plan.fp32_nodes)
                                                         - set(plan.fp32_nodes))
                   if attempt else "", _mxnet.first_line(error)))
        reason = "its int8 kernel failed at the first run: %s" % _mxnet.first_line(error)
        _log.warning("int8 %s failed at the first run (%s); kept fp32, rebuilding.",
                     ", ".join(sorted(culprits)), _mxnet.first_line(error))
        new_plan = plan_quantization(model.plan.fused, config, fp32_nodes={
            **dict.fromkeys(culprits, reason), **model.plan.fp32_nodes})
        new_table = _complete(new_plan, params, model.table, inputs, ctx)
        model = build(new_plan, params, new_table, config=config, bias_inputs=samples)
    return model


def _first_run(model, inputs, config, static=True):
    """Run a copy of the int8 graph twice (with static memory where the backend and the
    graph use it, and ``static``); the MXNet error, or None when it runs."""
    spec = get_spec(config.backend.value)
    if spec.device_type != "cpu" or inputs[0].context.device_type != spec.device_type:
        return None         # the graph is for another device than this one
    try:    # symbol_block copies the parameters: the model's own are not touched
        block = _mxnet.symbol_block(model.symbol, model.plan.fused.inputs.names, model.params,
                                    inputs[0].context, trainable=False)
        if spec.static_alloc and static:
            block.hybridize(**_mxnet.static_flags(model.symbol))
        for _ in range(2):
            _mxnet.run_block(block, inputs, "int8 first run")
    except ModelExecutionError as err:
        return err.__cause__ or err
    except GluonQuantError:
        raise
    except _mxnet.MXNetError as err:
        return err
    return None


def _fused_name(name, fused_names):
    """The fused-graph node a final-graph node stands for (None if none)."""
    for prefix in ("quantized_", "requantize_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    for suffix in ("_dequantize", "_quantize"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    while name not in fused_names and "_output" in name:
        name = name.rsplit("_output", 1)[0]
    return name if name in fused_names else None


def _named_layers(model, error):
    """int8 layers of the fused graph that MXNet's error message names (directly, or as
    the consumers of a quantize node it names)."""
    text = str(error)
    fused_names = {n.name for n in model.plan.fused.view}
    int8 = set(bias.quantized_nodes(model.plan.fused.view, model.symbol))
    graph = _mxnet.graph_json(model.symbol)
    nodes = graph["nodes"]
    found = set()
    for index, node in sorted(enumerate(nodes), key=lambda item: -len(item[1]["name"])):
        if node["op"] == "null" or node["name"] not in text:
            continue
        if node["op"] == "_contrib_quantize_v2":
            readers = [n["name"] for n in nodes if any(e[0] == index for e in n["inputs"])]
        else:
            readers = [node["name"]]
        found.update(f for f in (_fused_name(r, fused_names) for r in readers) if f in int8)
        if found:
            break
    return found


def _bisect(plan, params, table, config, inputs):
    """The one int8 layer whose fp32 fallback lets the graph run, by bisection (or set())."""
    quick = config.replace(bias_correction=False, weight_rounding="nearest")
    candidates = bias.quantized_nodes(plan.fused.view, build(plan, params, table,
                                                             config=quick).symbol)

    def runs_without(nodes):
        trial = plan_quantization(plan.fused, quick, fp32_nodes={
            **dict.fromkeys(nodes, "bisection"), **plan.fp32_nodes}, quiet=True)
        try:
            trial_table = _complete(trial, params, table, inputs, inputs[0].context)
            return _first_run(build(trial, params, trial_table, config=quick), inputs,
                              quick) is None
        except GluonQuantError:
            return False

    if not candidates or not runs_without(candidates):
        return set()        # not an int8 layer's failure
    while len(candidates) > 1:
        half = candidates[:len(candidates) // 2]
        candidates = half if runs_without(half) else candidates[len(candidates) // 2:]
    _log.info("Bisection over the int8 layers points at %s.", candidates[0])
    return set(candidates)


def _complete(plan, params, table, inputs, ctx):
    """``table`` with ranges for tensors the new plan needs and calibration did not see,
    measured (min/max) on the kept samples."""
    missing = [n for n in plan.calib_names if n not in table]
    if missing:
        names = plan.fused.inputs.names
        outputs = [n for n in missing if n not in names]
        runner = build_runner(plan.fused.symbol, outputs, names, params, ctx)
        values = dict(zip(outputs, [a.asnumpy() for a in runner(*inputs)]
                          if runner is not None else []))
        values.update({n: inputs[names.index(n)].asnumpy().ravel()
                       for n in missing if n in names})
        ranges = dict(table.items())
        for name in missing:
            array = np.asarray(values[name])
            ranges[name] = (float(min(array.min(), 0.0)), float(max(array.max(), 0.0)))
        _log.info("Ranges of %d tensor(s) a fallback needs come from %d kept samples: %s.",
                  len(missing), inputs[0].shape[0], missing[:5])
        table = CalibrationTable(ranges, method=table.method, fingerprint=table.fingerprint,
                                 meta={k: v for k, v in table.meta.items()
                                       if k != bias.META_KEY})
    try:
        return check_table(plan, table)
    except CalibrationTableError as err:
        raise ModelExecutionError("Could not complete the ranges for a fallback: %s" % err) \
            from err
