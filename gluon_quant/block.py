"""QuantizedHybridBlock: an int8 copy of a Gluon HybridBlock, called exactly like it.

The stages, each a method that can be run on its own:

1. :meth:`QuantizedHybridBlock.fuse` traces the net into a graph (as ``hybridize()``
   does, leaving the user's block untouched) and runs the backend's fp32 fusion
   (oneDNN: conv+bn+relu, conv+add, FC+relu...).
2. :meth:`QuantizedHybridBlock.quantize_graph` inserts int8 operators, leaving
   excluded layers in fp32, and lists the tensors that need calibrated ranges.
3. :meth:`QuantizedHybridBlock.calibrate` runs the fused fp32 graph over batches
   and feeds those tensors to the :class:`~gluon_quant.calib.Calibrator`.
4. :meth:`QuantizedHybridBlock.finalize` writes the ranges into the graph, runs
   post-quantization fusion (requantize folded into the fused operators),
   quantizes the weights and builds the int8 block.
"""
import logging
import threading
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

from . import _mxnet, bias
from .calib import ZERO_RANGE, CalibrationTable, get_calibrator
from .config import Backend, Granularity, QuantDtype
from .collect import build_runner, collect_statistics
from .data import BatchConverter, InputSpec, describe, iter_batches
from .errors import (CalibrationTableError, ConfigError, EmptyCalibrationError, GluonQuantError,
                     GraphError, InputMismatchError, ModelExecutionError, UnsupportedDtypeError)
from .graph import GraphView, block_scopes, resolve_exclusions
from .graph.passes import int8_mul_inputs, prepare as prepare_graph, signed_global_pools
from .presets import resolve_preset
from .report import LayerReport, QuantReport

__all__ = ["QuantizedHybridBlock"]

_log = logging.getLogger(__name__)

#: Calibration samples kept to measure bias corrections (see :mod:`gluon_quant.bias`).
_BIAS_SAMPLES = 32

#: A range whose ends are both below this is an all-zero tensor: it gets the calibrators'
#: zero range instead (a huge scale would overflow the int32 bias of the layer it feeds).
#: Legitimately tiny ranges (1e-9) are kept exactly.
_ZERO_EPS = 1e-30


class _Source:
    """Holds the user's fp32 net without registering it as a child block.

    Registering it would make ``hybridize()``, ``collect_params()`` and ``cast()``
    on the quantized block reach into the user's net.
    """

    def __init__(self, net):
        self.net = net


