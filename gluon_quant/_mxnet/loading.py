"""Loading internals: CPU NDArrays allocated in bulk, each with a writable numpy view.

``mx.nd.empty`` defers the allocation to the engine, so reading an array's address means
waiting on the engine for it, and each step goes through Gluon's Python wrappers: about
25 us an array, 5 ms for the 250 parameters of a MobileNetV2. Here each array is
allocated at once by ``MXNDArrayCreateEx`` (``delay_alloc=0``) and its address read
with ``MXNDArrayGetData``: nothing is pending on a new array, so nothing is waited for.
"""
import ctypes

import mxnet as mx
import numpy as np
from mxnet.ndarray.ndarray import _DTYPE_NP_TO_MX

__all__ = ["host_arrays"]

_CPU_TYPE_ID = mx.cpu().device_typeid


def host_arrays(layouts):
    """New CPU NDArrays with writable numpy views of their memory.

    Parameters
    ----------
    layouts : list of (tuple of int, numpy.dtype)
        Shape and dtype of each array.

    Returns
    -------
    list of (mxnet.nd.NDArray, numpy.ndarray)
        Each array and a view of its memory in its logical (C-contiguous) layout. Write
        the view before any MXNet operation reads the array, and keep the array alive
        while the view is used.
    """
    lib, check = mx.base._LIB, mx.base.check_call
    pairs = []
    for shape, dtype in layouts:
        dtype = np.dtype(dtype)
        size = 1
        for dim in shape:
            size *= dim
        if size == 0 or size >= 2 ** 31:      # MXNet's 32-bit shape API; empty arrays
            array = mx.nd.empty(shape, ctx=mx.cpu(), dtype=dtype)
            pairs.append((array, np.empty(shape, dtype) if size == 0
                          else _view(array, dtype, size)))
            continue
        handle = mx.base.NDArrayHandle()
        check(lib.MXNDArrayCreateEx((mx.base.mx_uint * len(shape))(*shape),
                                    mx.base.mx_uint(len(shape)), _CPU_TYPE_ID, 0, 0,
                                    _DTYPE_NP_TO_MX[dtype.type], ctypes.byref(handle)))
        array = mx.nd.NDArray(handle)
        pointer = ctypes.c_void_p()
        check(lib.MXNDArrayGetData(handle, ctypes.byref(pointer)))
        memory = (ctypes.c_char * (size * dtype.itemsize)).from_address(pointer.value)
        pairs.append((array, np.frombuffer(memory, dtype).reshape(shape)))
    return pairs


def _view(array, dtype, size):
    array.wait_to_read()
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    memory = (ctypes.c_char * (size * dtype.itemsize)).from_address(pointer.value)
    return np.frombuffer(memory, dtype).reshape(array.shape)
