"""The only module that touches MXNet's private APIs and version quirks.

Everything MXNet-internal the package relies on (the C quantization pass, the
calibration-table setter, Gluon's input/output flattening, parameter loading)
is wrapped here behind small functions over public types (``Symbol``,
``NDArray``, dicts), so that the rest of the code never imports a private name
and a future MXNet change is fixed in one place.
"""
import json
import logging

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as _mxq
from mxnet.gluon import block as _gluon_block

from .config import Backend
from .errors import GraphError, NotHybridizableError, ModelExecutionError

__all__ = [
    "MXNET_VERSION", "trace", "flatten", "regroup", "fuse", "quantize_symbol",
    "apply_calibration", "post_fuse", "quantize_params", "symbol_block",
    "graph_json", "infer_output_dtypes", "backend_context",
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


def quantize_symbol(sym, *, backend, excluded_nodes, offline_params, dtype, granularity):
    """Insert quantized operators into a (fused) fp32 graph.

    Returns
    -------
    qsym : Symbol
        The quantized graph, not yet calibrated.
    calib_names : list of str
        Names of the fp32 tensors whose ranges must be calibrated.
    """
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


def _exact_ranges(sym, table):
    """Rewrite every calibrated range of ``sym`` from ``table`` at full float32 precision.

    MXNet prints ranges with 6 decimals (so a range of 1e-7 becomes 0), both when it
    sets a calibration table and when post-quantization fusion copies ranges.
    """
    graph = graph_json(sym)
    nodes = graph["nodes"]
    changed = False
    for node in nodes:
        attrs = node.get("attrs")
        if not attrs or "min_calib_range" not in attrs:
            continue
        key = _calib_key(node, nodes)
        if key in table:
            lo, hi = (np.float32(v) for v in table[key])
            attrs["min_calib_range"] = repr(float(lo))
            attrs["max_calib_range"] = repr(float(hi))
            changed = True
    return mx.sym.load_json(json.dumps(graph)) if changed else sym


def apply_calibration(qsym, table, backend):
    """Write calibrated ranges into the quantized graph and run post-quantization fusion.

    Returns the final graph, every range at full float32 precision.
    """
    th = {k: (float(lo), float(hi)) for k, (lo, hi) in table.items()}
    calibrated = _mxq._calibrate_quantized_sym(qsym, th) if th else qsym
    calibrated = _exact_ranges(calibrated, th)
    return _exact_ranges(post_fuse(calibrated, backend), th)


def quantize_params(qsym, arg_params):
    """Quantize offline the weights the quantized graph asks for (``*_quantize`` inputs)."""
    return _mxq._quantize_params(qsym, arg_params, {})


def graph_json(sym):
    """The graph as a JSON-like dict (nodes, heads, arg_nodes)."""
    return json.loads(sym.tojson())


def symbol_block(sym, names, params, ctx, dtypes=None):
    """Build a ``SymbolBlock`` over ``sym`` whose parameters are copies of ``params``.

    Parameters
    ----------
    sym : Symbol
    names : list of str
        Input variable names.
    params : dict of str to NDArray
        Every non-input argument and auxiliary state of ``sym``.
    ctx : Context
    dtypes : list of str, optional
        Input dtypes (float32 by default).
    """
    dtypes = dtypes or ["float32"] * len(names)
    inputs = [mx.sym.var(n, dtype=d) for n, d in zip(names, dtypes)]
    block = mx.gluon.SymbolBlock(sym, inputs)
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


def run_block(block, inputs, what):
    """Call a block, turning MXNet errors into package errors naming ``what`` failed."""
    try:
        out = block(*inputs)
        flat = out if isinstance(out, (list, tuple)) else [out]
        mx.nd.waitall()
        return flat
    except mx.base.MXNetError as err:
        raise ModelExecutionError("%s failed: %s" % (what, _first_line(err))) from err


def _first_line(err):
    text = str(err).strip().splitlines()
    for line in text:
        if "Check failed" in line or "Error" in line:
            return line.strip()
    return text[0] if text else repr(err)
