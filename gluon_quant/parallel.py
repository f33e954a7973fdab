"""Calibration on shards of data, on Ray or worker processes, merged exactly.

:func:`calibrate_parallel` describes one shard's calibration pass as a task
(:class:`~gluon_quant.engines.base.Task`): the shared job is the fused fp32 graph, its
parameters and an empty calibrator's state; each shard runs the same calibration pass as
:meth:`QuantizedHybridBlock.calibrate` and returns the calibrator's ``state_dict()``
(JSON-safe statistics).  An engine (:mod:`gluon_quant.engines`) runs the shards: Ray
tasks (a local Ray or a cluster; the job travels once through Ray's object store), or
worker processes on this machine when Ray is not installed.  The states are merged in
shard order: the statistics merge exactly (see :mod:`gluon_quant.calib.statistics`), so
the thresholds equal those of one pass over all the shards, bit for bit, on any engine.

Example::

    shards = [batches[0::2], batches[1::2]]          # picklable iterables of batches
    table = gluon_quant.calibrate_parallel(net, shards, calibrator="entropy")
    table = gluon_quant.calibrate_parallel(net, shards, engine="ray", address="auto")
    qnet = gluon_quant.quantize(net, shards[0], calib_table=table)   # + bias corrections
"""
import importlib
import logging
import pickle
from dataclasses import dataclass
from typing import Callable, List, Optional

import mxnet as mx
import numpy as np

from . import errors, pipeline, watch
from .block import QuantizedHybridBlock
from .calib import CalibrationTable, Calibrator, get_calibrator
from .collect import build_runner, collect_statistics
from .data import BatchConverter, InputSpec, describe, iter_batches, keep_batches, peek
from .engines import Task, get_engine
from .engines.base import pickling_failure
from .errors import ConfigError, EmptyCalibrationError

