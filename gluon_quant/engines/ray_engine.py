"""Ray tasks: the same jobs on a local Ray or on every node of a Ray cluster.

The shared object (a fused graph and its parameters, an evaluation function) is put into
Ray's object store once (``ray.put``) and every task receives a reference to it: each
node fetches it once and tasks on that node read it in place, instead of one pickled copy
per task.  Each item is one task (``num_cpus=1``, no retries: a calibration pass or an
evaluation is deterministic, and running it again would fail again); results come back
in the items' order.  A failure inside a task comes back as a record (class name, first
line of the message) and is raised as a package error naming the item, never as a Ray
traceback.

Without ``address``, a local Ray is started (``ray.init()`` sized to this machine's CPUs,
no dashboard, Ray's logging at ERROR and workers' output not forwarded) and shut down by
:meth:`RayEngine.close`; with ``address='auto'`` or ``'HOST:PORT'``, the running cluster
is used and left running.  If this process is already connected to Ray (``ray.init()``
called by the user), that connection is used and left open.
"""
import importlib.util
import logging
import numbers
import pickle
import socket

from ..errors import ConfigError
from .base import Engine, Failure, run_guarded

__all__ = ["RayEngine", "import_ray", "ray_installed", "INSTALL_HINT"]

_log = logging.getLogger(__name__)
#: How objects refuse pickling: a DataLoader's worker pool raises NotImplementedError,
#: ctypes pointers (Gluon blocks) ValueError, locks and generators TypeError.
_UNPICKLABLE = (TypeError, ValueError, NotImplementedError, pickle.PicklingError)


def _unsendable(task, err):
    return ConfigError("%s cannot be sent to Ray tasks (%s): pass it picklable."
                       % (task.shared_label, _first(err)))


def _first(err):
    """The first line of a pickling error (Ray's is a page of serializability
    diagnostics, and its first line says it)."""
    lines = str(err).strip().splitlines()
    return lines[0].rstrip(":") if lines else type(err).__name__

INSTALL_HINT = 'pip install "gluon_quant[ray]"'


def ray_installed():
    """Whether ``import ray`` can work (without importing it)."""
    return importlib.util.find_spec("ray") is not None


def import_ray():
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ConfigError("engine='ray' needs Ray, which is not installed here (%s). "
                          "Install it with: %s, or pass engine='process' for worker "
                          "processes on this machine." % (err, INSTALL_HINT)) from None
    return ray


class RayEngine(Engine):
    """Items as Ray tasks.

    Parameters
    ----------
    address : str, optional
        ``None``: a local Ray started for this engine (or the connection this process
        already has).  ``'auto'``: the cluster this node belongs to (``ray start``).
        ``'HOST:PORT'`` or ``'ray://HOST:10001'``: that cluster.
    max_in_flight : int, optional
        Most tasks submitted at once (default: all; Ray queues them on free CPUs).
    """

    name = "ray"

    def __init__(self, address=None, max_in_flight=None):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError("address must be None (a local Ray), 'auto' (the running "
                              "cluster) or 'HOST:PORT', got %r." % (address,))
        if max_in_flight is not None and (isinstance(max_in_flight, bool) or not isinstance(
                max_in_flight, numbers.Integral) or max_in_flight < 1):
            raise ConfigError("workers must be a positive int, got %r." % (max_in_flight,))
        ray = import_ray()
        self._ray = ray
        self._started = False
        self.max_in_flight = max_in_flight
        if ray.is_initialized():
            _log.info("Using this process's Ray connection (address=%r not used).", address)
        elif address is None:
            ray.init(include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
            self._started = True
            _log.info("Started a local Ray with %s CPUs.", self._cpus())
        else:
            self._connect(address)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)

    def _connect(self, address):
        _check_reachable(address)
        try:
            self._ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as err:  # pylint: disable=broad-except
            # Ray raises ConnectionError, RuntimeError, ValueError... depending on the form.
            raise ConfigError(
                "Cannot connect to a Ray cluster at address=%r: %s. Start one with `ray "
                "start --head` (then pass address='auto' on that node, or 'HEAD_IP:6379'), "
                "or pass address=None to start a local Ray on this machine."
                % (address, " ".join(str(err).split())[:300])) from None
        _log.info("Connected to the Ray cluster at %r (%s CPUs).", address, self._cpus())

    def _cpus(self):
        return int(self._ray.cluster_resources().get("CPU", 1))

    @property
    def slots(self):
        cpus = max(self._cpus(), 1)
        return min(cpus, self.max_in_flight) if self.max_in_flight else cpus

    def _run(self, task, shared, items, tick):
        ray = self._ray
        try:
            shared_ref = ray.put(shared)        # once, whatever the number of tasks
        except _UNPICKLABLE as err:
            raise _unsendable(task, err) from None
        limit = self.max_in_flight or float("inf")
        pending, submitted, exhausted = {}, 0, False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    item = next(items, _END)    # a generator builds the next item now
                    if item is _END:
                        exhausted = True
                        break
                    pending[self._submit(task, shared_ref, item, submitted)] = submitted
                    submitted += 1
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield self._collect(ref, pending.pop(ref), tick)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            del shared_ref

    def check_shared(self, task, shared):
        try:
            self._ray.cloudpickle.dumps(shared)
        except _UNPICKLABLE as err:
            raise _unsendable(task, err) from None

    def _submit(self, task, shared_ref, item, index):
        try:
            return self._remote.remote(task, shared_ref, item)
        except _UNPICKLABLE as err:
            raise ConfigError("%s %d cannot be sent to a Ray task (%s): pass picklable %ss "
                              "(lists of numpy arrays or NDArrays, not locks, open files "
                              "or generators)."
                              % (task.label.capitalize(), index, _first(err),
                                 task.label)) from None

    def _collect(self, ref, index, tick):
        try:
            result = self._ray.get(ref)
        except self._ray.exceptions.RayError as err:   # the worker died, the task was lost
            result = Failure("ModelExecutionError", "its Ray task did not finish (%s: %s)"
                             % (type(err).__name__, str(err).strip().splitlines()[0]))
        tick()
        return index, result

    def close(self):
        """Shut down the local Ray if this engine started it."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


_END = object()

#: Seconds to wait for a cluster's head to accept a connection (Ray itself retries forever).
_CONNECT_TIMEOUT = 5.0


def _check_reachable(address):
    """Refuse a malformed or unreachable ``HOST:PORT`` before Ray retries it forever."""
    if address == "auto":
        return                      # Ray reads the node's own session: fails fast by itself
    host_port = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("address must be 'auto', 'HOST:PORT' (the head's GCS port, "
                          "6379 by default) or 'ray://HOST:PORT' (Ray Client, 10001), got "
                          "%r." % (address,))
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT).close()
    except OSError as err:
        raise ConfigError(
            "Cannot connect to a Ray cluster at address=%r: %s. Check that `ray start "
            "--head` runs there and the port is open, or pass address=None to start a "
            "local Ray on this machine." % (address, err)) from None


def _ray_task(task, shared, item):
    """The body of every Ray task (``shared`` arrives resolved from the object store)."""
    return run_guarded(task, shared, item, is_state=False)
