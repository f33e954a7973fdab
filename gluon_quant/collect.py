"""The calibration pass: run the fused fp32 graph over batches and feed a calibrator.

The fused fp32 graph runs with the tensors to calibrate exposed as extra outputs (free:
they are computed anyway).  Two things keep the pass close to one plain forward pass:

* no copy: each output is flattened in the graph (so oneDNN's blocked layouts are
  reordered inside the multi-threaded forward pass), written into one of two reused sets
  of arrays, and read in place through a numpy view of their memory
  (:func:`gluon_quant._mxnet.host_view`);
* overlap: MXNet runs operators asynchronously on its own threads, so the forward pass of
  batch ``i + 1`` is issued before the statistics of batch ``i`` are computed (numpy's
  reductions release the GIL).  At most two batches of activations are alive at a time.

The statistics themselves (min/max and an exactly mergeable histogram, bounded by
tensors x bins) are :class:`~gluon_quant.calib.statistics.TensorStatistics`.
"""
import logging
import re

import mxnet as mx

from . import _mxnet
from .data import channels_last_hint, check_finite, describe
from .errors import (EmptyCalibrationError, GraphError, InputMismatchError, ModelExecutionError,
                     NotHybridizableError)
from .graph.inspect import GraphView
from .progress import progress_bar

__all__ = ["collect_statistics", "build_runner", "check_graph_shapes", "range_sources"]

_log = logging.getLogger(__name__)


def build_runner(fused, outputs, input_names, params, ctx):
    """A callable computing the internal tensors ``outputs`` of the fp32 graph ``fused``.

    Parameters
    ----------
    fused : Symbol
        The fused fp32 graph.
    outputs : list of str
        Internal output names (e.g. ``'sg_mkldnn_conv_bn_act_0_output'``), in order.
    input_names : list of str
        The graph's input names.
    params : dict of str to NDArray
        fp32 parameters (those the outputs depend on are used).
    ctx : mxnet.Context

    Returns
    -------
    _Runner or None
        Called with the input NDArrays, it returns the tensors flattened to 1-D (C order);
        None when ``outputs`` is empty.
    """
    if not outputs:
        return None
    internals = fused.get_internals()
    sources = range_sources(GraphView(_mxnet.graph_json(fused)), outputs)
    outputs = [sources.get(n, n) for n in outputs]
    # Flattened in the graph: oneDNN operators may leave their outputs in a blocked
    # layout, and the reorder to the plain layout is then part of the (multi-threaded,
    # asynchronous) forward pass instead of a slow synchronous reorder when read.
    at = {name: i for i, name in enumerate(internals.list_outputs())}   # by name: O(N) each
    group = mx.sym.Group([mx.sym.reshape(internals[at[n]], shape=(-1,)) for n in outputs])
    return _Runner(group, input_names, params, ctx)


#: Operators whose output is the largest of some of their input's values.
_MAX_REDUCTIONS = {"Pooling", "max", "max_axis", "_npi_max"}


def range_sources(view, names):
    """``{tensor: tensor}``: where a calibrated tensor's statistics are taken from instead.

    A tensor whose every reader is a max reduction (a max pooling, global or windowed;
    ``max`` over axes) reaches the rest of the net only through the largest values of its
    windows. Rounding to a range commutes with taking a maximum, so the int8 error the
    net sees is that of the pooled values rounded to the tensor's range: the range is
    chosen on their statistics (those of the first reader). Calibrated on the tensor
    itself, a clipping calibrator cuts exactly the tail a global max picks (a random-
    weight PointNet's max over 1024 points: logit cosine 0.953 -> 0.974 with MSE ranges,
    0.985 -> 0.993 with entropy).

    Parameters
    ----------
    view : GraphView
        The fused fp32 graph.
    names : iterable of str
        Calibrated tensor keys (``<node>_output``).

    Returns
    -------
    dict of str to str
    """
    readers = {}
    for node in view:
        for name in set(node.inputs):
            readers.setdefault(name, []).append(node)
    sources = {}
    for key in names:
        node = key[:-len("_output")] if key.endswith("_output") else None
        found = readers.get(node, ())
        if node is None or not found or node in view.outputs \
                or not all(_is_max(r) for r in found):
            continue
        sources[key] = found[0].name + "_output"
    return sources


