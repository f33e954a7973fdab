"""QuantizedHybridBlock: an int8 copy of a Gluon HybridBlock, called exactly like it.

The block is the thin runtime over the records of :mod:`gluon_quant.pipeline`; its stage
methods (:meth:`~QuantizedHybridBlock.fuse`, :meth:`~QuantizedHybridBlock.quantize_graph`,
:meth:`~QuantizedHybridBlock.calibrate`, :meth:`~QuantizedHybridBlock.finalize`) each run
one stage function and keep its record.
"""
import inspect
import threading
from typing import Optional

import mxnet as mx
from mxnet.gluon import HybridBlock

from . import _mxnet, fallback, pipeline
from .backends import get_spec
from .calib import get_calibrator
from .calib.table import as_table
from .config import QuantConfig
from .calls import call_inputs, call_outputs, run_error
from .data import BatchConverter, InputSpec, peek
from .errors import (ConfigError, EmptyCalibrationError, GluonQuantError, GraphError,
                     NotHybridizableError, refuse_cast, refuse_optimize_for,
                     refuse_parameter_files, refuse_pickling, refuse_summary)
from .presets import resolve_preset
from .debug.timing import layer_timing
from .graph.tools import int8_operators
from .report import build_report
from .watch import META_KEY as WATCH_KEY, InputWatch

__all__ = ["QuantizedHybridBlock"]


class _Source:
    """Holds the user's fp32 net without registering it as a child block (registering it
    would make ``hybridize()``, ``collect_params()`` and ``cast()`` reach into it)."""

    def __init__(self, net):
        self.net = net


def _setting(name):
    return property(lambda self: getattr(self.config, name),
                    doc="``config.%s`` (see :class:`~gluon_quant.QuantConfig`)." % name)


def _ranges_method(qnet):
    """The method the ranges in use came from: the table's once built (a table's own when
    the block was built from one: the ``calibrator`` setting did not choose them), else
    the calibrator's."""
    table = qnet.calibration_table if qnet.model is not None else None
    return table.method if table is not None else pipeline.method_name(qnet.calibrator)


def _describe(qnet):
    """``repr(qnet)``: the fp32 net, the settings that shape it, and what runs in int8
    (Gluon's own repr listed no layer: the int8 net is one graph, not child blocks)."""
    if qnet.model is None:
        state = "not built yet: calibrate() and finalize()"
    else:
        state = "%d of %d convolution/dense layers in int8" % qnet.report().coverage()
    return "QuantizedHybridBlock(%s, backend=%s, calibrator=%s, dtype=%s, granularity=%s: %s)" % (
        type(qnet.net).__name__, qnet.backend.value, _ranges_method(qnet),
        qnet.dtype.value, qnet.granularity.value, state)


def _hybridize(qnet, active=True, **kwargs):
    """``QuantizedHybridBlock.hybridize``: Gluon's, with static memory as the int8 graph
    takes it (:func:`_mxnet.static_flags`, where the backend uses static memory) whatever
    the call asks: a habitual ``hybridize(static_alloc=True, static_shape=True)`` made a
    control-flow graph return the previous call's results (cosine 0.76-0.84) and a graph
    the first run marked fail inside MXNet. Other options pass through."""
    graph = qnet.quantized_graph
    static = graph is not None and get_spec(qnet.backend.value).static_alloc
    return _mxnet.hybridize_with(qnet, _mxnet.static_flags(graph) if static else {}, active,
                                 **kwargs)


def _export(qnet, prefix, epoch=0, remove_amp_cast=True, *, fmt="gluon_quant"):
    """``QuantizedHybridBlock.export``: write the int8 model to files (see
    :func:`gluon_quant.export.export_model`). ``epoch`` and ``remove_amp_cast`` are taken
    for Gluon's ``export`` signature: the file names carry no epoch (except the
    ``fmt='mxnet'`` pair's ``-0000.params``), and casts stay as the graph has them."""
    from .export import export_model   # export reads this block's public records
    return export_model(qnet, prefix, fmt=fmt)


