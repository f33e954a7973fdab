"""The one adapter to MXNet's internals: private APIs and version quirks, no policy.

Everything MXNet-internal the package relies on (the C quantization and calibration
passes, subgraph fusion, Gluon's input/output flattening, parameter loading, block and
parameter internals) is wrapped here behind small functions over public types
(``Symbol``, ``NDArray``, dicts), so that the rest of the code never touches a private
name and a future MXNet change is fixed in one place. Decisions (which backend, which
nodes, which dtypes) are made by the callers (:mod:`gluon_quant.pipeline`,
:mod:`gluon_quant.backends`); these functions only do what they are told.
``tests/test_structure.py`` checks that no other module reads MXNet privates.
"""
import functools
import inspect
import logging
import warnings

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as _mxq
from mxnet.gluon import block as _gluon_block

from ..errors import GluonQuantError, GraphError, NotHybridizableError, ModelExecutionError
from .base import (MXNET_VERSION, MXNetError, native_output, device, graph_json, load_graph,
                   first_line, graph_inputs)
from .entries import check_graph_entries
from . import isa
from .loading import host_arrays
from .children import imperative, params_with_prefix, replace_child, run_error
from .shapes import (entry_positions, infer_graph_shapes, reshape_size_error, ReshapeSizeError,
                     GraphShapes)
from .runtime import (host_view, static_flags, without_static_memory, hybridize_with,
                      inference_mode, CachedCall, unshared, GraphBlock)
from .npmode import (is_np_mode, net_np_mode, is_np_array, legacy_mode, np_scope, as_legacy,
                     as_np)

__all__ = [
    "MXNET_VERSION", "input_names", "trace", "child_blocks", "named_children", "flatten", "regroup",
    "backend_fuse", "quantize_symbol", "set_calibration", "quantize_params", "graph_json",
    "load_graph", "symbol_block", "load_block_params", "adopt_params",
    "host_arrays", "infer_output_dtypes", "infer_graph_dtypes", "infer_graph_shapes",
    "GraphShapes",
    "internal_outputs", "tap_outputs", "run_block", "host_view", "first_line",
    "check_graph_entries", "native_output", "is_initialized", "finish_deferred_init",
    "clear_cached_op", "imperative", "params_with_prefix", "replace_child", "run_error",
    "registered_param_names", "shape_error", "ReshapeSizeError",
    "batchnorm_momentum", "batchnorm_axis", "set_batchnorm_momentum", "device", "MXNetError",
    "int8_lstm_runs",
    "CachedCall", "static_flags", "without_static_memory", "hybridize_with", "inference_mode",
    "unshared",
    "is_np_mode", "net_np_mode", "is_np_array", "legacy_mode", "np_scope", "as_legacy", "as_np", "call_net",
    "parameter_context", "isa",
]

_log = logging.getLogger(__name__)


def input_names(num_inputs):
    """Names Gluon gives the inputs of a traced graph: ``data`` or ``data0..N``."""
    if num_inputs == 1:
        return ["data"]
    return ["data%d" % i for i in range(num_inputs)]


def _var_args_hint(net, num_inputs):
    """What to say when a net whose ``hybrid_forward`` takes ``*args`` fails to trace: how
    many inputs it was given, and that ``num_inputs`` says how many it takes."""
    try:
        params = inspect.signature(net.hybrid_forward).parameters.values()
    except (TypeError, ValueError):
        return ""
    if not any(p.kind == p.VAR_POSITIONAL for p in params):
        return ""
    return (" %s.hybrid_forward takes *args, so its signature does not say how many inputs "
            "it takes; it was traced with %d. If it takes more, pass num_inputs=(that "
            "number): without it, a tuple batch's elements after the first %d are read as "
            "labels." % (type(net).__name__, num_inputs, num_inputs))


def _nesting_hint(layout):
    """What to say when a net traced with nested arguments fails: a batch such as
    ``((x1, x2), label)`` reads its first element as one nested argument."""
    if not layout or not any(isinstance(f, (list, tuple)) for f in layout):
        return ""
    return (" The batches nest their arrays (Gluon's format %s): a tuple or list inside a "
            "batch is one nested argument, as hybridize() reads net(x, [h, c]). If a batch is "
            "(inputs, label) with the inputs grouped, yield them flat ((x1, x2, label)) or "
            "pass input_fn=lambda batch: batch[0]." % (layout,))