def _is_max(node):
    if node.op not in _MAX_REDUCTIONS or len(node.inputs) != 1:
        return False
    return node.op != "Pooling" or node.attr("pool_type", "max") == "max"


class _Runner:
    """Runs a graph with MXNet's ``CachedOp`` into two alternating sets of output arrays.

    Fresh outputs for every batch would cost a page fault per 4 KB of activations;
    two sets are enough because the pass reads batch ``i`` while batch ``i + 1`` runs,
    and issues batch ``i + 2`` only after batch ``i`` is read.

    With static memory, the second call at each input shape is waited for: where MXNet's
    static CachedOp fails there on a graph that runs without it (resnet18_v1 on 8x8
    inputs), the graph runs without static memory from then on.
    """

    def __init__(self, sym, input_names, params, ctx):
        order = sym.list_inputs()
        missing = [n for n in order if n not in input_names and n not in params]
        if missing:
            raise GraphError("The graph needs parameters the network does not have: %s"
                             % ", ".join(sorted(missing)[:10]))
        self._sym = sym
        flags = _mxnet.static_flags(sym)
        self._static = bool(flags)
        self._op = mx.nd.CachedOp(sym, flags=list(flags.items()))
        self._args = [None if n in input_names else params[n].as_in_context(ctx)
                      for n in order]
        self._slots = [(order.index(n), i) for i, n in enumerate(input_names) if n in order]
        self._shapes = None   # input shapes the buffers are for
        self._buffers = [None, None]
        self._turn = 0
        self._check = False   # wait for the next call at these shapes (the second)

    @property
    def symbol(self):
        """Symbol: the graph run."""
        return self._sym

    def __call__(self, *inputs):
        with _mxnet.inference_mode():
            if not (self._check and [tuple(x.shape) for x in inputs] == self._shapes):
                return self._run(inputs)
            try:
                out = self._run(inputs)
                for array in out:
                    array.wait_to_read()
                self._check = False
                return out
            except mx.base.MXNetError as err:
                return self._without_static_memory(inputs, err)

    def _without_static_memory(self, inputs, err):
        static_op = self._op
        self._op = mx.nd.CachedOp(self._sym)
        self._shapes, self._buffers, self._check, self._static = None, [None, None], False, False
        try:
            out = self._run(inputs)
            for array in out:
                array.wait_to_read()
        except mx.base.MXNetError:
            self._op, self._static = static_op, True
            raise err from None         # not a static-memory failure: MXNet's own words
        _log.warning("MXNet fails to run the fp32 graph with static memory (%s); it runs "
                     "without it.", _mxnet.first_line(err))
        return out

    def _run(self, inputs):
        args = list(self._args)
        for slot, i in self._slots:
            args[slot] = inputs[i]
        shapes = [tuple(x.shape) for x in inputs]
        if shapes != self._shapes:  # first call, or a batch of another size
            out = self._op(*args)
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            self._shapes, self._buffers, self._turn = shapes, [out, None], 1
            self._check = self._static      # the next call at these shapes is waited for
            return out
        turn = self._turn
        if self._buffers[turn] is None:
            self._buffers[turn] = [mx.nd.empty(a.shape, ctx=a.context, dtype=a.dtype)
                                   for a in self._buffers[1 - turn]]
        self._op(*args, out=self._buffers[turn])
        self._turn = 1 - turn
        return self._buffers[turn]


