"""The only module that touches MXNet's private APIs and version quirks.

Everything MXNet-internal the package relies on (the C quantization pass, the
calibration-table setter, Gluon's input/output flattening, parameter loading)
is wrapped here behind small functions over public types (``Symbol``,
``NDArray``, dicts), so that the rest of the code never imports a private name
and a future MXNet change is fixed in one place.
"""
import ctypes
import json
import logging

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as _mxq
from mxnet.gluon import block as _gluon_block

from .config import Backend
from .errors import GraphError, NotHybridizableError, ModelExecutionError, UnsupportedDtypeError
from .graph import cudnn as _cudnn
from .graph import passes as _passes

__all__ = [
    "MXNET_VERSION", "trace", "child_blocks", "flatten", "regroup", "fuse", "quantize_symbol",
    "apply_calibration", "post_fuse", "quantize_params", "symbol_block",
    "graph_json", "load_graph", "infer_output_dtypes", "backend_context", "load_block_params",
    "tap_outputs",
]

_log = logging.getLogger(__name__)

MXNET_VERSION = mx.__version__

#: The subgraph property that fuses a graph for oneDNN int8, before and after quantization.
_ONEDNN_INT8_PASS = "MKLDNN_QUANTIZE"


def input_names(num_inputs):
    """Names Gluon gives the inputs of a traced graph: ``data`` or ``data0..N``."""
    if num_inputs == 1:
        return ["data"]
    return ["data%d" % i for i in range(num_inputs)]


def trace(net, num_inputs, dtypes=None):
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
        out = net(*syms)
    except Exception as err:  # any failure here means the forward is not symbolic
        raise NotHybridizableError(
            "%s could not be traced into a symbolic graph with %d input(s) (%s: %s). Make sure "
            "hybrid_forward only uses F.* operators (no .asnumpy(), .shape, Python control flow "
            "on values) and that the number of inputs matches the calibration batches."
            % (type(net).__name__, num_inputs, type(err).__name__, err)) from err
    flat, out_format = _gluon_block._flatten(out, "output")
    if not all(isinstance(s, mx.sym.Symbol) for s in flat):
        raise NotHybridizableError(
            "%s returned non-symbol outputs when traced; every output must come from F.* "
            "operators." % type(net).__name__)
    group = mx.sym.Group(flat) if len(flat) > 1 else flat[0]
    return syms, group, out_format


def child_blocks(block):
    """The direct child blocks of a Gluon block, in registration order."""
    return list(block._children.values())


def flatten(args, what):
    """Flatten nested lists/tuples of arrays into a list plus Gluon's format descriptor."""
    return _gluon_block._flatten(args, what)


def regroup(flat, fmt):
    """Rebuild the nesting described by ``fmt`` (inverse of :func:`flatten`)."""
    return _gluon_block._regroup(list(flat), fmt)


def backend_context(backend):
    """The context MXNet's quantization pass is told the int8 graph will run on."""
    return mx.gpu(0) if backend is Backend.CUDNN else mx.cpu()


def fuse(sym, backend):
    """Run the backend's fp32 fusion pass for int8 (oneDNN: conv+bn+act+sum, FC+act...)."""
    if backend is Backend.ONEDNN:
        try:
            return sym.get_backend_symbol(_ONEDNN_INT8_PASS)
        except mx.base.MXNetError as err:
            raise GraphError("oneDNN fusion failed: %s" % _first_line(err)) from err
    return sym


def post_fuse(qsym, backend):
    """Fold quantize/requantize/dequantize nodes into the quantized fused operators."""
    return fuse(qsym, backend)