def trace(net, num_inputs, dtypes=None, layout=None, np_mode=False):
    """Trace ``net`` into a symbol the way ``hybridize()`` does, without touching its cache.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The fp32 network. It is called with symbols, so its cached op, its
        hybridize flags and its parameters are left as they are.
    num_inputs : int
        Number of (flattened) tensor inputs the network takes.
    dtypes : list of str, optional
        The dtype of each input.
    layout : list, optional
        Gluon's nesting format of the arguments (``[0, [0, 0]]`` for ``net(x, [h, c])``):
        the variables are regrouped into it before the call, as ``hybridize()`` does.
    np_mode : bool, optional
        The net is written for NumPy mode (``npx.set_np()``): it is traced with NumPy
        symbols under NumPy semantics, and its outputs are returned as legacy symbols.

    Returns
    -------
    inputs : list of Symbol
        One variable per input, named as Gluon names them (``data``, ``data0``...).
    output : Symbol
        The grouped outputs.
    out_format : object
        Gluon's description of the output nesting, for :func:`regroup`.
    """
    if not isinstance(net, mx.gluon.HybridBlock):
        raise NotHybridizableError(
            "Expected a mxnet.gluon.HybridBlock, got %s. Only HybridBlocks can be turned into a "
            "graph: rewrite the model with HybridBlock/HybridSequential layers (forward logic in "
            "hybrid_forward using F.*)." % type(net).__name__)
    names = input_names(num_inputs)
    dtypes = dtypes or ["float32"] * num_inputs
    syms = [mx.sym.var(n, dtype=d) for n, d in zip(names, dtypes)]
    try:
        if np_mode and type(net).hybrid_forward is mx.gluon.SymbolBlock.hybrid_forward:
            out = _compose_symbol_block(net, syms)      # its graph is a NumPy one
        else:
            with np_scope(np_mode):
                args = [s.as_np_ndarray() for s in syms] if np_mode else syms
                out = net(*(args if layout is None else regroup(args, layout)))
                out = as_legacy(out)
    except Exception as err:  # any failure here means the forward is not symbolic
        raise NotHybridizableError(
            "%s could not be traced into a symbolic graph with %d input(s) (%s). Make sure "
            "hybrid_forward only uses F.* operators (no .asnumpy(), .shape, Python control flow "
            "on values) and that the number of inputs matches the calibration batches.%s"
            % (type(net).__name__, num_inputs, first_line(err) if isinstance(err, MXNetError)
               else "%s: %s" % (type(err).__name__, err),
               _var_args_hint(net, num_inputs) or getattr(net, "trace_hint", "").format(
                   name=type(net).__name__) or _nesting_hint(layout))) from err
    if isinstance(out, dict) or (isinstance(out, (list, tuple)) and any(
            isinstance(o, dict) for o in out)):
        raise NotHybridizableError(
            "%s returns a dict (keys %s); MXNet cannot trace dict outputs. Return a tuple "
            "of the values instead (e.g. ``return tuple(out[k] for k in sorted(out))``) and "
            "rebuild the dict after calling the quantized net."
            % (type(net).__name__, sorted(map(str, out.keys())) if isinstance(out, dict)
               else "in a list"))
    try:
        flat, out_format = _gluon_block._flatten(out, "output")
    except ValueError as err:
        raise NotHybridizableError(
            "%s returned %s, which MXNet cannot flatten into graph outputs (%s). Return a "
            "symbol or a (nested) tuple/list of symbols." % (type(net).__name__,
                                                            type(out).__name__, err)) from err
    if not all(isinstance(s, mx.sym.Symbol) for s in flat):
        raise NotHybridizableError(
            "%s returned non-symbol outputs when traced; every output must come from F.* "
            "operators." % type(net).__name__)
    group = mx.sym.Group(flat) if len(flat) > 1 else flat[0]
    return syms, group, out_format


def child_blocks(block):
    """The direct child blocks of a Gluon block, in registration order."""
    return list(block._children.values())