def _checked_net(net):
    """``net`` if it is an fp32 Gluon ``HybridBlock`` (a plain ``nn.Sequential`` of them:
    a ``HybridSequential`` over the same layers); else the package's error."""
    from .symbol_block import QuantizedSymbolBlock    # deferred: it reads this package's
    if isinstance(net, mx.mod.Module):
        net = _module_block(net)
    if isinstance(net, mx.gluon.nn.Sequential):       # export format
        net = _hybrid_sequential(net)
    elif isinstance(net, mx.gluon.Block) and not isinstance(net, HybridBlock):
        net = _block_view(net)
    if not isinstance(net, HybridBlock):
        raise NotHybridizableError(
            "quantize() needs a mxnet.gluon.HybridBlock, got %s. Convert the model to "
            "HybridBlock/HybridSequential layers with a hybrid_forward." % type(net).__name__)
    if isinstance(net, (QuantizedHybridBlock, QuantizedSymbolBlock)):
        raise ConfigError(
            "The network is already an int8 %s: quantize the fp32 network it was made from "
            "(qnet.net for a QuantizedHybridBlock), or use it as it is." % type(net).__name__)
    inner = _find_blocks(net, (QuantizedHybridBlock, QuantizedSymbolBlock))
    if inner:
        raise ConfigError(
            "The network holds an int8 block (net.%s, a %s): its graph cannot be traced and "
            "quantized again. Put the fp32 network in its place (qnet.net for a "
            "QuantizedHybridBlock) and quantize the whole." % (inner[0][0],
                                                               type(inner[0][1]).__name__))
    for where, block in [("network", net)] + [("net." + path, block) for path, block in
                                               _find_blocks(net, mx.gluon.SymbolBlock)]:
        ops = isinstance(block, mx.gluon.SymbolBlock) and int8_operators(
            _mxnet.graph_json(_mxnet.symbol_block_graph(block)[1]))
        if ops:
            raise ConfigError(
                "The %s is a SymbolBlock over a graph that is int8 already (it has MXNet's "
                "%s): it was quantized before, by MXNet's quantize_net/quantize_model or a "
                "gluon_quant export written with fmt='mxnet'. Quantize the fp32 network it "
                "came from, or run it as it is." % (where, ", ".join(ops[:3])))
    return net


def hybrid_view(net):
    """The ``HybridBlock`` :func:`gluon_quant.quantize` traces for ``net``: ``net`` itself,
    or a view over a plain ``Block``, ``nn.Sequential`` or Module-API model; the package's
    error where it cannot be one."""
    return _checked_net(net)


def _module_block(module):
    """A ``SymbolBlock`` over a Module-API model's symbol and parameters (as
    ``quantize_model(sym, arg_params, aux_params)`` took them), its loss heads run as at
    inference so that labels are not inputs (:mod:`gluon_quant.graph.heads`)."""
    from .graph.heads import inference_heads
    if not module.params_initialized:
        raise ConfigError(
            "The Module has no parameters yet: call mod.bind(...) and mod.init_params() or "
            "mod.set_params(arg_params, aux_params), or load it with mx.mod.Module.load("
            "prefix, epoch), before quantize().")
    arg_params, aux_params = _mxnet.module_params(module)
    graph = _mxnet.graph_json(module.symbol)
    inference_heads(graph)
    return _mxnet.symbol_block(_mxnet.load_graph(graph), list(module.data_names),
                               {**arg_params, **aux_params}, mx.cpu())


def _find_blocks(block, kinds, path=""):
    """``[(dotted path, block)]`` of the blocks of the given kinds under ``block``."""
    found = []
    for name, child in _mxnet.named_children(block):
        where = name if not path else path + "." + name
        found += [(where, child)] if isinstance(child, kinds) else _find_blocks(child, kinds,
                                                                              where)
    return found


class _BlockView(HybridBlock):
    """A ``HybridBlock`` over a plain Gluon ``Block`` (a ``forward(self, x)`` calling its
    HybridBlock layers, as many users write a model): tracing calls its ``forward`` with
    symbols, as ``hybridize()`` would if the block were a HybridBlock. A forward that only
    calls its layers and operators that symbols have too (``x.relu()``, ``x.reshape``,
    ``+``) traces; one calling ``nd.*`` functions or reading values fails with the hint."""

    trace_hint = (" {name} is a plain gluon.Block: its forward is traced with symbols, so it "
                  "may call its layers and methods arrays and symbols share (x.relu(), "
                  "x.reshape(...), x + y), but no nd.* function or value (.asnumpy(), "
                  ".shape). Or make it a HybridBlock with hybrid_forward(self, F, x) using "
                  "F.* operators.")

    def __init__(self, block):
        super().__init__(prefix=block.prefix)
        # Not a registered child (a HybridBlock refuses Block children): its parameters
        # are the view's through collect_params, its layers the view's children (layer
        # names in report(), exclude=).
        object.__setattr__(self, "block", block)
        _mxnet.share_children(self, block)

    def collect_params(self, select=None):
        return self.block.collect_params(select)

    def hybrid_forward(self, F, *args, **kwargs):     # pylint: disable=arguments-differ
        return self.block(*args, **kwargs)


