"""The conditions the pipeline's stages run under, whatever the caller's.

* MXNet's inference mode (:func:`gluon_quant._mxnet.inference_mode`): BatchNorm's running
  statistics, no dropout, nothing recorded, even under ``autograd.record()``.
* MXNet's legacy array semantics, even under ``npx.set_np()``
  (:mod:`gluon_quant._mxnet.npmode`).
* numpy's large buffers on ordinary 4 KB pages. numpy asks the kernel for transparent
  huge pages (``madvise(MADV_HUGEPAGE)``) for every buffer of 4 MB or more; where the
  kernel then compacts memory to find them (``defrag=madvise``, this machine's setting),
  filling fresh buffers became the slowest part of calibration: Xception at 299 px spent
  51 of its 56 s copying bias correction's references (25.5 s with the reference budget,
  15.4 s with 4 KB pages as well); ResNet-18's ``quantize()`` used 2 s less CPU.
"""
import contextlib
import ctypes
import ctypes.util
import functools

from numpy.core import multiarray as _multiarray

from . import _mxnet

__all__ = ["small_pages", "stage", "return_free_memory"]

_GET = getattr(_multiarray, "_get_madvise_hugepage", None)
_SET = getattr(_multiarray, "_set_madvise_hugepage", None)


@contextlib.contextmanager
def small_pages():
    """numpy buffers allocated inside use 4 KB pages (the setting is restored after)."""
    if _GET is None or _SET is None:        # numpy without the switch: nothing to change
        yield
        return
    before = _SET(False)
    try:
        yield
    finally:
        _SET(before)


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError, TypeError):    # not glibc (macOS, musl, Windows)
        return None


_TRIM = _malloc_trim()


def return_free_memory():
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim(0)``; nothing
    elsewhere). Calibration frees gigabytes in blocks glibc keeps: ResNet-101 at batch 16,
    once its block held nothing more, left the process at 2.6 GB resident (1.1 GB before
    calibration), 1.4 GB once trimmed."""
    if _TRIM is not None:
        _TRIM(0)


def stage(func):
    """Decorate a pipeline stage to run under the conditions of the module doc."""
    @functools.wraps(func)
    def run(*args, **kwargs):
        with _mxnet.inference_mode(), _mxnet.legacy_mode(), small_pages():
            return func(*args, **kwargs)
    return run