def module_params(module):
    """``(arg_params, aux_params)`` of a Module-API ``mx.mod.Module``: bound ones from
    ``get_params()``, a loaded (``Module.load``) but unbound one from what it holds."""
    if module.binded:
        return module.get_params()
    return dict(module._arg_params or {}), dict(module._aux_params or {})


def share_children(view, block):
    """Make the layers of the plain Gluon ``Block`` ``block`` the children of the
    ``HybridBlock`` ``view`` that runs it (one dict: a HybridBlock refuses to register
    Block children); its parameters are not collected through them."""
    object.__setattr__(view, "_children", block._children)


def named_children(block):
    """``(attribute name, child block)`` of a Gluon block's direct children, in order."""
    return list(block._children.items())


def flatten(args, what):
    """Flatten nested lists/tuples of arrays into a list plus Gluon's format descriptor."""
    return _gluon_block._flatten(args, what)


def regroup(flat, fmt):
    """Rebuild the nesting described by ``fmt`` (inverse of :func:`flatten`). ``flat`` has
    no entry for the arguments that were None (``-1`` in ``fmt``, as Gluon writes them):
    they are put back as None."""
    arrays, filled = iter(flat), []

    def walk(sub):
        if isinstance(sub, int):
            filled.append(None if sub == -1 else next(arrays))
        else:
            for inner in sub:
                walk(inner)

    walk(fmt)
    return _gluon_block._regroup(filled + list(arrays), fmt)


def backend_fuse(sym, pass_name, messages=None):
    """Run MXNet's subgraph property ``pass_name`` (e.g. ``'MKLDNN_QUANTIZE'``) on ``sym``.

    What MXNet logs meanwhile is appended to ``messages`` (a list), not printed.
    """
    try:
        with native_output([] if messages is None else messages):
            return sym.get_backend_symbol(pass_name)
    except mx.base.MXNetError as err:
        raise GraphError("MXNet's %s fusion pass failed: %s" % (pass_name, first_line(err))) \
            from err


def quantize_symbol(sym, *, device_type, excluded_nodes, offline_params, dtype, granularity,
                    messages=None):
    """Run MXNet's quantization pass: int8 operators where this build has a kernel.

    Parameters
    ----------
    sym : Symbol
        The (fused) fp32 graph.
    device_type : str
        Where the graph will run (``'cpu'``).
    excluded_nodes : list of str
        Nodes that stay fp32.
    offline_params : list of str
        Parameters quantized ahead of time.
    dtype : str
        ``'auto'``, ``'int8'`` or ``'uint8'``.
    granularity : str
        ``'channel-wise'`` or ``'tensor-wise'``.
    messages : list, optional
        Receives what MXNet logs meanwhile (instead of the terminal).

    Returns
    -------
    qsym : Symbol
        The quantized graph, not yet calibrated.
    calib_names : list of str
        Names of the fp32 tensors whose ranges must be calibrated.
    """
    try:
        with native_output([] if messages is None else messages):
            qsym, calib = _mxq._quantize_symbol(
                sym, device(device_type), excluded_symbols=list(excluded_nodes),
                excluded_operators=[], offline_params=list(offline_params),
                quantized_dtype=dtype, quantize_mode="full",
                quantize_granularity=granularity)
    except mx.base.MXNetError as err:
        raise GraphError("MXNet's quantization pass failed: %s" % first_line(err)) from err
    return qsym, list(calib)


def evaluate_graph(graph, arrays):
    """The first output of a JSON graph dict run once on ``{variable: NDArray}`` (on the
    CPU for a graph of constants only)."""
    ctx = next(iter(arrays.values())).context if arrays else mx.cpu()
    with native_output([]):     # "Subgraph backend MKLDNN is activated" when it binds
        return load_graph(graph).eval(ctx=ctx, **arrays)[0]


def set_calibration(qsym, ranges, messages=None):
    """Write ``{tensor: (min, max)}`` into a quantized graph with MXNet's own setter."""
    if not ranges:
        return qsym
    with native_output([] if messages is None else messages):
        return _mxq._calibrate_quantized_sym(qsym, dict(ranges))


