"""Runtime internals: a host memory view of an NDArray, a CachedOp caller, a SymbolBlock
taking inputs its graph ignores, and when a graph may run with static memory."""
import contextlib
import copy
import ctypes
import json
import operator
import re
import warnings
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet.gluon import block as _gluon_block
from mxnet.ndarray.sparse import _ndarray_cls

from ..errors import InputMismatchError
from .base import first_line
from .shapes import ReshapeCheck


class GraphBlock(mx.gluon.SymbolBlock):
    """Gluon's ``SymbolBlock``, composed into a parent's graph with only the inputs its
    graph reads. A network may ignore an argument (``hybridize()`` drops it with a
    warning); Gluon's own block passes every input to ``_compose``, which refuses a name
    the graph lacks, so an int8 block over such a graph failed inside its wrapper."""

    def forward(self, x, *args):
        if not isinstance(x, mx.sym.Symbol):
            return super().forward(x, *args)
        flat, in_fmt = _gluon_block._flatten([x] + list(args), "input")
        if in_fmt != self._in_format:
            raise ValueError("Invalid input format")
        inputs, graph = self._cached_graph
        read = set(graph.list_inputs())
        out = copy.copy(graph)
        out._compose(**{k.name: v for k, v in zip(inputs, flat) if k.name in read})
        return _gluon_block._regroup(list(out), self._out_format)


# Gluon warns at each int8 block's first call that an input its graph ignores is unused
# ("The 1-th input to HybridBlock is not used by any computation"), pointing at this
# module: the network's own hybridize() has said so already.
warnings.filterwarnings("ignore", r"The \d+-th input to HybridBlock is not used",
                        UserWarning, r"gluon_quant\._mxnet\.runtime")


def host_view(array):
    """A read-only numpy view of a CPU float32 NDArray's memory, without copying.

    Waits for the array to be computed. MXNet's ``MXNDArrayGetData`` first reorders a
    oneDNN-layout array to the default layout, so the view has the logical layout. The
    view is valid while ``array`` is alive and unchanged: keep a reference to it. Other
    arrays (GPU, other dtypes, sparse) are copied with ``asnumpy()``.
    """
    if (array.context.device_type != "cpu" or array.dtype != np.float32
            or array.stype != "default" or array.size == 0):
        return array.asnumpy()
    view = _memory(array, np.float32)
    view.flags.writeable = False
    return view


#: CPU memory that is not ``cpu`` to MXNet: shared (a multi-worker ``DataLoader``'s
#: batches) and pinned (``ImageRecordIter``'s).
_OTHER_CPU_MEMORY = ("cpu_shared", "cpu_pinned")


def unshared(value):
    """``value``, copied to ``cpu`` if it is an NDArray in shared or pinned CPU memory,
    which MXNet's cached graphs refuse beside parameters on ``cpu``, and made dense if it
    is a sparse one (CSR, row-sparse: ``F.sparse.dot`` features), which the fp32 graph
    reads the same and the int8 one needs; anything else as it is."""
    if not isinstance(value, mx.nd.NDArray):
        return value
    if isinstance(value, mx.nd.sparse.BaseSparseNDArray):     # no C call on the hot path
        value = value.tostype("default")
    if value.context.device_type in _OTHER_CPU_MEMORY:
        return value.as_in_context(mx.cpu(0))
    return value


def _memory(array, dtype):
    """A writable numpy view of a (waited for) CPU array's memory, in its logical layout."""
    array.wait_to_read()
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    memory = (ctypes.c_char * (array.size * np.dtype(dtype).itemsize)).from_address(
        pointer.value)
    return np.frombuffer(memory, dtype).reshape(array.shape)