def collect_statistics(batches, *, convert, make_runner, calibrator, input_names, tensor_names,
                       progress=True, total=None):
    """Feed ``calibrator`` the named tensors of every batch.

    Parameters
    ----------
    batches : iterator
        Calibration batches.
    convert : callable
        ``convert(batch)`` returns the list of input NDArrays.
    make_runner : callable
        ``make_runner(inputs)`` returns a callable (see :func:`build_runner`) computing the
        non-input tensors of ``tensor_names`` (in order), or None when only inputs are
        calibrated; called once, on the first batch.
    calibrator : Calibrator
    input_names : list of str
        Names of the graph inputs, in order.
    tensor_names : list of str
        Tensors to calibrate (inputs among them are taken from the batch).
    progress : bool
        Show a progress bar (with an ETA when ``total`` is known) on a terminal.
    total : int, optional
        Number of batches, for the progress bar's ETA.

    Returns
    -------
    int
        Number of batches seen.

    Raises
    ------
    EmptyCalibrationError
        No batch was seen.
    InputMismatchError
        The network could not run on a batch.
    """
    inputs_set = set(input_names)
    wanted_inputs = inputs_set & set(tensor_names)
    outputs = [n for n in tensor_names if n not in inputs_set]
    runner = None
    pending = None  # (inputs, outputs) of the batch whose statistics are not taken yet
    seen = 0
    for batch in progress_bar(batches, enabled=progress, desc="calibrating", total=total):
        inputs = convert(batch)
        if runner is None and outputs:
            runner = make_runner(inputs)
        outs = _forward(runner, inputs, input_names) if outputs else []  # returns before it is computed
        for name, array in zip(input_names, inputs):
            host = _mxnet.host_view(array)
            check_finite(name, host)
            if name in wanted_inputs:
                calibrator.collect(name, host)
        if pending is not None:
            _collect_outputs(calibrator, outputs, *pending)
        pending = (inputs, outs)
        seen += 1
    if pending is not None:
        _collect_outputs(calibrator, outputs, *pending)
    if seen == 0:
        raise EmptyCalibrationError(
            "calib_data yielded no batch (empty, or an iterator/generator already "
            "exhausted). Pass a non-empty iterable, or a fresh generator.")
    return seen


def check_graph_shapes(sym, input_names, inputs, run_net=None):
    """Raise :class:`InputMismatchError` when MXNet's shape inference of the graph ``sym``
    fails for the shapes of ``inputs`` (a batch the network cannot take, or a network that
    runs only imperatively), before anything runs: the error is then the same whichever
    stage would have met it first (a net with no tensor to calibrate meets it in its int8
    graph's first run).

    ``run_net(as_graph)``, when given, runs the user's network on ``inputs`` (layer by
    layer, or as the one graph ``net.hybridize()`` makes) and returns what it raised, None,
    or NotImplemented (it cannot run as one graph). A failure inside the graph is then
    blamed on the inputs only where the network fails on them layer by layer too:
    otherwise it is MXNet failing on the network's graph (:class:`NotHybridizableError`)
    or on gluon_quant's fused one (:class:`GraphError`).
    """
    err = _mxnet.shape_error(sym, {n: tuple(a.shape) for n, a in zip(input_names, inputs)})
    if err is None:
        return
    mismatch = _mismatch(err, inputs)
    if run_net is not None and isinstance(mismatch, InputMismatchError) and not isinstance(
            err, _mxnet.ReshapeSizeError) and _FAILED_OPERATOR.search(str(err)) and \
            run_net(False) is None:
        graph_err = run_net(True)
        mismatch = _graph_only(err, inputs, err if graph_err is NotImplemented else graph_err,
                               "traced from its forward" if graph_err is NotImplemented
                               else "as after net.hybridize()")
    if type(mismatch) is InputMismatchError:
        mismatch = InputMismatchError(str(mismatch) + _batch_axis_hint(sym, input_names, inputs))
    raise mismatch from err


def _batch_axis_hint(sym, input_names, inputs):
    """A sentence for batches that are single samples (the graph takes their shapes with a
    leading axis of 1 added: a list of ``dataset[i]`` images, or a ``Dataset``'s samples
    iterated by hand); empty otherwise."""
    shapes = {n: tuple(a.shape) for n, a in zip(input_names, inputs)}
    if not shapes or _mxnet.shape_error(sym, {n: (1,) + s for n, s in shapes.items()}):
        return ""
    return (" Each batch looks like one sample without its batch axis (the network takes "
            "%s): give batches of samples, e.g. gluon.data.DataLoader(dataset, "
            "batch_size=32), or add the axis to a single sample with x.expand_dims(0)."
            % ", ".join(str((1,) + s) for s in shapes.values()))