def quantize_params(qsym, arg_params):
    """Quantize offline the parameters the quantized graph asks for: each ``NAME_quantize``
    input (with ``_min`` and ``_max``) whose ``NAME`` is a parameter, as MXNet's
    ``_quantize_params`` does (int8, symmetric over the parameter's range) for names ending
    in ``weight`` or ``bias`` only: MXNet's quantization pass asks for any offline
    parameter, and a ``Constant`` position table (GluonNLP's encoders) or a parameter a
    user named ``kernel`` or ``table`` read by an int8 ``Embedding`` was left missing."""
    quantized = {}
    for name in qsym.list_arguments():
        base = name[:-len("_quantize")] if name.endswith("_quantize") else None
        if base is not None and base in arg_params and name not in arg_params:
            param = arg_params[base]
            value, low, high = mx.nd.contrib.quantize(
                data=param, min_range=mx.nd.min(param), max_range=mx.nd.max(param),
                out_type="int8")
            quantized.update({name: value, name + "_min": low, name + "_max": high})
        elif name in arg_params:
            quantized[name] = arg_params[name]
    return quantized


def symbol_block(sym, names, params, ctx, dtypes=None, trainable=True, copy=True):
    """Build a ``SymbolBlock`` over ``sym`` whose parameters are copies of ``params``.

    Parameters
    ----------
    sym : Symbol
    names : list of str
        Input variable names.
    params : dict of str to NDArray
        At least every non-input argument and auxiliary state of ``sym``; entries the
        graph does not use are ignored, so callers need not subset a model's parameters.
    ctx : Context
    dtypes : list of str, optional
        Input dtypes (float32 by default).
    trainable : bool, optional
        False for a block only run forward: no gradient buffers.
    copy : bool, optional
        False: the block reads the arrays of ``params`` themselves (already on ``ctx``;
        inference only, see :func:`adopt_params`), which must then stay unchanged.
    """
    dtypes = dtypes or ["float32"] * len(names)
    inputs = [mx.sym.var(n, dtype=d) for n, d in zip(names, dtypes)]
    with native_output([]):     # Gluon's type inference prints its arguments when partial
        block = GraphBlock(sym, inputs)
    if not copy:
        return adopt_params(block, params)
    return load_block_params(block, params, ctx, trainable=trainable)


def symbol_block_graph(block):
    """The ``(input symbols, output symbol)`` a Gluon ``SymbolBlock`` runs."""
    inputs, output = block._cached_graph
    return list(inputs), output


def run_training_mode(sym, input_names, inputs, params, ctx):
    """Run ``sym`` once in training mode (BatchNorm normalises with batch statistics);
    ``params`` (copied) hold its other arguments and auxiliary states. Its outputs."""
    block = symbol_block(sym, input_names, params, ctx)
    with mx.autograd.train_mode():
        out = block(*inputs)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def load_block_params(block, params, ctx, trainable=True):
    """Set every parameter of a ``SymbolBlock`` (or subclass) from ``params``; return it
    (with ``trainable=False``: no gradient buffers, ``grad_req='null'``)."""
    for name, param in _checked_params(block, params).items():
        if not trainable:
            param.grad_req = "null"
        # _load_init copies the array and takes its dtype (int8 weights stay int8).
        param._load_init(params[name], ctx, cast_dtype=True, dtype_source="saved")
        param.shape, param.init = param._data[0].shape, _KeptValue(param._data[0])
    return block


class _KeptValue(mx.init.Initializer):
    """The initializer of a loaded block's parameter: re-initialization gives back its
    value. ``Block.initialize`` hands every parameter's own ``init`` precedence over the
    one it is given, so ``net.initialize(force_reinit=True)`` over a model holding an
    int8 block (a quantized backbone under a new head) keeps the int8 weights and ranges
    instead of emptying them (every later call failed: "not initialized yet")."""

    def __init__(self, value):
        super().__init__()
        self._value = value

    def _init_weight(self, _, arr):
        arr[:] = self._value

    def dumps(self):
        return "kept value"


def _checked_params(block, arrays):
    params = block.collect_params()
    missing = sorted(n for n in params if n not in arrays)
    if missing:
        raise GraphError("The graph needs parameters the network does not have: %s"
                         % ", ".join(missing[:10]))
    return params


