"""The adapter's base: MXNet's version, its error type and messages, graph JSON I/O."""
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import threading

import mxnet as mx

from ..errors import GraphError

MXNET_VERSION = mx.__version__

#: "[21:09:29] ../src/operator/quantization/./quantize_v2-inl.h:130: " before MXNet's words.
_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")

#: MXNet's version as the integer its JSON graphs record (1.9.1 -> 10901).
_VERSION_NUMBER = sum(int(part) * scale for part, scale in zip(
    MXNET_VERSION.split(".")[:3], (10000, 100, 1)) if part.isdigit())

#: MXNet's error type, for callers that report it as what it is.
MXNetError = mx.base.MXNetError


#: One redirection of the process's file descriptors at a time (re-entrant for nesting).
_REDIRECTING = threading.RLock()


@contextlib.contextmanager
def native_output(messages):
    """Capture what MXNet writes on the process's stdout and stderr into ``messages``.

    MXNet's C++ passes log with ``LOG(INFO)`` ("Currently, quantized concat only supports
    dim>0 ...") and its Python code prints ("infer_type error. Arguments: ..."), straight
    to the terminal. Inside this block both file descriptors point at a temporary file;
    its non-empty lines are appended to ``messages`` (a list) when the block ends.

    The descriptors belong to the process, so blocks in different threads run one after
    another: interleaved, a thread saved the descriptors while another had redirected
    them and restored that redirection last, silencing the process for good (two
    ``quantize()`` calls on two threads).
    """
    with _REDIRECTING:
        with _redirected(messages):
            yield messages


@contextlib.contextmanager
def _redirected(messages):
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    # MXNet's Python prints go to sys.stdout, which is not file descriptor 1 in a Jupyter
    # kernel or under pytest's capture: swapped for a buffer too.
    printed = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                yield messages
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = printed.getvalue() + sink.read().decode("utf-8", errors="replace")
            messages.extend(line.strip() for line in text.splitlines() if line.strip())


def device(device_type):
    """The MXNet context of a device type (``'cpu'``, or ``'gpu'`` for GPU 0)."""
    return mx.gpu(0) if device_type == "gpu" else mx.cpu()


def graph_inputs(sym, by_name):
    """``by_name`` ({input name: shape or dtype}) without the inputs ``sym`` does not read:
    a network may ignore an argument (Gluon's ``hybridize()`` drops it with a warning),
    and MXNet's shape and type inference refuse a name the graph lacks."""
    names = set(sym.list_inputs())
    return {name: value for name, value in by_name.items() if name in names}


def graph_json(sym):
    """The graph as a JSON-like dict (nodes, heads, arg_nodes)."""
    try:
        return json.loads(sym.tojson())
    except mx.base.MXNetError as err:   # MXNet checks some operators only when writing
        raise GraphError("MXNet could not write the graph: %s" % first_line(err)) from err


def load_graph(graph):
    """The Symbol of a JSON-like graph dict (the inverse of :func:`graph_json`)."""
    if "mxnet_version" not in (graph.get("attrs") or {}):
        # Without it MXNet "upgrades" the graph and says so on stderr at every later copy.
        graph = dict(graph, attrs=dict(graph.get("attrs") or {},
                                       mxnet_version=["int", _VERSION_NUMBER]))
    try:
        with native_output([]):
            return mx.sym.load_json(json.dumps(graph))
    except mx.base.MXNetError as err:
        raise GraphError("MXNet rejected a rewritten graph: %s" % first_line(err)) from err


def first_line(err):
    """The informative line of an MXNet error message, for the package's own errors
    (without the time stamp and C++ source location MXNet puts before it)."""
    text = str(err).strip().splitlines()
    line = next((l for l in text if "Check failed" in l or "Error" in l),
                text[0] if text else repr(err))
    return _LOG_PREFIX.sub("", line.strip())