def _graph_only(err, inputs, graph_err, how):
    """The error for a graph MXNet refuses on a batch the network takes layer by layer;
    ``graph_err``: what running the network as one graph raised (None: it ran)."""
    shapes = [describe(a) for a in inputs]
    if graph_err is None:
        return GraphError(
            "gluon_quant's fused graph of the network fails MXNet's shape inference for batch "
            "inputs %s (%s), although the network runs on them as a graph and layer by "
            "layer. This is a gluon_quant bug: please report it with the network; keeping "
            "the layer MXNet names fp32 (exclude=) may work around it."
            % (shapes, _mxnet.first_line(err)))
    hint = (" In a graph, + - * / between arrays of different shapes do not broadcast "
            "(use F.broadcast_add/sub/mul/div).") if re.search(
                r"Incompatible attr|broadcast", str(graph_err)) else ""
    line = _mxnet.first_line(graph_err)
    if not line.startswith(type(graph_err).__name__):
        line = "%s: %s" % (type(graph_err).__name__, line)
    return NotHybridizableError(
        "The network runs on batch inputs %s layer by layer, but MXNet fails on it as one "
        "graph, %s (%s): quantize() needs that graph, and the inputs are not at fault.%s"
        % (shapes, how, line, hint))


def _forward(runner, inputs, input_names):
    try:
        out = runner(*inputs)
    except mx.base.MXNetError as err:
        mismatch = _mismatch(err, inputs)
        if type(mismatch) is InputMismatchError and hasattr(runner, "symbol"):
            mismatch = InputMismatchError(
                str(mismatch) + _batch_axis_hint(runner.symbol, input_names, inputs))
        raise mismatch from err
    return out if isinstance(out, (list, tuple)) else [out]


def _collect_outputs(calibrator, names, inputs, outs):
    for name, out in zip(names, outs):
        try:
            host = _mxnet.host_view(out)
        except mx.base.MXNetError as err:  # an asynchronous failure surfaces here
            raise _mismatch(err, inputs) from err
        calibrator.collect(name, host)


#: How MXNet names the operator whose shape or type inference failed.
_FAILED_OPERATOR = re.compile(r"(?:Error in operator|in node) ([^\s:]+)")


#: What MXNet says when inputs do not fit a graph (shape or type inference, rank checks).
_INPUT_SIGNS = re.compile(r"[Ss]hape|ndim|InferType|dtype|Incompatible attr|dimension|"
                          r"should be \d+D|size")


def _mismatch(err, inputs):
    line = _mxnet.first_line(err)
    shapes = [describe(a) for a in inputs]
    if not _INPUT_SIGNS.search(str(err)):
        # oneDNN failing to build a primitive ("could not create a primitive descriptor
        # for a reorder primitive") says nothing about the inputs: not theirs to fix.
        return ModelExecutionError(
            "Calibration forward pass failed inside MXNet: %s (batch inputs %s; MXNet "
            "reported no shape or type problem with them). This is not a problem with your "
            "inputs: please report it with the network; keeping the layer around the "
            "failure in fp32 (exclude=) may work around it." % (line, shapes))
    found = _FAILED_OPERATOR.search(str(err))
    if found is None or not re.search(r"Incompatible attr|[Ss]hape|InferType|dtype", str(err)):
        return InputMismatchError(
            "Calibration forward pass failed: %s. The batch inputs were %s; check that they "
            "match the network's expected shapes.%s" % (line, shapes, channels_last_hint(inputs)))
    # Inside the graph: wrong inputs, or (two tensors that do not fit each other) a
    # network that only runs imperatively.
    hint = (" If they do, the network runs only imperatively: in a hybridized graph, "
            "+ - * / between arrays of different shapes do not broadcast (use "
            "F.broadcast_add/sub/mul/div); `net.hybridize(); net(*batch)` raises the same "
            "error then.") if re.search(r"Incompatible attr|broadcast", str(err)) else ""
    hint = channels_last_hint(inputs) or hint
    return InputMismatchError(
        "Calibration forward pass failed: MXNet's shape/type inference fails inside the "
        "network's graph, at operator %r (%s), for batch inputs %s; check that they match "
        "the network's expected shapes.%s" % (found.group(1), line, shapes, hint))