def adopt_params(block, arrays):
    """Give every parameter of a ``SymbolBlock`` its NDArray from ``arrays`` itself, with no
    gradient buffer (inference only); return the block. ``load_block_params`` copies each
    one (an engine operation per parameter, twice the memory while loading)."""
    for name, param in _checked_params(block, arrays).items():
        data = arrays[name]
        if param.shape and (len(param.shape) != data.ndim or any(
                known not in (0, -1, dim) for known, dim in zip(param.shape, data.shape))):
            raise GraphError("The parameter %r has shape %s, the graph expects %s."
                             % (name, data.shape, param.shape))
        param.grad_req = "null"
        param.shape, param.dtype = data.shape, data.dtype
        ctx, ctx_map = data.context, [[], []]
        ctx_map[ctx.device_typeid & 1] = [None] * ctx.device_id + [0]
        # what Parameter._init_impl sets, with the array itself instead of a copy
        param._deferred_init, param._ctx_list, param._ctx_map = (), [ctx], ctx_map
        param._data, param._grad = [data], None
        param.init = _KeptValue(data)
    return block


def infer_output_dtypes(sym, input_dtypes):
    """Map every internal output name of ``sym`` to its inferred dtype name (or None)."""
    internals = sym.get_internals()
    try:
        with native_output([]):     # MXNet prints the arguments before raising
            _, out_types, _ = internals.infer_type_partial(
                **graph_inputs(internals, input_dtypes))
    except mx.base.MXNetError:
        return {}
    return {name: (None if t is None else np.dtype(t).name)
            for name, t in zip(internals.list_outputs(), out_types)}


def param_shapes(net, graph, input_shapes):
    """Shape of each of ``net``'s parameters, a deferred one inferred from its graph.

    Parameters
    ----------
    net : HybridBlock
        The network (a parameter of a net never run has zeros, or -1 in NumPy mode, where
        its shape is deferred).
    graph : dict
        Its traced JSON graph.
    input_shapes : dict of str to tuple, or None
        The graph inputs' shapes (None: deferred shapes stay as they are).

    Returns
    -------
    dict
        Parameter name -> shape.
    """
    shapes = {name: tuple(p.shape or ()) for name, p in net.collect_params().items()}
    known = lambda shape: bool(shape) and all(d > 0 for d in shape)    # noqa: E731
    if input_shapes and not all(map(known, shapes.values())):
        inferred = infer_graph_shapes(graph, input_shapes)
        shapes = {name: shape if known(shape) else (inferred.get((name, 0)) or shape)
                  for name, shape in shapes.items()}
    return shapes


def internal_outputs(graph, entries, inputs, params, ctx):
    """The values of chosen tensors inside a graph on one set of inputs.

    The arrays are kept as MXNet's operators left them (a oneDNN layout stays a oneDNN
    layout), so feeding them to a piece of the same graph runs it as in the whole graph.

    Parameters
    ----------
    graph : dict
        A JSON graph.
    entries : list of (str, int)
        ``(node name, output index)`` of each tensor wanted.
    inputs : dict of str to NDArray
        The graph's inputs.
    params : dict of str to NDArray
        Its parameters.
    ctx : Context

    Returns
    -------
    dict
        ``(node name, output index) -> NDArray``.
    """
    found = {e: inputs[e[0]] for e in entries if e[0] in inputs and e[1] == 0}
    wanted = [e for e in entries if e not in found]
    if not wanted:
        return found
    internals = load_graph(graph).get_internals()
    position_of = entry_positions(graph, internals)
    missing = [e for e in wanted if e not in position_of]
    if not position_of or missing:
        raise GraphError("Could not find the tensors %s among the graph's internal outputs."
                         % (missing or wanted)[:3])
    group = mx.sym.Group([internals[position_of[e]] for e in wanted])
    names = list(inputs)
    _, values = forward_block(group, names, params, ctx, [inputs[n] for n in names],
                              "Running the graph to its inner tensors")
    found.update(zip(wanted, values))
    return found


