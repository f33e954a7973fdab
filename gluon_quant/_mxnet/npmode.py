"""MXNet's NumPy mode (``npx.set_np()``): Gluon nets written with ``mxnet.np`` arrays.

MXNet 1.9.1's own tutorials write Gluon nets in NumPy mode, where layers call the
``npx``/``np`` operators and take ``mxnet.numpy.ndarray`` arrays. Their graphs hold the
same operators as legacy ones (``_npx_convolution`` is an alias of ``Convolution``), so
such a net is traced with NumPy symbols and everything after the trace (fusion,
quantization, calibration, the int8 runtime) runs on legacy graphs and on legacy views
of the same memory (``as_nd_ndarray()``: no copy), with NumPy mode switched off; the
int8 block hands NumPy arrays back to a caller that gave NumPy arrays.
"""
import contextlib

import mxnet as mx

__all__ = ["is_np_mode", "net_np_mode", "legacy_mode", "np_scope", "as_legacy", "as_np",
           "is_np_array"]


def is_np_mode():
    """Whether NumPy semantics are active (``npx.set_np()``)."""
    return bool(mx.util.is_np_array())


def net_np_mode(net):
    """Whether ``net`` is a NumPy-mode net: a ``SymbolBlock`` over a NumPy graph, or its
    parameters hold ``mxnet.np`` arrays (none initialized yet: whether NumPy semantics
    are active now)."""
    graph = getattr(net, "_cached_graph", None) if isinstance(net, mx.gluon.SymbolBlock) \
        else None
    if graph:
        return isinstance(graph[1], mx.sym.np._Symbol)
    for param in net.collect_params().values():
        data = getattr(param, "_data", None)
        if data:
            return isinstance(data[0], mx.np.ndarray)
    return is_np_mode()


def is_np_array(value):
    """Whether ``value`` is an ``mxnet.numpy.ndarray`` (or a NumPy symbol: a NumPy-mode
    parent tracing the int8 block into its own graph)."""
    return isinstance(value, (mx.np.ndarray, mx.sym.np._Symbol))


@contextlib.contextmanager
def legacy_mode():
    """Legacy array and shape semantics inside, whatever the caller's (restored after)."""
    if not (mx.util.is_np_array() or mx.util.is_np_shape()):
        yield
        return
    with mx.util.np_array(False), mx.util.np_shape(False):
        yield


def np_scope(active):
    """NumPy semantics inside where ``active`` (a net traced or run as it was written)."""
    if not active:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(mx.util.np_shape(True))
    stack.enter_context(mx.util.np_array(True))
    return stack


def as_legacy(value):
    """The legacy view of a NumPy array or symbol, through nested lists and tuples
    (anything else as it is)."""
    if isinstance(value, (list, tuple)):
        return type(value)(as_legacy(v) for v in value)
    if isinstance(value, (mx.np.ndarray, mx.sym.np._Symbol)):
        return value.as_nd_ndarray()
    return value


def as_np(value):
    """NumPy views of legacy arrays (and symbols), through nested lists and tuples."""
    if isinstance(value, (list, tuple)):
        return type(value)(as_np(v) for v in value)
    if isinstance(value, mx.nd.NDArray) and not isinstance(value, mx.np.ndarray):
        return value.as_np_ndarray()
    if isinstance(value, mx.sym.Symbol) and not isinstance(value, mx.sym.np._Symbol):
        return value.as_np_ndarray()
    return value
