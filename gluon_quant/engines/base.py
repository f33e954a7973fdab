"""What every engine shares: the task contract, failures as package errors, in-order results.

A job is a :class:`Task` (two module-level functions, so any engine can ship them), one
``shared`` object every item needs (a graph and its parameters, an evaluation function)
and a list of items (shards of data, models to evaluate).  An engine runs
``task.run(task.setup(shared), item)`` for each item, wherever it likes, and returns the
results in the items' order, so callers merge them exactly as one process would.

A failure never crosses a process boundary as a pickled exception or a traceback blob:
:func:`run_guarded` turns it into ``(class name, first line of the message)`` where it
happens, and :func:`failure_error` rebuilds it in the caller as the same
:class:`~gluon_quant.GluonQuantError` subclass (or :class:`ModelExecutionError` for MXNet's
and Python's own errors), naming the item.
"""
import abc
import logging
from dataclasses import dataclass
from typing import Any, Callable

from .. import errors
from ..progress import progress_bar

__all__ = ["Task", "Engine", "run_guarded", "failure_error", "Failure", "pickling_failure"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """Two picklable (module-level) functions that do one kind of job.

    Attributes
    ----------
    setup : callable
        ``setup(shared) -> state``: once per worker process where it can be cached
        (process pool, local) and once per Ray task.
    run : callable
        ``run(state, item) -> result``; the result must be picklable.
    label : str
        What an item is, for messages: ``"shard"``, ``"trial"``.
    shared_label : str
        What the shared object is and what it must be to travel, for messages.
    """

    setup: Callable[[Any], Any]
    run: Callable[[Any, Any], Any]
    label: str
    shared_label: str = "The object shared by the tasks"


@dataclass(frozen=True)
class Failure:
    """What a failed item sends back instead of its result (picklable, no exception)."""

    class_name: str
    message: str


def run_guarded(task, state_or_shared, item, *, is_state):
    """``task.run`` on ``item``; a :class:`Failure` instead of raising.

    ``is_state`` says whether ``state_or_shared`` is already the result of
    ``task.setup`` (cached by the worker) or still the shared object.
    """
    try:
        state = state_or_shared if is_state else task.setup(state_or_shared)
        return task.run(state, item)
    except Exception as err:  # pylint: disable=broad-except
        return failure_of(err)


def pickling_failure(err):
    """``'TypeError: cannot pickle ...'``: why an object refused pickling, in one line (a
    DataLoader's pool raises NotImplementedError, Gluon blocks ValueError, locks
    TypeError; Ray's first line sums up a page of diagnostics)."""
    lines = str(err).strip().splitlines()
    return "%s: %s" % (type(err).__name__, lines[0].rstrip(":")[:200] if lines else "")


def failure_of(err):
    """The :class:`Failure` record of an exception (first line for MXNet's errors)."""
    from .._mxnet import MXNetError, first_line  # the adapter: MXNet's error type
    if isinstance(err, MXNetError):
        return Failure(type(err).__name__, first_line(err))
    return Failure(type(err).__name__, str(err))


def failure_error(task, index, failure, engine):
    """The package error to raise in the caller for ``failure`` of item number ``index``."""
    text = "%s %d: %s" % (task.label.capitalize(), index, failure.message.rstrip())
    cls = getattr(errors, failure.class_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.GluonQuantError):
        return cls("%s (%s engine)" % (text, engine))
    return errors.ModelExecutionError("%s (%s on the %s engine)"
                                      % (text, failure.class_name, engine))


class Engine(abc.ABC):
    """Runs the items of a :class:`Task`; a context manager that releases what it started.

    Attributes
    ----------
    name : str
        ``'local'``, ``'process'`` or ``'ray'``.
    remote : bool
        Whether items and results travel to other processes (must be picklable).
    """

    name = "engine"
    remote = True

    @property
    @abc.abstractmethod
    def slots(self):
        """int: how many items run at the same time."""

    @abc.abstractmethod
    def _run(self, task, shared, items, tick):
        """Yield ``(index, result or Failure)`` as items (an iterator) finish; call
        ``tick()`` for each."""

    def check_shared(self, task, shared):
        """Raise :class:`~gluon_quant.ConfigError` now if ``shared`` cannot travel to this
        engine's workers (before the caller's long work rather than at its first map);
        nothing to check where nothing travels."""

    def map(self, task, shared, items, *, progress=False, desc=None, first_number=0):
        """Run ``task`` on every item; results in the order of ``items``.

        ``items`` may be a generator: the Ray engine submits each item as soon as it is
        produced, so producing the next one (building a tuning candidate) overlaps the
        tasks already running.  ``first_number`` is the number messages give the first
        item (items are numbered from 0 by default, as shards are; tune numbers its
        trials from 1).

        Raises
        ------
        GluonQuantError
            The error of the first item that failed (by completion), naming the item.
        """
        total = len(items) if hasattr(items, "__len__") else None
        results = {}
        bar = progress_bar(_forever(), enabled=progress, desc=desc or task.label + "s",
                           total=total, unit=task.label)
        ticks = iter(bar)
        try:
            for index, result in self._run(task, shared, iter(items), lambda: next(ticks)):
                if isinstance(result, Failure):
                    raise failure_error(task, first_number + index, result, self.name)
                results[index] = result
        finally:
            if hasattr(bar, "close"):
                bar.close()
        return [results[i] for i in range(len(results))]

    def close(self):
        """Release what this engine started (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _forever():
    while True:
        yield None


class LocalEngine(Engine):
    """Items one after another in this process; nothing is copied or pickled, and
    errors propagate unchanged."""

    name = "local"
    remote = False

    @property
    def slots(self):
        return 1

    def _run(self, task, shared, items, tick):
        # No guard: the caller gets the original exception and traceback.
        state = task.setup(shared)
        for index, item in enumerate(items):
            result = task.run(state, item)
            tick()
            yield index, result