def quantize_symbol(sym, *, backend, excluded_nodes, offline_params, dtype, granularity,
                    param_shapes=None):
    """Insert quantized operators into a (fused) fp32 graph.

    ``param_shapes`` (name -> shape of each parameter) lets backend='cudnn' check
    cuDNN's int8 constraints (channel counts multiple of 4...).

    Returns
    -------
    qsym : Symbol
        The quantized graph, not yet calibrated.
    calib_names : list of str
        Names of the fp32 tensors whose ranges must be calibrated.
    """
    if backend is Backend.CUDNN:
        # MXNet's pass only quantizes ops with kernels on this build's devices (none on
        # GPU in a CPU build): rewrite the graph as a GPU build's pass would.
        shapes = param_shapes or {}
        if dtype == "uint8":
            raise UnsupportedDtypeError(
                "dtype='uint8' is not supported by MXNet's cuDNN int8 operators (they take "
                "int8 only). Use dtype='int8' or 'auto' (int8 on GPU) with backend='cudnn'.")
        graph, calib, _ = _cudnn.quantize_graph(
            graph_json(sym), excluded=excluded_nodes,
            param_shapes={n: shapes.get(n) for n in offline_params})
        return mx.sym.load_json(json.dumps(graph)), calib
    try:
        qsym, calib = _mxq._quantize_symbol(
            sym, backend_context(backend), excluded_symbols=list(excluded_nodes),
            excluded_operators=[], offline_params=list(offline_params),
            quantized_dtype=dtype, quantize_mode="full",
            quantize_granularity=granularity)
    except mx.base.MXNetError as err:
        raise GraphError("MXNet's quantization pass failed: %s" % _first_line(err)) from err
    return qsym, list(calib)


def _calib_key(node, nodes):
    """The calibration-table key a node with a calibrated range reads it from.

    ``requantize_X`` and the fused ``quantized_X`` (after post-quantization fusion)
    take the range of ``X``'s output; a quantize node takes its input's.
    """
    name = node["name"]
    if node["op"] == "_contrib_requantize" and name.startswith("requantize_"):
        return name[len("requantize_"):] + "_output"
    if node["op"] == "_contrib_quantize_v2":
        src = nodes[node["inputs"][0][0]]
        index = node["inputs"][0][1]
        if src["op"] == "null":
            return src["name"]
        return src["name"] + ("_output" if index == 0 else "_output%d" % index)
    if name.startswith("quantized_"):
        return name[len("quantized_"):] + "_output"
    return name + "_output"


def calibrated_nodes(sym):
    """``(node name, table key)`` of every node of ``sym`` that carries a calibrated range."""
    nodes = graph_json(sym)["nodes"]
    return [(n["name"], _calib_key(n, nodes)) for n in nodes
            if "min_calib_range" in (n.get("attrs") or {})]


def _exact_ranges(sym, table, add_to=()):
    """Rewrite every calibrated range of ``sym`` from ``table`` at full float32 precision.

    MXNet prints ranges with 6 decimals (so a range of 1e-7 becomes 0), both when it
    sets a calibration table and when post-quantization fusion copies ranges. Nodes
    whose operator is in ``add_to`` get a range even when they have none yet.
    """
    graph = graph_json(sym)
    nodes = graph["nodes"]
    changed = False
    for node in nodes:
        attrs = node.get("attrs")
        if node["op"] in add_to:
            attrs = node.setdefault("attrs", {})
        elif not attrs or "min_calib_range" not in attrs:
            continue
        key = _calib_key(node, nodes)
        if key in table:
            lo, hi = (np.float32(v) for v in table[key])
            attrs["min_calib_range"] = repr(float(lo))
            attrs["max_calib_range"] = repr(float(hi))
            changed = True
    return mx.sym.load_json(json.dumps(graph)) if changed else sym


def apply_calibration(qsym, table, backend, input_names):
    """Write calibrated ranges into the quantized graph and run post-quantization fusion.

    Returns the final graph, every range at full float32 precision, with the fused sums
    whose operand and output types differ fixed (:func:`~gluon_quant.graph.passes.
    fused_sum_dtypes`).
    """
    th = {k: (float(lo), float(hi)) for k, (lo, hi) in table.items()}
    if backend is Backend.CUDNN:  # no post-quantization fusion on GPU
        return _exact_ranges(qsym, th, add_to=_cudnn.RANGED_OPS)
    calibrated = _mxq._calibrate_quantized_sym(qsym, th) if th else qsym
    calibrated = _exact_ranges(calibrated, th)
    final = _exact_ranges(post_fuse(calibrated, backend), th)
    graph = graph_json(final)
    dtypes = infer_output_dtypes(final, {n: "float32" for n in input_names})
    if any(_passes.fused_sum_dtypes(graph, dtypes)):
        final = mx.sym.load_json(json.dumps(graph))
    return final


def quantize_params(qsym, arg_params):
    """Quantize offline the weights the quantized graph asks for (``*_quantize`` inputs)."""
    return _mxq._quantize_params(qsym, arg_params, {})


