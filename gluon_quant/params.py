"""The fp32 parameters a fused graph reads: copies of the net's own (deferred shapes
finished, the graph passes' rewrites applied), cross-layer equalization replayed on them,
and the record of which weights a calibration table was measured with.

Stage functions of :mod:`gluon_quant.pipeline` (which re-exports them); the user's net is
read, never modified.
"""
import numpy as np

from . import _mxnet
from ._stage import stage
from .calib import CalibrationTable
from .errors import ConfigError, GraphError, ModelExecutionError, UnsupportedDtypeError
from .graph.normalize import NORMALIZED_SUFFIX
from .weights import digest, equalize

__all__ = ["FP32Params", "fp32_params", "equalized_params", "with_equalization",
           "params_for_table"]


class FP32Params(dict):
    """The fp32 parameters of a fused graph, by name, the cross-layer equalization
    applied to them (:attr:`equalization`: the table's ``meta['equalization']``, or None)
    and the digests of the net's parameters they were made from (:attr:`weights`:
    :func:`gluon_quant.weights.digest.digests`, the table's ``meta['weights']``)."""

    equalization = None
    weights = None


def _equalized(fused, params, state):
    out = FP32Params(equalize.apply(_mxnet.graph_json(fused.symbol), params, state))
    out.equalization, out.weights = state, getattr(params, "weights", None)
    return out


def equalized_params(fused, params):
    """``params`` with cross-layer equalization computed and applied (an
    :class:`FP32Params` whose ``equalization`` is the state to store in the table)."""
    return _equalized(fused, params, equalize.compute(_mxnet.graph_json(fused.symbol), params))


def with_equalization(table, params):
    """``table`` recording the equalization ``params`` carry and the weights they were
    made from (unchanged when they carry neither)."""
    record = {key: value for key, value in ((equalize.META_KEY, params.equalization),
                                            (digest.META_KEY, params.weights))
              if value is not None} if isinstance(params, FP32Params) else {}
    if not record:
        return table
    return CalibrationTable(dict(table.items()), method=table.method,
                            fingerprint=table.fingerprint, meta=dict(table.meta, **record))


@stage
def params_for_table(net, fused, ctx, table, params=None):
    """``params`` when they carry the equalization ``table`` was calibrated with, else
    fresh copies (:func:`fp32_params`) with it applied.

    Raises
    ------
    CalibrationTableError
        The table was measured with other weights (:mod:`gluon_quant.weights.digest`).
    """
    wanted = table.meta.get(equalize.META_KEY) if table is not None else None
    if params is None or getattr(params, "equalization", None) != wanted:
        params = fp32_params(net, fused, ctx, table=table)
    if table is not None:
        digest.check(table.meta.get(digest.META_KEY), getattr(params, "weights", None))
    return params