class QuantizedHybridBlock(HybridBlock):
    """An int8 version of a Gluon ``HybridBlock``, with the same inputs and outputs.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The fp32 network. It is not modified, and its hybridize settings are kept.
    calibrator : str, Calibrator subclass or instance, default 'mse'
        How calibrated ranges are chosen (see :mod:`gluon_quant.calib`).
    dtype : {'auto', 'int8', 'uint8'}, default 'auto'
        Quantized activation type: ``auto`` uses uint8 for non-negative tensors.
    backend : {'onednn', 'cudnn'}, default 'onednn'
        Runtime of the int8 graph; ``'mkldnn'`` is an alias of ``'onednn'``.
    exclude : list of str, optional
        Layers kept in fp32: block names, attribute paths, node names, glob
        patterns or operator types (``'Convolution'``, ``'Dense'``, ``'Pooling'``).
    granularity : {'channel', 'tensor'}, optional
        Weight scales per output channel or per tensor; by default 'channel' on oneDNN
        and 'tensor' on cuDNN (which has no per-channel int8 kernels).
    ctx : mxnet.Context, optional
        Where calibration and inference run (CPU by default).
    input_fn : callable, optional
        ``input_fn(batch)`` returns the net's input(s) from one batch.
    num_inputs : int, optional
        Number of tensor inputs, when ``hybrid_forward``'s signature does not tell.
    progress : bool, default True
        Show a progress bar while calibrating (only on a terminal).
    preset : str or Preset, optional
        Layers of a model family kept in fp32, and why (see :mod:`gluon_quant.presets`).
        By default the family's preset for GluonCV zoo nets and none otherwise;
        ``'none'`` turns presets off.
    bias_correction : bool, default True
        Remove the per-channel mean error int8 adds to layers without an activation
        (:mod:`gluon_quant.bias`), measured on up to 32 calibration samples and stored
        in the calibration table.

    Notes
    -----
    Calling the block from several Python threads at once is safe and gives the same
    results as calling it from one: calls are serialized by a lock held only while a
    call is dispatched to MXNet's engine (Gluon's graph building on the first call is
    not thread-safe; the computation itself still runs on MXNet's own worker threads).
    """

    def __init__(self, net, *, calibrator="mse", dtype="auto", backend="onednn",
                 exclude=None, granularity=None, ctx=None, input_fn=None,
                 num_inputs=None, progress=True, preset=None, bias_correction=True):
        super().__init__(prefix="quantized_", params=None)
        self.bias_correction = bool(bias_correction)
        self._bias_inputs = None      # calibration samples kept for bias correction
        self._call_lock = threading.Lock()
        if not isinstance(net, HybridBlock):
            from .errors import NotHybridizableError
            raise NotHybridizableError(
                "quantize() needs a mxnet.gluon.HybridBlock, got %s. Convert the model to "
                "HybridBlock/HybridSequential layers with a hybrid_forward." % type(net).__name__)
        self._source = _Source(net)
        self.preset = resolve_preset(preset, net)
        self.dtype = QuantDtype.parse(dtype, "dtype")
        self.backend = Backend.parse(backend, "backend")
        if granularity is None:
            granularity = "tensor" if self.backend is Backend.CUDNN else "channel"
        self.granularity = Granularity.parse(granularity, "granularity")
        if self.backend is Backend.CUDNN and self.granularity is Granularity.CHANNEL:
            raise ConfigError("granularity='channel' is not supported by MXNet's cuDNN int8 "
                              "operators; use granularity='tensor' with backend='cudnn'.")
        self.calibrator = get_calibrator(calibrator)
        if exclude is not None and not isinstance(exclude, (str, list, tuple, set)):
            raise ConfigError("exclude must be a list of layer names/patterns/operator types, "
                              "got %r." % (exclude,))
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
        self.ctx = ctx if ctx is not None else mx.cpu()
        self.progress = bool(progress)
        self.spec = InputSpec.from_net(net, num_inputs)
        self._converter = BatchConverter(self.spec, self.ctx, input_fn)
        self._user_out_format = None
        self._fused = None            # fused fp32 Symbol
        self._fused_view = None       # GraphView of it
        self._excluded = {}           # fused node name -> reason
        self._qsym = None             # quantized, uncalibrated Symbol
        self._calib_names = None      # tensors needing ranges
        self._fp32_params = None           # fp32 params by name (copies)
        self._table = None
        self._final = None            # calibrated, post-fused Symbol
        self._qnet = None             # the int8 SymbolBlock

    # ------------------------------------------------------------------ stages
    @property
    def net(self):
        """The fp32 network this block was made from."""
        return self._source.net

    def fuse(self):
        """Trace the net and run the backend's fp32 fusion pass.

        Returns
        -------
        Symbol
            The fused fp32 graph (also available as :attr:`fused_graph`).
        """
        syms, out, self._user_out_format = _mxnet.trace(self.net, self.spec.count)
        self._fused = _mxnet.fuse(prepare_graph(out), self.backend)
        self._fused_view = GraphView(_mxnet.graph_json(self._fused))
        excluded, _ = resolve_exclusions(self.exclude, self._fused_view,
                                         block_scopes(self.net))
        self._excluded = {k: "excluded by user (%r)" % v for k, v in excluded.items()}
        if self.preset is not None:
            for name, reason in self.preset.select(self._fused_view,
                                                   block_scopes(self.net)).items():
                self._excluded.setdefault(name, reason)
        for name, reason in signed_global_pools(self._fused_view).items():
            self._excluded.setdefault(name, reason)
        self._qsym = self._final = self._qnet = None
        return self._fused

    def quantize_graph(self):
        """Insert int8 operators into the fused graph (uncalibrated).

        Returns
        -------
        list of str
            Names of the fp32 tensors whose ranges calibration must provide.
        """
        if self._fused is None:
            self.fuse()
        offline = [n for n in self._fused.list_arguments() if n not in self.spec.names]
        self._qsym, self._calib_names = _mxnet.quantize_symbol(
            self._fused, backend=self.backend, excluded_nodes=sorted(self._excluded),
            offline_params=offline, dtype=self.dtype.value,
            granularity=self.granularity.mxnet_name,
            param_shapes={n: p.shape for n, p in self.net.collect_params().items()})
        self._qsym, fp32_nodes = int8_mul_inputs(self._qsym)
        fp32_nodes = {k: v for k, v in fp32_nodes.items() if k not in self._excluded}
        if fp32_nodes:  # int8-only operators fed by uint8 layers: quantize again without them
            self._excluded.update(fp32_nodes)
            return self.quantize_graph()
        if not self._calib_names:
            _log.warning("No layer of %s can be quantized on %s (every layer is excluded or "
                         "has no int8 kernel); the result runs in fp32.",
                         type(self.net).__name__, self.backend.value)
        return list(self._calib_names)

    def calibrate(self, calib_data, *, num_calib_batches=None):
        """Run the fused fp32 graph over ``calib_data`` and compute the ranges.

        Parameters
        ----------
        calib_data : iterable of batches
            DataLoader, list, generator or DataIter; see :mod:`gluon_quant.data`.
        num_calib_batches : int, optional
            Stop after this many batches.

        Returns
        -------
        CalibrationTable
        """
        if self._calib_names is None:
            self.quantize_graph()
        batches = iter_batches(calib_data, num_calib_batches)
        names = list(self._calib_names)
        outputs_needed = [n for n in names if n not in self.spec.names]

        def make_runner(inputs):
            self._ensure_params(inputs)
            self.calib_input_shapes = [tuple(a.shape) for a in inputs]  # for export metadata
            return self._calibration_runner(outputs_needed)

        samples = []
        kept = []

        def convert(batch):
            inputs = self._converter(batch)
            samples.append(inputs[0].shape[0] if inputs and inputs[0].ndim else 1)
            room = _BIAS_SAMPLES - sum(k[0].shape[0] for k in kept)
            if self.bias_correction and room > 0 and inputs and inputs[0].ndim:
                kept.append([a[:room].copy() for a in inputs])
            return inputs

        self._bias_inputs = None
        seen = collect_statistics(
            batches, convert=convert, make_runner=make_runner,
            calibrator=self.calibrator, input_names=self.spec.names, tensor_names=names,
            progress=self.progress, total=_length(calib_data, num_calib_batches))
        if kept and all(len(k) == len(kept[0]) for k in kept):
            try:
                self._bias_inputs = [mx.nd.concat(*parts, dim=0)
                                     for parts in zip(*kept)]
            except mx.base.MXNetError:     # batches of different shapes: keep the first
                self._bias_inputs = kept[0]
        _log.info("Calibrated %d tensors on %d batches with %s.", len(names), seen,
                  type(self.calibrator).__name__)
        if not names:
            self._table = CalibrationTable({}, method=_method_name(self.calibrator))
        else:
            self._table = self.calibrator.compute()
        # How much data the ranges rest on (read by gluon_quant.debug's checks).
        self._table = CalibrationTable(
            dict(self._table.items()), method=self._table.method,
            fingerprint=self.fingerprint,
            meta=dict(self._table.meta, batches=seen, samples=int(sum(samples))))
        return self._table

    def finalize(self, table: Optional[CalibrationTable] = None):
        """Apply ranges, run post-quantization fusion and build the int8 block.

        Parameters
        ----------
        table : CalibrationTable, optional
            Ranges to use instead of the last :meth:`calibrate` result (no data needed).

        Returns
        -------
        QuantizedHybridBlock
            ``self``, ready to be called.
        """
        if self._calib_names is None:
            self.quantize_graph()
        table = table if table is not None else self._table
        if table is None:
            raise EmptyCalibrationError(
                "No calibration ranges: call calibrate(calib_data) first or pass a "
                "CalibrationTable (quantize(net, calib_table=...)).")
        table = self._check_table(table)
        self._ensure_params(None)
        self._table = table
        self._final = _mxnet.apply_calibration(self._qsym, table, self.backend, self.spec.names)
        self._check_uint8(table)
        arg_params = {k: v for k, v in self._fp32_params.items()
                      if k in set(self._fused.list_arguments())}
        qparams = _mxnet.quantize_params(self._final, arg_params)
        for name in self._final.list_auxiliary_states():
            qparams[name] = self._fp32_params[name]
        qparams, self._table = self._correct_bias(qparams, table)
        self._qnet = _mxnet.symbol_block(self._final, self.spec.names, qparams, self.ctx)
        self._clear_cached_op()
        if self.backend is Backend.ONEDNN:
            self.hybridize(static_alloc=True, static_shape=True)
        return self

    # ------------------------------------------------------------- inspection
    @property
    def fingerprint(self):
        """sha256 of the fused fp32 graph's structure (what calibration tables are tied to)."""
        if self._fused_view is None:
            self.fuse()
        return self._fused_view.fingerprint()

    @property
    def calibration_table(self):
        """The ranges in use (``None`` before calibration)."""
        return self._table

    @property
    def fused_graph(self):
        """The fused fp32 Symbol."""
        return self._fused

    @property
    def quantized_graph(self):
        """The final int8 Symbol (``None`` before :meth:`finalize`)."""
        return self._final

    @property
    def input_names(self):
        """The graph's input names."""
        return list(self.spec.names)

    def convert_batch(self, batch):
        """The list of input NDArrays of one batch, mapped as during calibration."""
        return self._converter(batch)

    def clone(self, **changes):
        """A new, unbuilt block over the same net with the same settings but ``changes``.

        Parameters
        ----------
        **changes
            Any keyword of the constructor (``exclude``, ``granularity``, ``calibrator``...).
            Its fused graph is the same, so a :attr:`calibration_table` of this block can be
            applied to it with ``clone.finalize(table)`` when ``backend`` is unchanged.
        """
        settings = dict(calibrator=self.calibrator, dtype=self.dtype, backend=self.backend,
                        exclude=list(self.exclude), granularity=self.granularity,
                        ctx=self.ctx, input_fn=self._converter.input_fn,
                        num_inputs=self.spec.count, progress=self.progress,
                        preset=self.preset, bias_correction=self.bias_correction)
        unknown = sorted(set(changes) - set(settings))
        if unknown:
            raise ConfigError("clone() got unknown settings %s; valid: %s."
                              % (unknown, sorted(settings)))
        settings.update(changes)
        twin = QuantizedHybridBlock(self.net, **settings)
        twin._bias_inputs = self._bias_inputs    # so its bias corrections can be measured
        return twin

    def export(self, prefix, *, fmt="gluon_quant"):
        """Write the int8 model to files; works right after quantizing (no forward needed).

        Parameters
        ----------
        prefix : str
            Path prefix of the files.
        fmt : {'gluon_quant', 'mxnet'}, default 'gluon_quant'
            ``'gluon_quant'``: ``PREFIX-symbol.json``, ``PREFIX-int8.params`` (conv and dense
            weights as int8, about 4x smaller than fp32, outputs bit-identical) and
            ``PREFIX-meta.json`` (versions, settings, inputs, calibration table, sha256
            of each file); load with :meth:`gluon_quant.QuantizedSymbolBlock.imports`.
            ``'mxnet'``: the plain ``PREFIX-symbol.json`` / ``PREFIX-0000.params`` pair that
            stock MXNet 1.9.1 (oneDNN build) loads with ``mx.gluon.SymbolBlock.imports``,
            with fp32 conv weights (as large as fp32).

        Returns
        -------
        dict of str to str
            The written files by role (``symbol``, ``params``, ``meta``).
        """
        from .export import export_model
        return export_model(self, prefix, fmt=fmt)

    def report(self):
        """Per-layer table: fused pattern, int8 or not and why, dtype and range.

        Returns
        -------
        QuantReport
        """
        if self._final is None:
            raise GraphError("The network is not quantized yet: call finalize() (or use "
                             "gluon_quant.quantize) before report().")
        final_view = GraphView(_mxnet.graph_json(self._final))
        dtypes = _mxnet.infer_output_dtypes(
            self._final, {n: "float32" for n in self.spec.names})
        scopes = block_scopes(self.net)
        layers = []
        for node in self._fused_view:
            qname = "quantized_" + node.name
            qnode = final_view.by_name.get(qname)
            if qnode is None and node.name in final_view.by_name:
                cand = final_view.by_name[node.name]
                qnode = cand if str(cand.attr("quantized", "")).lower() == "true" else None
            quantized = qnode is not None
            if node.name in self._excluded:
                reason = self._excluded[node.name]
            elif quantized:
                reason = "quantized"
            else:
                reason = "no int8 kernel for %s on %s" % (node.op, self.backend.value)
            out_name = (qname if quantized else node.name) + "_output"
            layers.append(LayerReport(
                layer=_layer_name(node, scopes), node=node.name, op=node.main_op,
                pattern=node.pattern, quantized=quantized, reason=reason,
                dtype=dtypes.get(out_name) or dtypes.get(node.name + "_output"),
                threshold=(tuple(self._table[node.name + "_output"])
                           if self._table is not None and node.name + "_output" in self._table
                           else None)))
        return QuantReport(layers, backend=self.backend.value, dtype=self.dtype.value,
                           granularity=self.granularity.value,
                           calibrator=_method_name(self.calibrator))

    # ---------------------------------------------------------------- forward
    def forward(self, x, *args):  # pylint: disable=arguments-differ
        try:
            with self._call_lock:
                out = super().forward(x, *args)
        except GluonQuantError:
            raise
        except (mx.base.MXNetError, ValueError) as err:
            raise InputMismatchError(
                "Running the int8 network on %s failed: %s. Pass %d mx.nd.NDArray input(s) "
                "(%s) with the rank and per-sample shape of the calibration batches."
                % (describe([x, *args]), _mxnet.first_line(err).rstrip("."), self.spec.count,
                   ", ".join(self.spec.arg_names))) from err
        # Gluon regroups multiple outputs as lists; give them back as the tuples that
        # fp32 nets return.
        return _as_tuples(out) if isinstance(out, list) else out

    def hybrid_forward(self, F, x, *args):  # pylint: disable=arguments-differ
        if self._qnet is None:
            raise GraphError("QuantizedHybridBlock is not built yet: call calibrate() and "
                             "finalize(), or create it with gluon_quant.quantize().")
        if F is mx.nd and self.backend is Backend.CUDNN and x.context.device_type == "cpu":
            raise GraphError("backend='cudnn' builds a graph for MXNet's GPU builds; run it "
                             "on a GPU context (ctx=mx.gpu()), or quantize with "
                             "backend='onednn' for CPU.")
        out = self._qnet(x, *args)
        flat = list(out) if isinstance(out, (list, tuple)) else [out]
        return _mxnet.regroup(flat, self._user_out_format)

    # --------------------------------------------------------------- helpers
    def _ensure_params(self, inputs):
        if self._fp32_params is not None:
            return
        params = self.net.collect_params()
        deferred = [p.name for p in params.values() if p._data is None]
        if deferred:
            if inputs is None:
                raise GraphError(
                    "Parameters %s are not initialized. Initialize the net (and run it once "
                    "if it uses deferred shapes) before quantizing." % deferred[:5])
            try:
                self.net(*inputs)
            except Exception as err:
                raise ModelExecutionError("Running %s to finish parameter initialization "
                                          "failed: %s: %s" % (type(self.net).__name__,
                                                              type(err).__name__, err)) from err
        needed = set(self._fused.list_arguments()) | set(self._fused.list_auxiliary_states())
        self._fp32_params = {}
        for name, param in params.items():
            if name in needed:
                try:
                    self._fp32_params[name] = param.data(self.ctx).copy()
                except mx.base.MXNetError:
                    self._fp32_params[name] = param.data().copyto(self.ctx)
        missing = needed - set(self._fp32_params) - set(self.spec.names)
        if missing:
            raise GraphError("The traced graph has inputs that are neither network inputs "
                             "nor parameters: %s. Check num_inputs (now %d)."
                             % (sorted(missing)[:5], self.spec.count))

    def _calibration_runner(self, names):
        return build_runner(self._fused, names, self.spec.names, self._fp32_params, self.ctx)

    def _correct_bias(self, qparams, table):
        """Apply the table's bias corrections, or measure them on kept calibration samples.

        Corrections depend on which layers are int8 (an fp32 layer upstream changes the
        error downstream), so stored ones are used only for the same set of int8 layers;
        otherwise they are measured again when calibration samples are at hand.
        """
        if not self.bias_correction or self.backend is not Backend.ONEDNN:
            return qparams, table
        layers = bias.linear_layers(self._fused_view, self._final)
        if not layers:
            return qparams, table
        quantized = bias.quantized_nodes(self._fused_view, self._final)
        stored = table.meta.get(bias.META_KEY)
        if not (isinstance(stored, dict) and stored.get("nodes") == quantized):
            if self._bias_inputs is None:
                return qparams, table
            params = bias.compute_corrections(
                fused=self._fused, final=self._final, layers=layers, params=qparams,
                inputs=self._bias_inputs, input_names=self.spec.names, table=table,
                ctx=self.ctx)
            stored = {"nodes": quantized, "params": params}
            table = CalibrationTable(dict(table.items()), method=table.method,
                                     fingerprint=table.fingerprint,
                                     meta=dict(table.meta, **{bias.META_KEY: stored}))
        return bias.apply_corrections(qparams, stored.get("params") or {}), table

    def _check_uint8(self, table):
        """Refuse uint8 where the final graph would clip negative values to 0."""
        if self.dtype is not QuantDtype.UINT8:
            return
        dtypes = _mxnet.infer_output_dtypes(self._final, {n: "float32" for n in self.spec.names})
        signed = sorted({key for node, key in _mxnet.calibrated_nodes(self._final)
                         if "uint8" in (dtypes.get(node + "_output"), dtypes.get(node + "_output0"))
                         and key in table
                         and table[key][0] < 0})
        if signed:
            self._final = None
            raise UnsupportedDtypeError(
                "dtype='uint8' cannot represent %d tensor(s) that take negative values: %s. "
                "uint8 would clip them to 0 and give wrong results. Use dtype='auto' (uint8 "
                "where values are non-negative, int8 elsewhere) or dtype='int8', or exclude "
                "the layers that produce them." % (len(signed), signed[:5]))

    def _check_table(self, table):
        if not isinstance(table, CalibrationTable):
            raise CalibrationTableError("Expected a CalibrationTable, got %s."
                                        % type(table).__name__)
        if table.fingerprint is not None and table.fingerprint != self.fingerprint:
            raise CalibrationTableError(
                "The calibration table was computed on another graph (fingerprint %s..., this "
                "network's is %s...). Calibrate this network, or load the table that was saved "
                "with it." % (table.fingerprint[:12], self.fingerprint[:12]))
        missing = [n for n in self._calib_names if n not in table]
        if missing:
            raise CalibrationTableError(
                "The calibration table has no range for %d tensor(s) of this graph: %s. "
                "Recalibrate with the same exclude/backend settings."
                % (len(missing), missing[:5]))
        fixed = {}
        for name in self._calib_names:
            lo, hi = (float(v) for v in table[name])
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
                raise CalibrationTableError("Range %r of tensor %r is not a valid finite "
                                           "[min, max]." % ((lo, hi), name))
            if max(abs(lo), abs(hi)) < _ZERO_EPS:
                lo, hi = 0.0, ZERO_RANGE
            fixed[name] = (lo, hi)
        merged = dict(table.items())
        merged.update(fixed)
        return CalibrationTable(merged, method=table.method, fingerprint=self.fingerprint,
                                meta=table.meta)


def _as_tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def _layer_name(node, scopes):
    """Innermost user block owning the node's main operator, else the node's name."""
    main = next((m[0] for m in node.members if m[1] == node.main_op), node.members[0][0])
    best = None
    for scope in scopes:
        if scope.prefix and main.startswith(scope.prefix):
            if best is None or len(scope.prefix) > len(best.prefix):
                best = scope
    return best.name if best is not None else main


def _method_name(calibrator):
    return getattr(calibrator, "method", None) or type(calibrator).__name__


def _length(data, limit):
    try:
        n = len(data)
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)