def forward_block(sym, names, params, ctx, inputs, what):
    """An inference block over ``sym`` (inputs ``names``, parameters copied from
    ``params``) and its outputs on ``inputs``, MXNet errors reported as ``what`` failing.

    MXNet builds the backward graph of every block it runs, and aborts where an output
    comes from an operator without a gradient (MXNet 1.9.1's int8 ``elemwise_add``, read
    alone or tapped inside an int8 graph): the outputs then go through ``BlockGrad`` (the
    identity; it may hand a oneDNN layout back as a plain one, so it is not used
    otherwise)."""
    dtypes = [a.dtype for a in inputs]
    block = symbol_block(sym, names, params, ctx, dtypes=dtypes, trainable=False)
    try:
        return block, run_block(block, inputs, what)
    except ModelExecutionError as err:
        if "non-differentiable" not in str(err):
            raise
    stopped = mx.sym.Group([mx.sym.BlockGrad(out) for out in sym])
    block = symbol_block(stopped, names, params, ctx, dtypes=dtypes, trainable=False)
    return block, run_block(block, inputs, what)


def infer_graph_dtypes(graph, input_names):
    """:func:`infer_output_dtypes` of a JSON graph dict whose inputs are float32."""
    return infer_output_dtypes(load_graph(graph), {n: "float32" for n in input_names})


def tap_outputs(sym, node_names, input_names):
    """A graph computing the float32 output of each named node of ``sym``.

    Quantized nodes (outputs data, min, max in int8/uint8) are dequantized, so the
    taps of an int8 graph are comparable with those of its fp32 graph.

    Parameters
    ----------
    sym : Symbol
    node_names : list of str
        Nodes whose first output is wanted.
    input_names : list of str
        The graph's data inputs (float32), for dtype inference.

    Returns
    -------
    Symbol
        A group with one float32 output per name, in order.
    """
    internals = sym.get_internals()
    outputs = internals.list_outputs()
    dtypes = infer_output_dtypes(sym, {n: "float32" for n in input_names})
    taps = []
    for name in node_names:
        out = name + "_output"
        if out not in outputs:
            out = name + "_output0"
        if out not in outputs:
            raise GraphError("The graph has no node %r to tap." % name)
        tensor = internals[outputs.index(out)]
        if dtypes.get(out) in ("int8", "uint8"):
            # Quantized operators name their range outputs X_output_min or X_min_output.
            base = out[:-len("0")] if out.endswith("_output0") else out
            # (a requantize: X_output1 and X_output2)
            bounds = [next((b for b in (base + "_" + k, name + "_" + k + "_output",
                                        name + "_output%d" % i) if b in outputs), None)
                      for i, k in ((1, "min"), (2, "max"))]
            if None in bounds:
                raise GraphError("Quantized node %r exposes no min/max range." % name)
            tensor = mx.sym.contrib.dequantize(
                tensor, *(internals[outputs.index(b)] for b in bounds), out_type="float32")
        taps.append(tensor)
    return mx.sym.Group(taps)


def settle_earlier_failures():
    """Wait for the work MXNet still has in flight from before; an error it left is logged
    (a warning) and cleared, not raised.

    MXNet raises an asynchronous operator failure at the next wait, whoever waits: a
    channels-last convolution the user's fp32 net ran imperatively before ``quantize()``
    failed in the calibration pass, reported as a failure of the pass (the pipeline runs
    that net's convolutions channels-first, :mod:`gluon_quant.graph.layout`).
    """
    try:
        mx.nd.waitall()
    except mx.base.MXNetError as err:
        _log.warning("An MXNet operation run before gluon_quant was called failed (MXNet "
                     "reports such failures at the next wait, so it surfaced here): %s. Its "
                     "result is wrong; gluon_quant goes on without it.", first_line(err))


def run_block(block, inputs, what):
    """Call a block, turning MXNet errors into package errors naming ``what`` failed.

    Returns the list of its outputs, nested ones (``(out, [h, c])``) flattened."""
    try:
        with warnings.catch_warnings():
            # A tapped sub-graph need not read every input ("The 1-th input to
            # HybridBlock is not used by any computation"): expected here.
            warnings.filterwarnings("ignore", message=".*input to HybridBlock is not used")
            out = block(*inputs)
        flat = flatten(out, "output")[0] if isinstance(out, (list, tuple)) else [out]
        mx.nd.waitall()
        return flat
    except mx.base.MXNetError as err:
        raise ModelExecutionError("%s failed: %s" % (what, first_line(err))) from err


def accepts_shapes(sym, shapes):
    """Whether shape inference of ``sym`` accepts inputs of ``shapes`` ({name: shape}).

    Graphs traced from nets that loop over a fixed batch size (GluonCV's R-CNNs build one
    branch per image of ``batch_size``) reject any other batch size here, before running.
    """
    return shape_error(sym, shapes) is None