__all__ = ["calibrate_parallel"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """What a shard needs to run the calibration pass (picklable, no MXNet objects)."""

    symbol_json: str
    params: dict            # name -> numpy array
    input_names: List[str]
    arg_names: List[str]
    tensor_names: List[str]
    calibrator_state: dict  # an empty calibrator's state_dict()
    calibrator_module: str
    input_fn: Optional[Callable]
    input_layout: Optional[list] = None     # nesting of list arguments (InputSpec.layout)
    input_nullable: tuple = ()              # arguments a dict batch may leave out (None)
    watched: tuple = ()                     # inputs whose ranges are kept (gluon_quant.watch)


def calibrate_parallel(net, shards, *, engine=None, address=None, workers=None,
                       calibrator=None, progress=True, start_method="spawn", config=None,
                       **settings):
    """Calibrate on shards of data in parallel (Ray tasks or processes); one merged table.

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
    engine : {'ray', 'process'}, optional
        ``'ray'``: one Ray task per shard.  ``'process'``: worker processes on this
        machine.  Default (``None`` or ``'auto'``): Ray when it is installed
        (``pip install "gluon_quant[ray]"``), else processes.
    address : str, optional
        Ray only.  ``None``: start a local Ray sized to this machine and shut it down at
        the end (or use the Ray this process is already connected to, and leave it).
        ``'auto'`` or ``'HOST:PORT'``: use that running cluster (never shut down).
    workers : int, optional
        ``'process'``: worker processes (default: one per CPU, at most one per shard).
        ``'ray'``: most tasks running at once (default: all; Ray schedules them on free
        CPUs).  Each task's MXNet uses one thread per CPU Ray gives it (one).
    calibrator : str, Calibrator subclass or instance, optional
        Default: that of ``net`` when it is a ``QuantizedHybridBlock``, else ``'mse'``.
        Only its class and options are used; an instance's collected statistics are not.
        A user-defined class must be importable by the workers (defined in a module, not
        in ``__main__`` of an interactive session).
    progress : bool, default True
        Progress bar over the shards (shown on terminals only).
    start_method : {'spawn', 'forkserver', 'fork'}, default 'spawn'
        How worker processes start (``'process'`` only; see
        :mod:`gluon_quant.engines.process`).
    config : QuantConfig, optional
    **settings
        For a plain net, the settings of :func:`gluon_quant.quantize` (``exclude=``,
        ``dtype=``, ``num_inputs=``...) that decide which tensors are calibrated; the
        table records them for ``quantize(net, batches, calib_table=table)``. A
        ``QuantizedHybridBlock`` has its own (``qnet.clone(**settings)`` for others).

    Returns
    -------
    CalibrationTable
        The same ranges as ``QuantizedHybridBlock.calibrate`` over all the shards' batches,
        tied to the network's graph and weights: use it with
        ``quantize(net, batches, calib_table=table)``, where the first 32 samples of
        ``batches`` measure the bias corrections one pass would (with the table alone
        they are left out).

    Raises
    ------
    EmptyCalibrationError
        If every shard is empty.
    ConfigError
        If ``engine``, ``address``, ``workers``, ``shards``, ``start_method`` or a
        setting are invalid, settings are given with a ``QuantizedHybridBlock``, Ray is
        asked for and not installed, or its cluster cannot be reached.
    GluonQuantError
        Raised again from a shard (same class, the message names the shard), or
        ModelExecutionError for MXNet's errors and workers that died.
    """
    if isinstance(shards, (str, bytes)) or not hasattr(shards, "__len__"):
        raise ConfigError("shards must be a list of calibration iterables (one per shard), "
                          "got %s." % type(shards).__name__)
    shards = list(shards)
    if not shards:
        raise EmptyCalibrationError("shards is empty: pass at least one shard of batches.")
    for number, shard in enumerate(shards):
        if isinstance(shard, (np.ndarray, mx.nd.NDArray)):    # what a list of batches gives
            raise errors.CalibrationDataError(
                "shard %d is a single %s: each shard is an iterable of batches. Wrap it in a "
                "list ([x]); to spread a list of batches over the workers, split it: "
                "shards=[batches[0::2], batches[1::2]]." % (number, describe(shard)))
        if hasattr(shard, "__next__"):     # a generator or iterator: it cannot be pickled
            raise ConfigError(
                "shard %d is %s, an iterator: shards are sent to other processes, which "
                "an iterator cannot be. Pass each shard as a list of batches (or another "
                "object that can be pickled and iterated, such as a DataLoader)."
                % (number, type(shard).__name__))
    shards = [_sendable(shard, number) for number, shard in enumerate(shards)]
    if isinstance(net, QuantizedHybridBlock) and (config is not None or settings):
        raise ConfigError(
            "calibrate_parallel(qnet, ...) calibrates with qnet's own settings; got %s as "
            "well. Pass qnet.clone(%s) instead, or the fp32 net with the settings."
            % ("config=" if config is not None else ", ".join(sorted(settings)),
               ", ".join("%s=..." % k for k in sorted(settings)) or "config=..."))
    qnet = (net if isinstance(net, QuantizedHybridBlock)
            else QuantizedHybridBlock(net, config, **settings))
    # Settings are checked before any work (and before a Ray starts).
    with get_engine(engine, address=address, workers=workers, start_method=start_method,
                    allowed=("auto", "ray", "process")) as runner:
        template = get_calibrator(calibrator if calibrator is not None else qnet.calibrator)
        if qnet.fused is None:      # the first batch says which inputs it feeds, how nested
            qnet.fuse(_first_batch(shards))
        names = qnet.quantize_graph() if qnet.plan is None else list(qnet.plan.calib_names)
        job, params = _make_job(qnet, names, template, shards)
        states = runner.map(_CALIBRATE, job, shards, progress=progress,
                            desc="calibrating (%s)" % runner.name)
    merged, seen = None, watch.InputRanges(job.watched)
    for state in states:
        if state is None:
            continue
        seen.merge(state["input_ranges"])
        shard_calibrator = Calibrator.from_state_dict(state["calibrator"])
        if merged is None:
            merged = shard_calibrator
        else:
            merged.merge(shard_calibrator)
    if merged is None:
        raise EmptyCalibrationError(
            "Every shard was empty: pass shards that yield at least one batch.")
    table = merged.compute() if names else CalibrationTable({}, method=merged.method_name)
    # The graph's inputs and their shapes, as one pass keeps them: gq.quantize(net,
    # calib_table=table) then plans the same graph (its int8 regions depend on the shapes).
    table = CalibrationTable(dict(table.items()), method=table.method,
                             fingerprint=qnet.fingerprint,
                             meta=dict(table.meta, **qnet.fused.inputs.table_meta(
                                 qnet.fused.input_shapes),
                                       **({watch.META_KEY: seen.ranges} if seen.ranges else {})))
    return pipeline.with_settings(pipeline.with_equalization(table, params), qnet.config)


def _make_job(qnet, names, template, shards):
    first = _first_batch(shards)
    inputs = qnet.convert_batch(first) if first is not None else None
    try:
        params = pipeline.fp32_params(qnet.net, qnet.fused, qnet.ctx, inputs)
    except errors.GraphError as err:
        raise errors.GraphError("%s (calibrate_parallel initializes deferred parameters "
                                "from the first batch of the first shard)." % err) from err
    if qnet.config.equalization:
        params = pipeline.equalized_params(qnet.fused, params)
    fresh = Calibrator.from_state_dict({**template.state_dict(), "tensors": []})
    spec = qnet.fused.inputs
    needed = set(qnet.fused_graph.list_arguments()) | set(
        qnet.fused_graph.list_auxiliary_states())
    return _Job(symbol_json=qnet.fused_graph.tojson(),
                params={k: v.asnumpy() for k, v in params.items() if k in needed},
                input_names=list(spec.names), arg_names=list(spec.arg_names),
                input_layout=spec.layout, input_nullable=tuple(spec.nullable),
                watched=tuple(watch.watched_inputs(qnet.fused.view, spec.names)
                              if names else ()),
                tensor_names=list(names), calibrator_state=fresh.state_dict(),
                calibrator_module=type(fresh).__module__, input_fn=qnet.config.input_fn), params


def _sendable(shard, number):
    """``shard``, or its batches read here when it cannot be pickled to go to a worker.

    Lists and tuples are sent as they are (an unpicklable batch in them is refused by the
    engine, naming the shard). Other iterables are pickled once to find out: a
    ``DataLoader`` over transforms (Gluon blocks) or with worker processes of its own (a
    pool) cannot be, and is read in this process instead, with a warning: its batches
    then travel as arrays, which for big data costs what loading on the workers saves.
    """
    if isinstance(shard, (list, tuple, np.ndarray, mx.nd.NDArray, str, bytes)):
        return shard
    try:
        pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL)
        return shard
    except Exception as err:  # pylint: disable=broad-except
        reason = pickling_failure(err)
    batches = keep_batches(shard, who="calibrate_parallel()")
    _log.warning("Shard %d (%s) cannot be pickled (%s): its %d batches are read in this "
                 "process and sent to the workers as arrays. For big data, pass shards "
                 "that load their own data on the workers (see docs/ray.md).",
                 number, type(shard).__name__, reason, len(batches))
    return batches


