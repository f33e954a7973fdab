"""Calibration on shards of data in worker processes, merged exactly.

:func:`calibrate_parallel` sends the fused fp32 graph, its parameters and an empty
calibrator to worker processes; each worker runs the same calibration pass as
:meth:`QuantizedHybridBlock.calibrate` over its shards and sends back the calibrator's
``state_dict()`` (JSON-safe statistics).  The parent merges the states in shard order:
the statistics merge exactly (see :mod:`gluon_quant.calib.statistics`), so the thresholds
equal those of one pass over all the shards, bit for bit.

Workers start with ``'spawn'`` by default: a fresh interpreter that imports MXNet itself,
which is safe everywhere but costs a few seconds per worker (measured: 6-8 s for two
workers on a loaded 2-core machine).  ``'fork'`` copies the parent: with MXNet 1.9.1's
oneDNN build it worked here even after the parent had run the network (MXNet stops and
restarts its engine around ``fork``) and started in 0.3 s, with thresholds identical to
one pass; but forking a process whose OpenMP or other native threads are running can hang
the child with other builds, so it is an explicit choice, not the default.

Example::

    shards = [batches[0::2], batches[1::2]]          # picklable iterables of batches
    table = gluon_quant.calibrate_parallel(net, shards, workers=2, calibrator="entropy")
    qnet = gluon_quant.quantize(net, calib_table=table)

With ``spawn``, code that calls this must be importable without side effects (put the
call under ``if __name__ == "__main__":`` in scripts), as for any multiprocessing.
"""
import importlib
import logging
import multiprocessing
import queue as queue_module
from dataclasses import dataclass
from typing import Callable, List, Optional

from . import errors, pipeline
from .block import QuantizedHybridBlock
from .calib import CalibrationTable, Calibrator, get_calibrator
from .collect import build_runner, collect_statistics
from .data import BatchConverter, InputSpec, iter_batches
from .errors import ConfigError, EmptyCalibrationError, GluonQuantError, ModelExecutionError
from .progress import progress_bar

__all__ = ["calibrate_parallel"]

_log = logging.getLogger(__name__)

_START_METHODS = ("spawn", "forkserver", "fork")
#: Seconds between checks that the workers are still alive while waiting for messages.
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class _Job:
    """What a worker needs to run the calibration pass (picklable, no MXNet objects)."""

    symbol_json: str
    params: dict            # name -> numpy array
    input_names: List[str]
    arg_names: List[str]
    tensor_names: List[str]
    calibrator_state: dict  # an empty calibrator's state_dict()
    calibrator_module: str
    input_fn: Optional[Callable]