def _block_view(block):
    """A :class:`_BlockView` of ``block``, named as its class and taking the tensors its
    ``forward`` takes (the signature is what the inputs are read from)."""
    forward = inspect.signature(block.forward)
    lead = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("self", "F")]
    method = lambda self, F, *args, **kwargs: _BlockView.hybrid_forward(self, F, *args, **kwargs)
    method.__signature__ = inspect.Signature(lead + list(forward.parameters.values()))
    cls = type(type(block).__name__, (_BlockView,), {"hybrid_forward": method,
                                                      "__module__": type(block).__module__})
    return cls(block)


_LAMBDA_HINT = " (nn.HybridLambda(lambda F, x: ...) for an nn.Lambda, F being mx.nd or mx.sym)"


def _hybrid_sequential(seq, path="net"):
    """A ``HybridSequential`` holding the layers of the ``nn.Sequential`` ``seq`` themselves
    (parameters shared, nothing copied): ``nn.Sequential`` is how many Gluon users stack
    hybridizable layers, and it runs them exactly as ``HybridSequential`` does."""
    view = mx.gluon.nn.HybridSequential(prefix=seq.prefix)
    for name, child in _mxnet.named_children(seq):
        if isinstance(child, mx.gluon.nn.Sequential):
            child = _hybrid_sequential(child, "%s[%s]" % (path, name))
        if not isinstance(child, HybridBlock):
            raise NotHybridizableError(
                "quantize() needs HybridBlocks, and %s[%s] of this nn.Sequential is a %s (a "
                "Block without hybrid_forward). Rewrite it as a HybridBlock%s; every other "
                "layer can stay as it is." % (path, name, type(child).__name__, _LAMBDA_HINT
                                              if isinstance(child, mx.gluon.nn.Lambda) else ""))
        view.add(child)
    return view