class CachedCall:
    """Runs a hybridized block's CachedOp with its parameters' handles gathered once.

    Gluon's ``_call_cached_op`` reads every parameter and builds a C array of all handles
    at every call (~100 on ResNet-18: most of a batch-1 call's Python time). Here the array
    is kept while each parameter holds the same array list (checked by identity at each
    call). The unusual (not built yet, op hooks, not plain NDArrays) takes ``fallback``."""
    _DATA = operator.attrgetter("_data")
    _op = _params = _lists = _handles = _slots = None     # set at the first direct call
    # (the graph, its ReshapeCheck, the input shapes it accepted; None: it has no reshape)
    _shapes: Optional[tuple] = None

    def __call__(self, block, inputs, fallback):
        if mx.autograd.is_recording() or mx.autograd.is_training():
            with inference_mode():
                return self(block, inputs, fallback)
        self._check_shapes(block, inputs)
        op = block._cached_op
        if op is None or block._callback or op.is_np_sym or block._in_format != [0] * len(
                inputs) or any(type(value) is not mx.nd.NDArray for value in inputs):
            return fallback(*inputs)
        if op is not self._op or any(map(operator.is_not, map(self._DATA, self._params),
                                         self._lists)):
            pairs = block._cached_op_args
            self._params = [value for is_arg, value in pairs if not is_arg]
            self._lists = [param._data for param in self._params]
            self._slots = [(n, index) for n, (is_arg, index) in enumerate(pairs) if is_arg]
            self._handles = (ctypes.c_void_p * len(pairs))(*[
                None if is_arg else value.data().handle.value for is_arg, value in pairs])
            self._op = op
        args = type(self._handles).from_buffer_copy(self._handles)   # a copy per call:
        for slot, index in self._slots:                                # thread-safe
            args[slot] = inputs[index].handle.value
        count, handles = ctypes.c_int(0), ctypes.POINTER(mx.base.NDArrayHandle)()
        stypes = ctypes.POINTER(ctypes.c_int)()
        mx.base.check_call(mx.base._LIB.MXInvokeCachedOpEx(
            op.handle, ctypes.c_int(len(args)), args, ctypes.byref(count), ctypes.byref(handles),
            ctypes.byref(stypes)))
        out = [_ndarray_cls(ctypes.cast(handles[n], mx.base.NDArrayHandle), stype=stypes[n])
               for n in range(count.value)]
        return _gluon_block._regroup(out, block._out_format)

    def _check_shapes(self, block, inputs):
        """Refuse input shapes that a reshape of the graph cannot take: MXNet's shape
        inference never checks a reshape's size (a net reshaping to ``(1, C, H, W)`` is
        given a batch of 2), and an int8 graph run on such inputs corrupted the heap and
        killed the process. Checked once per set of input shapes, and not at all for
        graphs without reshapes."""
        state = self._shapes
        if state is not None and state[0] is block._cached_graph and state[2] is None:
            return
        key = tuple(getattr(value, "shape", None) for value in inputs)
        if state is not None and state[0] is block._cached_graph and key in state[2]:
            return
        graph = block._get_graph(*inputs)
        if state is None or state[0] is not graph:
            check = ReshapeCheck(graph[1])
            state = self._shapes = (graph, check, set() if check else None)
            if not check:
                return
        names = [sym.name for sym in graph[0]] if isinstance(graph[0], list) else \
            [graph[0].name]
        error = state[1].error({n: s for n, s in zip(names, key) if s})
        if error is not None:
            raise InputMismatchError(
                "A reshape of the network does not fit these inputs (%s): %s. MXNet does not "
                "check a reshape's size and would read or write past the input's memory. "
                "Call it with inputs shaped like its calibration batches; a reshape to a "
                "fixed shape ((1, C, H, W)) takes only those, one written with 0 and -1 "
                "(x.reshape((0, -1))) any size its other dimensions divide."
                % (", ".join(str(tuple(s)) for s in key if s), first_line(error)))
        if len(state[2]) < 4096:
            state[2].add(key)


def inference_mode():
    """A context in which MXNet runs graphs for inference, whatever the caller's autograd
    state: under ``autograd.record()`` or ``train_mode()``, int8 graphs are run paused in
    predict mode (int8 networks are inference-only; one int8 max pooling call in training
    mode left its static buffers unusable: "MKLDNN Pooling: incorrect workspace input" at
    every later call), and calibration sees BatchNorm's running statistics and no dropout.
    """
    if mx.autograd.is_recording() or mx.autograd.is_training():
        return mx.autograd.pause(train_mode=False)
    return contextlib.nullcontext()


#: Control-flow operators: their subgraphs run as nested static CachedOps, and inside a
#: static_alloc CachedOp MXNet 1.9.1 returned, at every call, the result for the previous
#: call's input (a Gluon net looping with ``F.contrib.foreach``: garbage on the first call,
#: then each result one call late); without static_alloc it is right.
CONTROL_FLOW_OPS = frozenset(("_foreach", "_while_loop", "_cond"))


_CONTROL_FLOW = re.compile(r'"op":\s*"(?:%s)"' % "|".join(sorted(CONTROL_FLOW_OPS)))

#: The node attribute :func:`without_static_memory` sets: it travels with the graph (its
#: JSON, an export) and :func:`static_flags` reads it.
NO_STATIC_MEMORY = "__no_static_memory__"

#: An RNN operator with a projection (``rnn.LSTM(projection_size=...)``): under a static
#: CachedOp, MXNet 1.9.1's CPU RNN reads calls at random as needing gradients and fails
#: them ("No training support for LSTM with projection on CPU"): most first runs, and
#: now and then a later call after a first run that passed.
_PROJECTED_RNN = re.compile(r'"projection_size":\s*"\d+"')


def hybridize_with(block, flags, active=True, **kwargs):
    """Gluon's ``hybridize`` of ``block`` with its static-memory options set to ``flags``
    (:func:`static_flags`, or ``{}``) whatever ``kwargs`` ask; other options pass through."""
    kwargs.update(static_alloc=False, static_shape=False)
    kwargs.update(flags)
    return mx.gluon.HybridBlock.hybridize(block, active, **kwargs)


def without_static_memory(symbol):
    """``symbol`` marked to run without static memory (:func:`static_flags` gives ``{}``).

    MXNet 1.9.1's static CachedOp fails at the second call on some oneDNN graphs that run
    without it ("We can't generate TBlob for MKLDNN data": resnet18_v1 on 8x8 inputs, its
    global pooling and dense layer after 1x1 feature maps, fp32 ones included).
    """
    graph = json.loads(symbol.tojson())
    node = next(n for n in graph["nodes"] if n["op"] != "null")
    node.setdefault("attrs", {})[NO_STATIC_MEMORY] = "True"
    return mx.sym.load_json(json.dumps(graph))


def static_flags(graph):
    """The ``hybridize``/``CachedOp`` flags for running a graph with static memory:
    ``{'static_alloc': True, 'static_shape': True}``, or ``{}`` where that gives wrong
    results (a control-flow operator anywhere in the graph, subgraphs included) or fails
    (a graph marked by :func:`without_static_memory`, an LSTM with a projection).

    Parameters
    ----------
    graph : Symbol, or str or bytes
        The graph, or its JSON text (as a file holds it: no second encoding).
    """
    text = graph.tojson() if isinstance(graph, mx.sym.Symbol) else graph
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if _CONTROL_FLOW.search(text) or NO_STATIC_MEMORY in text or _PROJECTED_RNN.search(text):
        return {}
    return {"static_alloc": True, "static_shape": True}
