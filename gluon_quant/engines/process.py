"""The no-Ray fallback: a pool of worker processes on this machine (``multiprocessing``).

Each worker receives the shared object once (pickled), runs ``task.setup`` once and then
its share of the items (item ``i`` goes to worker ``i % workers``), sending each result
back through a queue.  Workers start with ``'spawn'`` by default: a fresh interpreter that
imports MXNet itself, safe everywhere but a few seconds per worker (measured: 6-8 s for two
workers on a loaded 2-core machine).  ``'fork'`` copies the parent: with MXNet 1.9.1's
oneDNN build it worked here even after the parent had run the network and started in
0.3 s, but forking a process whose OpenMP threads are running can hang the child with other
builds, so it is an explicit choice.  With ``spawn``, the calling script must be importable
without side effects (``if __name__ == "__main__":``), as for any multiprocessing.
"""
import multiprocessing
import numbers
import os
import pickle
import queue as queue_module
import sys

import mxnet as mx

from ..errors import ConfigError, ModelExecutionError
from .base import Engine, failure_of, pickling_failure, run_guarded

__all__ = ["ProcessEngine", "START_METHODS"]

START_METHODS = ("spawn", "forkserver", "fork")
#: Seconds between checks that the workers are still alive while waiting for results.
_POLL_SECONDS = 0.5


def _host(value):
    """``value`` with every NDArray in it (in lists, tuples and dicts) as a numpy array.

    Importing Gluon registers a pickling of NDArrays for worker processes that hands them
    over as shared-memory file descriptors; starting a worker with such an item failed
    here ("bad value(s) in fds_to_keep"). Numpy arrays pickle by value, and the workers
    accept them as batches like NDArrays."""
    if isinstance(value, mx.nd.NDArray):
        return value.asnumpy()
    if isinstance(value, dict):
        return {key: _host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_host(item) for item in value]
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _pickled(item, index, label):
    """``item`` pickled here, in the caller: pickled by the queue's feeder thread instead,
    an item that cannot be (a ``DataLoader`` holding its worker pool) printed a traceback
    from that thread and left the caller waiting for ever for the worker's results."""
    try:
        return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # pylint: disable=broad-except
        # Objects refuse pickling with TypeError, PicklingError, NotImplementedError...
        raise ConfigError(
            "%s %d (%s) cannot be sent to a worker process (%s). Pass picklable %ss "
            "(lists of numpy arrays or NDArrays, not locks, open files or generators)."
            % (label.capitalize(), index, type(item).__name__, pickling_failure(err),
               label)) from None


class ProcessEngine(Engine):
    """Worker processes on this machine.

    Parameters
    ----------
    workers : int, optional
        Processes to start (at most one per item); default: the machine's CPU count.
    start_method : {'spawn', 'forkserver', 'fork'}, default 'spawn'
    """

    name = "process"

    def __init__(self, workers=None, start_method="spawn"):
        if workers is not None and (isinstance(workers, bool)
                                    or not isinstance(workers, numbers.Integral) or workers < 1):
            raise ConfigError("workers must be a positive int, got %r." % (workers,))
        if start_method not in START_METHODS:
            raise ConfigError("start_method must be one of %s, got %r."
                              % (", ".join(repr(m) for m in START_METHODS), start_method))
        self.workers = workers or os.cpu_count() or 1
        self.start_method = start_method

    @property
    def slots(self):
        return self.workers

    def _run(self, task, shared, items, tick):
        items = [_pickled(_host(item), i, task.label) for i, item in enumerate(items)]
        if not items:
            return
        count = min(self.workers, len(items))
        context = multiprocessing.get_context(self.start_method)
        messages = context.Queue()
        # The job goes through a queue after the worker has started, not as the Process's
        # arguments: multiprocessing writes those into a pipe whose read end the parent
        # itself holds until the write ends, so a worker that died while starting (a
        # script without ``if __name__ == "__main__":``, imported again by 'spawn') left
        # the caller blocked for ever on a graph larger than the pipe's buffer.
        inboxes = [context.Queue() for _ in range(count)]
        procs = [context.Process(target=_worker, daemon=True, args=(inbox, messages))
                 for inbox in inboxes]
        for proc in procs:
            proc.start()
        for w, inbox in enumerate(inboxes):
            inbox.put((task, shared, [(i, item) for i, item in enumerate(items)
                                      if i % count == w]))
        pending = set(range(len(items)))
        try:
            while pending:
                try:
                    index, result = messages.get(timeout=_POLL_SECONDS)
                except queue_module.Empty:
                    index = None
                if index is None:
                    _check_alive(procs, pending, task.label, self.start_method)
                    continue
                pending.discard(index)
                tick()
                yield index, result
        finally:
            for inbox in inboxes:   # a dead worker's job must not keep this process alive
                inbox.cancel_join_thread()
                inbox.close()
            for proc in procs:
                if proc.is_alive() and pending:
                    proc.terminate()
                proc.join()


def _check_alive(procs, pending, label, start_method):
    dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
    if dead:
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        hint = "Check that the machine has memory for %d copies of the network" % len(procs)
        if start_method != "fork" and main:
            hint = ("With start_method=%r each worker first imports your script (%s) again: "
                    "put its top-level code under `if __name__ == \"__main__\":` (a worker "
                    "that runs it cannot start workers of its own), or use engine='ray'. %s"
                    % (start_method, os.path.basename(main), hint))
        raise ModelExecutionError(
            "A worker process died (exit code %s) before finishing %ss %s. %s."
            % (dead[0].exitcode, label, sorted(pending), hint))


def _worker(inbox, messages):
    """Worker process: take the job, set up once, run each item, send back its result."""
    task, shared, assigned = inbox.get()
    try:
        state = task.setup(shared)
    except Exception as err:  # pylint: disable=broad-except
        failure = failure_of(err)
        for index, _ in assigned:
            messages.put((index, failure))
        return
    for index, item in assigned:
        messages.put((index, run_guarded(task, state, pickle.loads(item), is_state=True)))