class QuantizedHybridBlock(HybridBlock):
    """An int8 version of a Gluon ``HybridBlock``, with the same inputs and outputs.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The fp32 network. It is not modified, and its hybridize settings are kept.
    config : QuantConfig, optional
        The settings; keyword arguments (any :class:`~gluon_quant.QuantConfig` field:
        ``calibrator``, ``dtype``, ``backend``, ``exclude``...) replace its fields.

    Notes
    -----
    Calling the block from several Python threads at once is safe and gives the same
    results as calling it from one: calls are serialized by a lock held only while a
    call is dispatched to MXNet's engine (Gluon's graph building on the first call is
    not thread-safe; the computation itself still runs on MXNet's own worker threads).
    """

    def __init__(self, net, config: Optional[QuantConfig] = None, **settings):
        super().__init__(prefix="quantized_", params=None)
        self._source = _Source(_checked_net(net))
        self._config = QuantConfig.build(config, net=self.net, **settings)
        self._calibrator = get_calibrator(self._config.calibrator)
        self._call_lock, self._cached_call = threading.Lock(), _mxnet.CachedCall()
        self._fused = self._plan = self._calibration = self._model = self._fp32 = None
        self._converter = self._samples = self._input_shapes = self._inputs = self._watch = None

    # refused with what to use (export() saves it); hybridize keeps the graph's static memory
    __reduce_ex__, cast, summary, optimize_for, save_parameters, load_parameters, save, load, \
        __repr__, hybridize, export = (refuse_pickling, refuse_cast, refuse_summary,
                                       refuse_optimize_for, *[refuse_parameter_files] * 4,
                                       _describe, _hybridize, _export)
    config = property(lambda self: self._config, doc="The :class:`QuantConfig` (frozen).")
    net = property(lambda self: self._source.net, doc="The fp32 network.")
    calibrator = property(lambda self: self._calibrator,
                          doc="The calibrator (holds the statistics after calibration).")
    dtype, backend, granularity, exclude, bias_correction, progress = map(_setting, (
        "dtype", "backend", "granularity", "exclude", "bias_correction", "progress"))
    ctx = property(lambda self: self._config.ctx or mx.cpu(), doc="Where the block runs.")
    preset = property(lambda self: resolve_preset(self._config.preset, self.net),
                      doc="The :class:`~gluon_quant.Preset` applied (None: none).")
    fused = property(lambda self: self._fused, doc="The FusedGraph record (or None).")
    plan = property(lambda self: self._plan, doc="The QuantPlan record (or None).")
    calibration = property(lambda self: self._calibration, doc="The Calibration record.")
    model = property(lambda self: self._model, doc="The BuiltModel record (or None).")
    fused_graph = property(lambda self: self._fused and self._fused.symbol,
                           doc="The fused fp32 Symbol (None before :meth:`fuse`).")
    quantized_graph = property(lambda self: self._model and self._model.symbol,
                               doc="The final int8 Symbol (None before :meth:`finalize`).")
    calibration_table = property(
        lambda self: (self._model.table if self._model is not None else
                      self._calibration.table if self._calibration is not None else None),
        doc="The ranges in use (None before calibration).")
    fp32_params = property(lambda self: self._fp32 and dict(self._fp32), doc=(
        "The fp32 parameters of :attr:`fused_graph` (copies; rewritten where the graph "
        "passes changed them, e.g. folded BatchNorms). None before calibration."))
    calib_input_shapes = property(
        lambda self: self._calibration and list(self._calibration.input_shapes),
        doc="Input shapes of the first calibration batch (None without calibration).")

    # ------------------------------------------------------------------ stages
    def fuse(self, batch=None, table=None):
        """Trace the net and run the backend's fp32 fusion; returns the fused Symbol.

        ``batch`` (a calibration batch) tells which optional inputs the net is fed; a
        ``table``, the inputs and shapes it was calibrated at (the int8 regions depend on
        them), where the batch does not."""
        if table is not None:
            meta = table.meta
            self._input_shapes, self._inputs = meta.get("input_shapes"), InputSpec.from_meta(meta)
        self._fused = pipeline.fuse(self.net, self._config, batch, self._input_shapes,
                                    self._inputs)
        self._plan = self._model = None
        self._converter = BatchConverter(self._fused.inputs, self.ctx, self._config.input_fn)
        return self._fused.symbol

    def quantize_graph(self):
        """Insert int8 operators (uncalibrated); returns the tensor names to calibrate."""
        if self._fused is None:
            self.fuse()
        self._plan = pipeline.plan_quantization(self._fused, self._config)
        return list(self._plan.calib_names)

    def calibrate(self, calib_data, *, num_calib_batches=None):
        """Run the fused fp32 graph over ``calib_data``; returns the CalibrationTable.
        Statistics add up over calls (bias correction uses the last call's samples);
        ``num_calib_batches`` overrides ``config.num_calib_batches`` for this call."""
        if self._fused is None:
            first, calib_data = peek(calib_data)
            self.fuse(first)
        if self._plan is None:
            self.quantize_graph()
        config = self._config if num_calib_batches is None else self._config.replace(
            num_calib_batches=num_calib_batches)
        self._fp32, self._calibration = pipeline.calibrate(
            self._plan, self.net, calib_data, config=config, calibrator=self._calibrator,
            convert=self._converter, earlier=self._calibration and self._calibration.table)
        self._samples = self._calibration.samples
        return self._calibration.table

    def finalize(self, table=None):
        """Apply ranges (``table`` or its path, else the last calibration's), build the block.

        A table without bias corrections for this set of int8 layers gets them measured
        on the calibration samples this block (or the block it was cloned from) kept; the
        int8 graph runs once on them, and a layer whose int8 kernel fails stays fp32
        (:mod:`gluon_quant.fallback`).
        """
        table = as_table(table)                 # a saved table's path is read
        if self._fused is None and table is not None:
            self.fuse(table=table)
        if self._plan is None:
            self.quantize_graph()
        calibration = self._calibration
        table = table if table is not None else (calibration and calibration.table)
        if table is None:
            raise EmptyCalibrationError(
                "No calibration ranges: call calibrate(calib_data) first or pass a "
                "CalibrationTable (quantize(net, calib_table=...)).")
        table = pipeline.check_table(self._plan, table, self._config)
        self._fp32 = pipeline.params_for_table(self.net, self._fused, self.ctx, table,
                                               self._fp32)
        self._model = None
        self._model = fallback.build_runnable(self._plan, self._fp32, table,
                                              config=self._config, samples=self._samples)
        self._plan = self._model.plan       # with any node the first run sent back to fp32
        self.int8_block = self._model.block   # registered as the child the graph calls
        self._watch = InputWatch(self._model.table.meta.get(WATCH_KEY), self._fused.inputs.names)
        _mxnet.clear_cached_op(self)
        self.hybridize(get_spec(self.backend.value).static_alloc)   # as the graph takes it
        return self

    # ------------------------------------------------------------- inspection
    @property
    def fingerprint(self):
        """sha256 of the fused fp32 graph's structure (what calibration tables are tied to)."""
        if self._fused is None:
            self.fuse()
        return self._fused.fingerprint

    @property
    def input_names(self):
        """The graph's input names."""
        if self._fused is None:
            self.fuse()
        return list(self._fused.inputs.names)

    def convert_batch(self, batch):
        """The list of input NDArrays of one batch, mapped as during calibration."""
        if self._converter is None:
            self.fuse()
        return self._converter(batch)

    def clone(self, config=None, **changes):
        """A new, unbuilt block over the same net: ``config.replace(**changes)``.

        Its fused graph is the same when ``backend`` is unchanged, so this block's
        :attr:`calibration_table` can be applied with ``clone.finalize(table)``; the
        calibration samples kept for bias correction are passed on.
        """
        twin = type(self)(self.net, config or self._config, **changes)
        twin._samples = self._samples     # same class: its own private state
        twin._input_shapes = self._fused.input_shapes if self._fused else self._input_shapes
        twin._inputs = self._fused.inputs if self._fused else self._inputs
        return twin

    def report(self, timing=None):
        """Per-layer QuantReport (with ``timing=batch``: int8 and fp32 time of each node)."""
        if self._model is None:
            raise GraphError("The network is not quantized yet: call finalize() (or use "
                             "gluon_quant.quantize) before report().")
        return build_report(self._model, self.net, self._config, _ranges_method(self),
                            timing=None if timing is None else layer_timing(self, timing))

    # ---------------------------------------------------------------- forward
    def forward(self, *args):  # pylint: disable=arguments-differ
        if not args:    # not Gluon's bare TypeError: what the network takes
            raise _no_input(self._model, self._fused, self._calibration, self.ctx)
        flat, np_in = call_inputs(args, self._watch)     # legacy views of mxnet.np
        try:
            with self._call_lock, _mxnet.legacy_mode():
                out = self._cached_call(self, flat, super().forward)
        except GluonQuantError:
            raise
        except (_mxnet.MXNetError, ValueError, AssertionError) as err:  # MXNet asserts formats
            raise run_error(err, list(args), self._fused.inputs, self._calibration,
                            self.ctx) from err
        return call_outputs(out, np_in)     # tuples, as fp32 nets return; NumPy if given

    def hybrid_forward(self, F, x, *args):  # pylint: disable=arguments-differ
        if self._model is None:
            raise _not_built()
        if F is mx.nd:
            _check_device(self.backend.value, x)
        out = self.int8_block(x, *args)
        flat = list(out) if isinstance(out, (list, tuple)) else [out]
        return _mxnet.regroup(flat, self._fused.out_format)


def _not_built():
    """The error for using a block before calibrate() and finalize() built it."""
    return GraphError("QuantizedHybridBlock is not built yet: call calibrate() and "
                      "finalize(), or create it with gluon_quant.quantize().")


def _no_input(model, fused, calibration, ctx):
    """The error for a call with no input: what the network takes, or that it is not built."""
    if model is None:
        return _not_built()
    return run_error(ValueError("no input was given"), [], fused.inputs, calibration, ctx)


def _check_device(backend, x):
    """Refuse an input on another kind of device than the backend's graph is built for."""
    device_type = get_spec(backend).device_type
    if x.context.device_type != device_type:
        raise GraphError("backend=%r builds a graph for %s devices; run it on one "
                         "(ctx=mx.gpu() for 'cudnn'), or quantize with backend='onednn' "
                         "for CPU." % (backend, device_type.upper()))