def _first_batch(shards):
    """The first batch of the first non-empty shard: of a list, or of any re-iterable
    data such as a ``DataLoader`` (iterators are refused before; arrays are left alone)."""
    for shard in shards:
        if isinstance(shard, (list, tuple)):
            if shard:
                return shard[0]
        elif not isinstance(shard, (np.ndarray, mx.nd.NDArray, str, bytes)):
            first = peek(shard)[0]
            if first is not None:
                return first
    return None


def _setup(job):
    """In the worker: the graph, its parameters and a lazily bound runner."""
    import mxnet as mx  # pylint: disable=import-outside-toplevel
    importlib.import_module(job.calibrator_module)
    ctx = mx.cpu()
    fused = mx.sym.load_json(job.symbol_json)
    params = {k: mx.nd.array(v, dtype=v.dtype) for k, v in job.params.items()}
    converter = BatchConverter(InputSpec(job.input_names, job.arg_names, layout=job.input_layout,
                                         nullable=job.input_nullable), ctx, job.input_fn)
    outputs = [n for n in job.tensor_names if n not in set(job.input_names)]
    runner = []

    def make_runner(_inputs):
        if not runner:
            runner.append(build_runner(fused, outputs, job.input_names, params, ctx))
        return runner[0]
    return job, converter, make_runner


def _calibrate_shard(state, shard):
    """One shard's statistics as a calibrator state, or None for an empty shard."""
    job, converter, make_runner = state
    calibrator = Calibrator.from_state_dict(job.calibrator_state)
    seen = watch.InputRanges(job.watched)

    def convert(batch):
        inputs = converter(batch)
        seen.see(dict(zip(job.input_names, inputs)))
        return inputs
    try:
        collect_statistics(iter_batches(shard), convert=convert, make_runner=make_runner,
                           calibrator=calibrator, input_names=job.input_names,
                           tensor_names=job.tensor_names, progress=False)
    except EmptyCalibrationError:
        return None
    return {"calibrator": calibrator.state_dict(), "input_ranges": seen.ranges}


_CALIBRATE = Task(setup=_setup, run=_calibrate_shard, label="shard",
                  shared_label="The calibration job (the fused graph, its parameters and "
                               "input_fn, which must be a module-level function or a "
                               "picklable closure)")
