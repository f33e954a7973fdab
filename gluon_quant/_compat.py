"""Checks that the installed MXNet and numpy can run gluon_quant, with clear messages.

gluon_quant does not force a particular MXNet wheel: the CPU (oneDNN) build comes with
the ``cpu`` extra, and users of GPU builds (``mxnet-cu102``, ``mxnet-cu112``...) keep
theirs. Whichever is installed must be MXNet 1.9.x with numpy < 1.24.
"""
from .errors import GluonQuantError

__all__ = ["check_mxnet", "MXNetInstallError"]

_INSTALL_HINT = ("Install the CPU (oneDNN) build with `pip install gluon_quant[cpu]` "
                 "(mxnet==1.9.1), or a GPU build such as `pip install mxnet-cu112==1.9.1`, "
                 "together with `numpy<1.24`.")


class MXNetInstallError(GluonQuantError, ImportError):
    """MXNet is missing, too old, or cannot be imported with the installed numpy."""


def check_mxnet():
    """Import MXNet and check its version, raising :class:`MXNetInstallError` if unusable."""
    try:
        import numpy
    except ImportError as err:  # pragma: no cover - numpy comes with mxnet
        raise MXNetInstallError("numpy is not installed. " + _INSTALL_HINT) from err
    major_minor = tuple(int(p) for p in numpy.__version__.split(".")[:2])
    if major_minor >= (1, 24):
        raise MXNetInstallError(
            "numpy %s is installed, but MXNet 1.9 does not import with numpy >= 1.24 "
            "(it uses np.bool). Run `pip install \"numpy<1.24\"`." % numpy.__version__)
    try:
        import mxnet
    except ImportError as err:
        raise MXNetInstallError("MXNet is not installed or failed to import (%s). %s"
                                % (err, _INSTALL_HINT)) from err
    version = tuple(int(p) for p in mxnet.__version__.split(".")[:2] if p.isdigit())
    if version < (1, 9) or version >= (2, 0):
        raise MXNetInstallError("gluon_quant needs MXNet 1.9.x, found %s. %s"
                                % (mxnet.__version__, _INSTALL_HINT))
    return mxnet.__version__