def calibrate_parallel(net, shards, *, workers=2, calibrator=None, progress=True,
                       start_method="spawn"):
    """Calibrate on shards of data in worker processes; merge into one table.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock or QuantizedHybridBlock
        The fp32 network (initialized), or a ``QuantizedHybridBlock`` whose settings
        (``dtype``, ``exclude``, ``backend``, ``input_fn``...) decide which tensors are
        calibrated.  A plain net is wrapped with the default settings.
    shards : sequence of iterables of batches
        Each shard is any calibration data (see :mod:`gluon_quant.data`) that can be
        pickled: lists of numpy arrays or NDArrays, tuples of them...  Empty shards are
        skipped.  The result does not depend on how batches are split into shards.
    workers : int, default 2
        Number of worker processes (at most one per shard).  Each worker's MXNet uses its
        own threads: on a machine with few cores, more workers than cores only adds
        contention.
    calibrator : str, Calibrator subclass or instance, optional
        Default: that of ``net`` when it is a ``QuantizedHybridBlock``, else ``'mse'``.
        Only its class and options are used; an instance's collected statistics are not.
        A user-defined class must be importable by the workers (defined in a module, not
        in ``__main__`` of an interactive session).
    progress : bool, default True
        Progress bar over all shards' batches, with an ETA when their lengths are known
        (shown on terminals only).
    start_method : {'spawn', 'forkserver', 'fork'}, default 'spawn'
        How worker processes start (see the module docstring).

    Returns
    -------
    CalibrationTable
        The same ranges as ``QuantizedHybridBlock.calibrate`` over all the shards' batches,
        tied to the network's graph: use it with ``quantize(net, calib_table=table)`` or
        ``qnet.finalize(table)``.

    Raises
    ------
    EmptyCalibrationError
        If every shard is empty.
    ConfigError
        If ``workers``, ``shards`` or ``start_method`` are invalid.
    GluonQuantError
        Re-raised from a worker (same class and message), or ModelExecutionError if a
        worker died.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers must be a positive int, got %r." % (workers,))
    if start_method not in _START_METHODS:
        raise ConfigError("start_method must be one of %s, got %r."
                          % (", ".join(repr(m) for m in _START_METHODS), start_method))
    if isinstance(shards, (str, bytes)) or not hasattr(shards, "__len__"):
        raise ConfigError("shards must be a list of calibration iterables (one per shard), "
                          "got %s." % type(shards).__name__)
    shards = list(shards)
    if not shards:
        raise EmptyCalibrationError("shards is empty: pass at least one shard of batches.")
    qnet = net if isinstance(net, QuantizedHybridBlock) else QuantizedHybridBlock(net)
    template = get_calibrator(calibrator if calibrator is not None else qnet.calibrator)
    names = qnet.quantize_graph() if qnet.plan is None else list(qnet.plan.calib_names)
    job, params = _make_job(qnet, names, template, shards)
    states = _run_workers(job, shards, min(workers, len(shards)), progress, start_method)
    merged = None
    for state in states:
        if state is None:
            continue
        shard_calibrator = Calibrator.from_state_dict(state)
        if merged is None:
            merged = shard_calibrator
        else:
            merged.merge(shard_calibrator)
    if merged is None:
        raise EmptyCalibrationError(
            "Every shard was empty: pass shards that yield at least one batch.")
    table = merged.compute() if names else CalibrationTable({}, method=merged.method_name)
    return pipeline.with_equalization(table.with_fingerprint(qnet.fingerprint), params)


def _make_job(qnet, names, template, shards):
    first = _first_batch(shards)
    inputs = qnet.convert_batch(first) if first is not None else None
    try:
        params = pipeline.fp32_params(qnet.net, qnet.fused, qnet.ctx, inputs)
    except errors.GraphError as err:
        raise errors.GraphError("%s (calibrate_parallel initializes deferred parameters "
                                "from the first batch of a list shard)." % err) from err
    if qnet.config.equalization:
        params = pipeline.equalized_params(qnet.fused, params)
    fresh = Calibrator.from_state_dict({**template.state_dict(), "tensors": []})
    spec = qnet.fused.inputs
    needed = set(qnet.fused_graph.list_arguments()) | set(
        qnet.fused_graph.list_auxiliary_states())
    return _Job(symbol_json=qnet.fused_graph.tojson(),
                params={k: v.asnumpy() for k, v in params.items() if k in needed},
                input_names=list(spec.names), arg_names=list(spec.arg_names),
                tensor_names=list(names), calibrator_state=fresh.state_dict(),
                calibrator_module=type(fresh).__module__, input_fn=qnet.config.input_fn), params


def _first_batch(shards):
    for shard in shards:
        if isinstance(shard, (list, tuple)) and shard:
            return shard[0]
    return None


def _run_workers(job, shards, count, progress, start_method):
    context = multiprocessing.get_context(start_method)
    messages = context.Queue()
    assignment = [[(i, shard) for i, shard in enumerate(shards) if i % count == w]
                  for w in range(count)]
    procs = [context.Process(target=_worker, args=(job, items, messages), daemon=True)
             for items in assignment]
    for proc in procs:
        proc.start()
    states = [None] * len(shards)
    pending = set(range(len(shards)))
    bar = progress_bar(_ticks(), enabled=progress, desc="calibrating (%d workers)" % count,
                       total=_total(shards))
    ticks = iter(bar)
    try:
        while pending:
            try:
                message = messages.get(timeout=_POLL_SECONDS)
            except queue_module.Empty:
                _check_alive(procs, pending)
                continue
            kind, index = message[0], message[1]
            if kind == "batch":
                next(ticks)
            elif kind == "done":
                states[index] = message[2]
                pending.discard(index)
            elif kind == "empty":
                pending.discard(index)
            else:  # "error"
                raise _rebuild_error(index, message[2], message[3])
    finally:
        if hasattr(bar, "close"):
            bar.close()
        for proc in procs:
            if proc.is_alive() and pending:
                proc.terminate()
            proc.join()
    return states


def _ticks():
    while True:
        yield None


def _total(shards):
    try:
        return sum(len(shard) for shard in shards)
    except TypeError:
        return None


def _check_alive(procs, pending):
    dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
    if dead:
        raise ModelExecutionError(
            "A calibration worker died (exit code %s) before finishing shards %s. Check that "
            "the machine has memory for %d copies of the network, or use start_method="
            "'spawn'." % (dead[0].exitcode, sorted(pending), len(procs)))


def _rebuild_error(index, class_name, message):
    """The worker's exception as the same package error class (never unpickled)."""
    cls = getattr(errors, class_name, None)
    text = "Calibration worker, shard %d: %s" % (index, message)
    if isinstance(cls, type) and issubclass(cls, GluonQuantError):
        return cls(text)
    return ModelExecutionError("%s (%s)" % (text, class_name))


def _worker(job, items, messages):
    """Worker process: calibrate each assigned shard, send back its state."""
    try:
        import mxnet as mx  # pylint: disable=import-outside-toplevel
        importlib.import_module(job.calibrator_module)
        ctx = mx.cpu()
        fused = mx.sym.load_json(job.symbol_json)
        params = {k: mx.nd.array(v, dtype=v.dtype) for k, v in job.params.items()}
        converter = BatchConverter(InputSpec(job.input_names, job.arg_names), ctx,
                                   job.input_fn)
        outputs = [n for n in job.tensor_names if n not in set(job.input_names)]
        runner = []

        def make_runner(_inputs):
            if not runner:
                runner.append(build_runner(fused, outputs, job.input_names, params, ctx))
            return runner[0]

    except Exception as err:  # pylint: disable=broad-except
        for index, _ in items:
            messages.put(("error", index, type(err).__name__, str(err)))
        return
    for index, shard in items:
        calibrator = Calibrator.from_state_dict(job.calibrator_state)
        try:
            collect_statistics(_announce(iter_batches(shard), messages, index),
                               convert=converter, make_runner=make_runner,
                               calibrator=calibrator, input_names=job.input_names,
                               tensor_names=job.tensor_names, progress=False)
        except EmptyCalibrationError:
            messages.put(("empty", index))
            continue
        except Exception as err:  # pylint: disable=broad-except
            messages.put(("error", index, type(err).__name__, str(err)))
            return
        messages.put(("done", index, calibrator.state_dict()))


def _announce(batches, messages, index):
    for batch in batches:
        yield batch
        messages.put(("batch", index))