def fp32_params(net, fused, ctx, inputs=None, table=None):
    """Copies of the fp32 parameters the fused graph reads, on ``ctx``.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
    fused : FusedGraph
    ctx : mxnet.Context
    inputs : list of NDArray, optional
        One batch, to finish deferred initialization by running the net once.
    table : CalibrationTable, optional
        Its cross-layer equalization (``meta['equalization']``), if any, is applied: the
        ranges were calibrated on the equalized network.

    Returns
    -------
    FP32Params

    Raises
    ------
    GraphError
        Parameters are still deferred and no batch is given, or stay deferred after the
        net ran on it (layers in a branch it did not take), or the graph reads a
        variable that is neither an input nor a parameter.
    ModelExecutionError
        The net failed while finishing its initialization.
    """
    params = net.collect_params()
    needed = set(fused.symbol.list_arguments()) | set(fused.symbol.list_auxiliary_states())
    sources = needed | {s for r in fused.param_rewrites for s in r.sources if s}
    check_params({n: p for n, p in params.items() if n in sources})
    deferred = [p.name for p in params.values() if not _mxnet.is_initialized(p)]
    if deferred:
        if inputs is None:
            raise GraphError(
                "Parameters %s are not initialized. Initialize the net (and run it once "
                "if it uses deferred shapes) before quantizing." % deferred[:5])
        try:
            if not _mxnet.finish_deferred_init(net, inputs, fused.inputs.layout, fused.np_mode):
                _mxnet.call_net(net, fused.inputs.regroup(inputs), fused.np_mode)
        except Exception as err:
            raise ModelExecutionError("Running %s to finish parameter initialization "
                                      "failed: %s: %s" % (type(net).__name__,
                                                          type(err).__name__, err)) from err
        unset = [p.name for p in params.values()
                 if p.name in sources and not _mxnet.is_initialized(p)]
        if unset:
            raise GraphError(
                "Parameters %s still have no shape after %s ran on a calibration batch: "
                "their layers are in code that batch did not run (a branch of "
                "F.contrib.cond, a loop that did not turn), and MXNet cannot infer them "
                "from the graph either. Give those layers their input size (in_units=, "
                "in_channels=) or run the net on inputs that reach them before "
                "quantizing." % (unset[:5], type(net).__name__))
    copies = {}
    for name, param in params.items():
        if name in sources:     # from where it lives (Gluon raises RuntimeError elsewhere)
            home = ctx if ctx in param.list_ctx() else param.list_ctx()[0]
            copies[name] = _mxnet.as_legacy(param.data(home)).copyto(ctx)
    weights = digest.digests(copies)       # of the net's own values, before any rewrite
    for rewrite in fused.param_rewrites:
        try:
            rewrite.apply(copies)
        except _mxnet.MXNetError as err:
            shapes = ", ".join("%s %s" % (n, tuple(copies[n].shape))
                               for n in rewrite.sources if n in copies)
            if rewrite.target.endswith(NORMALIZED_SUFFIX + "_weight"):
                raise ConfigError(
                    "input_normalization does not fit the first layer: %s. Give one mean "
                    "and one std per input channel." % shapes) from err
            raise GraphError("Computing parameter %r from %s failed: %s; please report "
                             "it with the network." % (rewrite.target, shapes,
                                                       _mxnet.first_line(err))) from err
    copies = {k: v for k, v in copies.items() if k in needed}
    missing = needed - set(copies) - set(fused.inputs.names)
    if missing:
        raise GraphError("The traced graph has inputs that are neither network inputs "
                         "nor parameters: %s. Check num_inputs (now %d)."
                         % (sorted(missing)[:5], fused.inputs.count))
    out = FP32Params(copies)
    out.weights = weights
    state = table.meta.get(equalize.META_KEY) if table is not None else None
    return _equalized(fused, out, state) if state is not None else out


def check_params(params):
    """Raise the package's error if a parameter of ``params`` ({name: gluon Parameter}, those
    the graph reads) was never initialized (:class:`ConfigError`) or is floating-point but
    not float32 (:class:`UnsupportedDtypeError`: a net cast to float16 or float64)."""
    bare = sorted(name for name, param in params.items() if _mxnet.never_initialized(param))
    if bare:
        raise ConfigError(
            "%d parameter(s) of the network were never initialized (%s): call "
            "net.initialize() or net.load_parameters(file) before quantizing." % (
                len(bare), ", ".join(bare[:3]) + (", ..." if len(bare) > 3 else "")))
    dtypes = {name: np.dtype(param.dtype) for name, param in params.items()}
    odd = sorted((name, _float_name(dtype)) for name, dtype in dtypes.items()
                 if _float_name(dtype) not in (None, "float32"))
    if odd:
        amp = any(dtype == "bfloat16" for _, dtype in odd)
        raise UnsupportedDtypeError(
            "The network's parameters must be float32 to quantize it; %d are not (%s). %s"
            % (len(odd), ", ".join("%s: %s" % pair for pair in odd[:3])
               + (", ..." if len(odd) > 3 else ""),
               "Quantize the float32 network it was converted from, or convert it with "
               "mx.contrib.amp.convert_hybrid_block(..., cast_optional_params=False), which "
               "keeps the weights float32." if amp else
               "Call net.cast('float32') first (then feed float32 batches): the int8 "
               "network runs from the float32 weights."))


def _float_name(dtype):
    """The name of a floating-point ``dtype`` (MXNet's bfloat16 is a NumPy record of one
    uint16 named ``bfloat16``), or None for other types."""
    if dtype.names == ("bfloat16",):
        return "bfloat16"
    return dtype.name if np.issubdtype(dtype, np.floating) else None