def graph_json(sym):
    """The graph as a JSON-like dict (nodes, heads, arg_nodes)."""
    return json.loads(sym.tojson())


def load_graph(graph):
    """The Symbol of a JSON-like graph dict (the inverse of :func:`graph_json`)."""
    try:
        return mx.sym.load_json(json.dumps(graph))
    except mx.base.MXNetError as err:
        raise GraphError("MXNet rejected a rewritten graph: %s" % _first_line(err)) from err


def symbol_block(sym, names, params, ctx, dtypes=None):
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
    """
    dtypes = dtypes or ["float32"] * len(names)
    inputs = [mx.sym.var(n, dtype=d) for n, d in zip(names, dtypes)]
    return load_block_params(mx.gluon.SymbolBlock(sym, inputs), params, ctx)


def load_block_params(block, params, ctx):
    """Set every parameter of a ``SymbolBlock`` (or subclass) from ``params``; return it."""
    missing = [n for n in block.collect_params() if n not in params]
    if missing:
        raise GraphError("The graph needs parameters the network does not have: %s"
                         % ", ".join(sorted(missing)[:10]))
    for name, param in block.collect_params().items():
        # _load_init copies the array and takes its dtype (int8 weights stay int8).
        param._load_init(params[name], ctx, cast_dtype=True, dtype_source="saved")
    return block


def infer_output_dtypes(sym, input_dtypes):
    """Map every internal output name of ``sym`` to its inferred dtype name (or None)."""
    internals = sym.get_internals()
    try:
        _, out_types, _ = internals.infer_type_partial(**input_dtypes)
    except mx.base.MXNetError:
        return {}
    return {name: (None if t is None else np.dtype(t).name)
            for name, t in zip(internals.list_outputs(), out_types)}


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
            bounds = [next((b for b in (base + "_" + k, name + "_" + k + "_output")
                            if b in outputs), None) for k in ("min", "max")]
            if None in bounds:
                raise GraphError("Quantized node %r exposes no min/max range." % name)
            tensor = mx.sym.contrib.dequantize(
                tensor, *(internals[outputs.index(b)] for b in bounds), out_type="float32")
        taps.append(tensor)
    return mx.sym.Group(taps)


def run_block(block, inputs, what):
    """Call a block, turning MXNet errors into package errors naming ``what`` failed."""
    try:
        out = block(*inputs)
        flat = out if isinstance(out, (list, tuple)) else [out]
        mx.nd.waitall()
        return flat
    except mx.base.MXNetError as err:
        raise ModelExecutionError("%s failed: %s" % (what, _first_line(err))) from err


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
    array.wait_to_read()
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    view = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                 shape=array.shape)
    view.flags.writeable = False
    return view


def _first_line(err):
    text = str(err).strip().splitlines()
    for line in text:
        if "Check failed" in line or "Error" in line:
            return line.strip()
    return text[0] if text else repr(err)


#: The informative line of an MXNet error message, for the package's own errors.
first_line = _first_line


def check_graph_entries(graph):
    """Check that every edge of a graph (JSON dict) names an existing node output.

    MXNet's loader accepts an input entry ``[node, output, version]`` whose output index
    is out of range and then frees invalid memory when the graph runs (the process
    aborts): each entry is checked here, in fused subgraphs too.

    Raises
    ------
    ValueError
        Naming the first bad entry.
    """
    nodes = graph["nodes"]
    internals = mx.sym.load_json(json.dumps(graph)).get_internals()
    outputs = {}
    for i in range(len(internals.list_outputs())):
        name = internals[i].name
        outputs[name] = outputs.get(name, 0) + 1
    for index, node in enumerate(nodes):
        entries = [("input of %r" % node.get("name"), e) for e in node.get("inputs", [])]
        if index == len(nodes) - 1:
            entries += [("graph output", e) for e in graph.get("heads", [])]
        for what, entry in entries:
            if not (isinstance(entry, list) and len(entry) >= 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)):
                raise ValueError("%s is %r, not [node, output, version]" % (what, entry))
            source, slot = entry[0], entry[1]
            count = outputs.get(nodes[source]["name"], 0) if 0 <= source < len(nodes) else 0
            if not 0 <= slot < count or (what != "graph output" and source >= index):
                raise ValueError("%s %r refers to a node output that does not exist"
                                 % (what, entry))
        for sub in node.get("subgraphs", []) or []:
            check_graph_entries(sub)