def shape_error(sym, shapes):
    """MXNet's error when shape inference of ``sym`` fails for inputs of ``shapes``
    ({name: shape}), or None when it accepts them.

    MXNet's inference lets a ``Reshape`` to a shape given in full (``(1, C, H, W)``, as
    nets that fix their batch size write it) take an input of another size, and the graph
    then reads or writes past the input's memory when it runs (a batch of 2 through a
    net reshaping to batch 1 corrupted the heap); such a reshape is an error here too."""
    try:
        sym.infer_shape_partial(**graph_inputs(sym, shapes))
    except MXNetError as err:
        return err
    return reshape_size_error(sym, shapes)


def is_initialized(param):
    """Whether a Gluon ``Parameter`` has its data (deferred initialization not pending)."""
    return param._data is not None


def never_initialized(param):
    """Whether a Gluon ``Parameter`` was never given an initializer (no data and no deferred
    initialization pending): ``net.initialize()`` or ``load_parameters`` was not called."""
    return param._data is None and not param._deferred_init


def _compose_symbol_block(block, syms):
    """The graph of a ``SymbolBlock`` loaded in NumPy mode, on legacy variables ``syms``:
    MXNet 1.9.1's ``SymbolBlock`` cannot be called with NumPy symbols ("'<_Symbol ...>' is
    not iterable"), so its graph is composed here as a legacy one."""
    inputs, output = block._cached_graph
    graph = as_legacy(output)(**{var.name: sym for var, sym in zip(inputs, syms)})
    return regroup(list(graph), block._out_format)


def call_net(net, args, np_mode=False):
    """Call the user's fp32 ``net`` on legacy arrays ``args`` (nested as it takes them) the
    way it was written: NumPy arrays under NumPy semantics for a NumPy-mode net. Its
    outputs come back as legacy arrays. Arrays on another context than the net's
    parameters (an int8 net built with ``ctx=cpu(1)`` over a net on ``cpu(0)``) are run
    where the parameters are, and the outputs come back to the arrays' context."""
    here = next(iter(_contexts(args)), None)
    home = parameter_context(net, initialized_only=True) or here
    args = _in_context(args, home) if here != home else args
    if not np_mode:
        out = net(*args)
    else:
        with np_scope(True):
            out = as_legacy(net(*as_np(list(args))))
    return _in_context(out, here) if here != home else out


def parameter_context(net, initialized_only=False):
    """The context of ``net``'s first parameter (the first of its copies when it was
    initialized on several, for data-parallel training), or None when it has none yet.
    Parameters waiting for their shapes (deferred) count, unless ``initialized_only``."""
    for param in net.collect_params().values():
        if param._data is not None or (param._deferred_init and not initialized_only):
            return param.list_ctx()[0]
    return None


def _contexts(value):
    if isinstance(value, (list, tuple)):
        return [ctx for v in value for ctx in _contexts(v)]
    return [value.context] if isinstance(value, mx.nd.NDArray) else []


def _in_context(value, ctx):
    if isinstance(value, (list, tuple)):
        return type(value)(_in_context(v, ctx) for v in value)
    return value.as_in_context(ctx) if isinstance(value, mx.nd.NDArray) else value


def finish_deferred_init(net, inputs, layout=None, np_mode=False):
    """Give the deferred parameters of ``net``'s graph their shapes and values from
    ``inputs`` (NDArrays) by shape inference of its traced graph, without running it.
    Returns False where that is not possible (the caller then runs the net once, as
    Gluon does).

    Not running the net matters where it cannot run imperatively although its graph can
    after gluon_quant's rewrites: a channels-last convolution's kernel fails on MXNet
    1.9.1's CPU, and its asynchronous error surfaced later, in the calibration pass."""
    try:
        syms, out, _ = trace(net, len(inputs), [np.dtype(a.dtype).name for a in inputs],
                             layout, np_mode)
        with native_output([]):
            args, _, aux = out.infer_shape_partial(**graph_inputs(
                out, {sym.name: tuple(a.shape) for sym, a in zip(syms, inputs)}))
        known = dict(zip(out.list_arguments(), args or []))
        known.update(zip(out.list_auxiliary_states(), aux or []))
        graph_params = [p for p in net.collect_params().values() if p.name in known]
        with np_scope(np_mode):     # the arrays of the net's own kind (mxnet.np in NumPy mode)
            for param in graph_params:
                shape = known[param.name]
                if param._data is None and param._deferred_init and shape and all(shape):
                    param.shape = tuple(shape)
                    param._finish_deferred_init()
    except (MXNetError, GluonQuantError, AttributeError, KeyError, TypeError, ValueError,
            AssertionError, mx.gluon.parameter.DeferredInitializationError) as err:
        _log.debug("Deferred initialization by shape inference failed (%s); running the "
                   "net once instead.", first_line(err))
        return False
    return all(is_initialized(p) for p in graph_params)


