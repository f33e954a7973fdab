"""Engines that run the items of one job side by side: Ray tasks, worker processes, or
this process.

:func:`gluon_quant.calibrate_parallel` and :func:`gluon_quant.tune` describe their work
as a :class:`~gluon_quant.engines.base.Task` over a list of items and hand it to an engine;
the engine only decides where the items run.  So the calibration of a shard or the
evaluation of a trial is written once, and results are merged in item order whatever
the engine, which keeps them identical to one process.

=========  =====================================================================
``ray``    one Ray task per item on a local Ray or a cluster (:mod:`.ray_engine`)
``process`` a ``multiprocessing`` pool on this machine, the fallback without Ray
``local``  one item after another in this process (no copies)
=========  =====================================================================
"""
import logging

from ..errors import ConfigError
from .base import Engine, LocalEngine, Task
from .process import ProcessEngine, START_METHODS
from .ray_engine import INSTALL_HINT, RayEngine, import_ray, ray_installed

__all__ = ["get_engine", "Engine", "Task", "LocalEngine", "ProcessEngine", "RayEngine",
           "ENGINE_NAMES", "START_METHODS", "INSTALL_HINT", "import_ray", "ray_installed"]

_log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "ray", "process", "local")


def get_engine(engine="auto", *, address=None, workers=None, start_method="spawn",
               allowed=ENGINE_NAMES):
    """The :class:`Engine` for ``engine``; use it as a context manager.

    Parameters
    ----------
    engine : {'auto', 'ray', 'process', 'local'} or None
        ``'auto'``/``None``: Ray when it is installed (or when ``address`` is given),
        else worker processes.
    address : str, optional
        Ray cluster address (``'auto'``, ``'HOST:PORT'``); only for Ray.
    workers : int, optional
        Processes (``'process'``) or most tasks in flight (``'ray'``).
    start_method : str, default 'spawn'
        For ``'process'`` only.
    allowed : tuple of str
        The names the calling API accepts (for the error message).

    Raises
    ------
    ConfigError
        Unknown name, an address without Ray, or Ray not installed for ``'ray'``.
    """
    name = "auto" if engine is None else engine
    if start_method not in START_METHODS:
        raise ConfigError("start_method must be one of %s, got %r."
                          % (", ".join(repr(m) for m in START_METHODS), start_method))
    if name not in allowed:
        raise ConfigError("engine must be one of %s, got %r."
                          % (", ".join(repr(n) for n in allowed), engine))
    if name == "auto":
        name = "ray" if address is not None or ray_installed() else "process"
        if name == "process":
            _log.info("Ray is not installed (%s): using worker processes.", INSTALL_HINT)
    if address is not None and name != "ray":
        raise ConfigError("address=%r is a Ray cluster address: pass engine='ray' (or "
                          "leave engine unset), or drop address for engine=%r."
                          % (address, name))
    if name == "ray":
        return RayEngine(address=address, max_in_flight=workers)
    if name == "process":
        return ProcessEngine(workers=workers, start_method=start_method)
    return LocalEngine()