def clear_cached_op(block):
    """Drop a HybridBlock's cached graph, so that its next call traces it again."""
    block._clear_cached_op()


def registered_param_names(block):
    """Names under which a block registered its own parameters (``self.weight = ...``)."""
    return set(getattr(block, "_reg_params", {}))


def batchnorm_momentum(layer):
    """A Gluon ``BatchNorm`` layer's momentum."""
    return layer._kwargs.get("momentum", 0.9)


def batchnorm_axis(layer):
    """A Gluon ``BatchNorm`` layer's channel axis (1 unless built with another)."""
    return int(layer._kwargs.get("axis", 1))


def set_batchnorm_momentum(layer, momentum):
    """Set a Gluon ``BatchNorm`` layer's momentum (used by its next recorded pass)."""
    layer._kwargs["momentum"] = momentum


@functools.lru_cache(maxsize=1)
def int8_lstm_runs():
    """Whether this process can run MXNet's int8 LSTM: ``True`` or the reason it can't.

    On CPUs with AVX512-VNNI (Cascade Lake and later), oneDNN 2.4.4 (bundled with MXNet
    1.9.1) picks a blocked int8 weight layout for its LSTM (``abdEC32e4c`` with
    compensation) that it has no reorder for from MXNet's ``ldgoi`` weights, so every int8
    LSTM fails at its first forward with "could not create a primitive descriptor for a
    reorder primitive", MXNet's own unit-test sizes included. Capping oneDNN's ISA
    (``DNNL_MAX_CPU_ISA=AVX512_CORE`` before the process's first oneDNN primitive) makes it
    use its packed-GEMM int8 LSTM, which runs, but takes VNNI away from every int8 layer.

    A 5-step, 16-unit quantized LSTM runs once per process (the answer is a fact about the
    process, so it is cached); it fails with an ordinary MXNet error, never a crash.
    """
    try:
        sym = mx.sym.contrib.quantized_rnn(
            data=mx.sym.var("data", dtype="uint8"), state_size=16, num_layers=1,
            mode="lstm", state_outputs=False, name="probe")
        names = sym.list_arguments()
        shapes, _, _ = sym.infer_shape(data=(5, 2, 16))
        args = {n: mx.nd.zeros(s, dtype="uint8" if n == "data" else "float32")
                for n, s in zip(names, shapes)}
        args[names[1]][:] = 0.01
        args[names[-2]][:] = -1.0
        args[names[-1]][:] = 1.0
        with native_output([]):
            out = sym.bind(mx.cpu(), args, grad_req="null").forward(is_train=False)[0]
            finite = bool(np.isfinite(out.asnumpy()).all())
        return True if finite else "the int8 LSTM probe returned non-finite values"
    except mx.base.MXNetError as err:
        return first_line(err) + (
            " (oneDNN 2.4.4 int8 LSTM on an AVX512-VNNI CPU; DNNL_MAX_CPU_ISA=AVX512_CORE "
            "works around it at the cost of VNNI for all int8 layers)")


def param_reader(net):
    """``read(name) -> numpy array or None``: the current value of one of ``net``'s
    parameters by its name (None where it has no value yet, or no such parameter)."""
    params = dict(net.collect_params().items())

    def read(name):
        param = params.get(name)
        if param is None or param._data is None:
            return None
        value = param.list_data()[0]
        return (value.as_nd_ndarray() if hasattr(value, "as_nd_ndarray") else value).asnumpy()
    return read
