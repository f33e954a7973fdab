"""QuantizedSymbolBlock: load an export of :meth:`QuantizedHybridBlock.export` and run it.

Loading checks everything before any byte reaches MXNet's C++ loaders: the metadata's
format and version, the size and sha256 of the symbol and params files, the structure of
the params file (parsed in Python, never unpickled), and that the parameters match the
graph's arguments one for one. Then the int8 weights are unpacked into fp32 weights that
the oneDNN runtime quantizes back to exactly the exported int8 values, so outputs are
bit-identical to the model that was exported.
"""
import json
import logging
import math
import os
import types

import mxnet as mx
import numpy as np

from . import _mxnet, _packing, kernels
from ._background import Background
from ._io import loads_json, parse_ndarray_file, read_bytes, sha256_bytes
from .calib import CalibrationTable
from .config import check_ctx
from .calls import as_tuples, call_inputs, call_outputs, run_error
from .data import InputSpec
from .errors import (ArtifactError, CalibrationTableError, GluonQuantError,
                     InputMismatchError, refuse_cast, refuse_optimize_for,
                     refuse_parameter_files, refuse_pickling, refuse_summary)
from .export import FORMAT, FORMAT_VERSION, ExportFormat, file_names
from .report import QuantReport
from .watch import InputWatch, from_inputs_meta

__all__ = ["QuantizedSymbolBlock"]

_log = logging.getLogger(__name__)

_META_KEYS = {"format", "version", "gluon_quant_version", "mxnet_version", "settings",
              "fingerprint", "inputs", "output_format", "files", "packed", "kept_fp32",
              "calibration_table"}


class QuantizedSymbolBlock(mx.gluon.SymbolBlock):
    """A ``SymbolBlock`` running an exported int8 model, called like the original net.

    Create it with :meth:`imports` (on CPU it comes hybridized with ``static_alloc`` and
    ``static_shape``, as the quantized block was); multi-output models return
    the same nested tuples as the network that was quantized.

    Parameters
    ----------
    outputs, inputs, params
        As for ``mx.gluon.SymbolBlock``.
    metadata : dict, optional
        The export's metadata (see :mod:`gluon_quant.export`).
    """

    def __init__(self, outputs, inputs, params=None, *, metadata=None, source=None):
        super().__init__(outputs, inputs, params)
        metadata = metadata or {}
        # Kept in a holder: Gluon searches every dict or list set on a Block for child
        # blocks, which costs ~25 ms on a large metadata dict.
        self._meta = _Holder(metadata, source or "this model's metadata")
        self._output_nesting = metadata.get("output_format")
        self._input_names = tuple(entry["name"] for entry in metadata.get("inputs", []))
        self._watch = InputWatch(from_inputs_meta(metadata.get("inputs")), self._input_names)
        self._cached_call = _mxnet.CachedCall()     # the CachedOp without Gluon's per-call work

    __reduce_ex__ = refuse_pickling     # it holds MXNet handles: export() it instead
    cast = refuse_cast                  # int8 weights and ranges would be lost
    summary = refuse_summary            # Gluon's needs an unhybridized block
    optimize_for = refuse_optimize_for  # already fused and quantized for its backend
    save_parameters = load_parameters = save = load = refuse_parameter_files  # export() does it

    @classmethod
    # pylint: disable-next=arguments-differ,too-many-arguments
    def imports(cls, prefix, input_names=None, param_file=None, ctx=None, allow_missing=False,
                ignore_extra=False):
        """Load ``PREFIX-symbol.json``, ``PREFIX-int8.params`` and ``PREFIX-meta.json``.

        ``imports(prefix)`` or ``imports(prefix, ctx)``; Gluon's ``SymbolBlock.imports``
        call, ``imports(symbol_file, input_names, param_file, ctx)``, works as well.

        Parameters
        ----------
        prefix : str or os.PathLike
            The prefix given to ``export`` (or one of the files it wrote, such as
            ``PREFIX-symbol.json``).
        input_names : str or list of str, optional
            The export knows its inputs; given, they must be those (in order).
        param_file : str or os.PathLike, optional
            The export's own ``PREFIX-int8.params`` (nothing else loads into it).
        ctx : mxnet.Context, optional
            Where to run (CPU by default); also accepted as the second argument.
        allow_missing, ignore_extra : bool
            Accepted for Gluon's signature: an export is loaded whole, checked by sha256.

        Returns
        -------
        QuantizedSymbolBlock

        Raises
        ------
        ArtifactError
            A file is missing, truncated, altered, mismatched or of a newer format; the
            message names the file and the problem.
        ConfigError
            ``ctx`` is not a context, or a GPU this MXNet cannot use.
        """
        if isinstance(input_names, mx.Context) and ctx is None:    # imports(prefix, ctx)
            input_names, ctx = None, input_names
        check_ctx(ctx)      # before any file is read: MXNet says only "GPU is not enabled"
        ctx = ctx if ctx is not None else mx.cpu()
        paths = file_names(_export_prefix(prefix))
        meta = _read_metadata(paths["meta"])
        _check_gluon_arguments(paths, meta, input_names, param_file)
        directory = os.path.dirname(os.path.abspath(paths["meta"]))
        symbol_path, symbol_data = _read_file(meta, directory, "symbol")
        _check_digest(meta, paths, "symbol", symbol_path, sha256_bytes(symbol_data))
        # MXNet parses the checked graph on a second thread (ctypes releases the GIL)
        # while the params file is read and its weights unpacked (numpy releases it too).
        graph = Background(_load_symbol, symbol_path, symbol_data)
        params_path, params_data = _read_file(meta, directory, "params")
        # The params file's sha256 (the largest part of the checking) is computed on a
        # third thread (hashlib releases the GIL); it is checked before the block is
        # returned, and before any other error is reported, so a damaged file is always
        # named as such.
        digest = Background(sha256_bytes, params_data)
        try:
            with _mxnet.legacy_mode():      # a legacy graph, also under npx.set_np()
                block = _build(cls, meta, paths, graph, symbol_path, params_path,
                               params_data, ctx)
        except GluonQuantError:
            _check_digest(meta, paths, "params", params_path, digest.result())
            raise
        _check_digest(meta, paths, "params", params_path, digest.result())
        if ctx.device_type == "cpu":
            # Without a static CachedOp, oneDNN's fused int8 operators are built anew at
            # every call and quantize their fp32 weights again: a loaded MobileNetV2 ran 107
            # reorders per call instead of 4 (benchmarks/op_profile.py).
            block.hybridize()       # static memory as the graph takes it
        _log.info("Loaded %s (%d weights unpacked from int8).", prefix, len(meta["packed"]))
        _check_pair_sums(meta, paths["meta"])
        return block

    def hybridize(self, active=True, **kwargs):
        """Gluon's ``hybridize``, with static memory as this int8 graph takes it on CPU
        (:func:`gluon_quant._mxnet.static_flags`) whatever the call asks: a habitual
        ``hybridize(static_alloc=True, static_shape=True)`` would make a control-flow graph
        return the previous call's results. Other options pass through."""
        on_cpu = all(c.device_type == "cpu" for p in self.collect_params().values()
                     for c in p.list_ctx())
        flags = _mxnet.static_flags(_mxnet.symbol_block_graph(self)[1]) if on_cpu else {}
        return _mxnet.hybridize_with(self, flags, active, **kwargs)

    # pylint: disable-next=arguments-differ
    def export(self, path, epoch=0, remove_amp_cast=True, *, fmt="gluon_quant"):
        """Write this int8 model to files again, as
        :meth:`QuantizedHybridBlock.export` does: ``PREFIX-symbol.json``,
        ``PREFIX-int8.params`` and ``PREFIX-meta.json`` (or, with ``fmt='mxnet'``, the
        stock MXNet pair). The copy loads with :meth:`imports` and runs bit-identically.

        Parameters
        ----------
        path : str
            The output prefix.
        epoch : int, default 0
            Accepted for Gluon's ``export`` signature; the gluon_quant format has no
            epoch, and ``fmt='mxnet'`` writes ``PREFIX-0000.params`` as the other export.
        remove_amp_cast : bool, default True
            Accepted for Gluon's ``export`` signature; casts stay as the graph has them.
        fmt : {'gluon_quant', 'mxnet'}

        Returns
        -------
        dict of str to str
            The written paths by role.
        """
        from .export import export_model    # export reads this block's public records
        del epoch
        return export_model(self, path, fmt=fmt)

    # ------------------------------------------------------------------ accessors
    @property
    def metadata(self):
        """dict: the export's metadata (a copy)."""
        return json.loads(json.dumps(self._meta.value))

    @property
    def input_names(self):
        """list of str: the graph's input names."""
        return list(self._input_names)

    @property
    def calibration_table(self):
        """CalibrationTable or None: the ranges the model was quantized with.

        Checked when it is read (its own sha256 and structure), not at loading: the
        ranges are already part of the graph, and checking a table of bias corrections
        costs more than loading the weights.

        Raises
        ------
        CalibrationTableError
            The table stored in the metadata is damaged.
        """
        meta = self._meta.value
        text = meta.get("calibration_table_text")       # format 2.1
        if text is None and meta.get("calibration_table") is None:
            return None
        try:
            state = loads_json(text if text is not None
                               else json.dumps(meta["calibration_table"]))
        except ValueError as err:
            raise CalibrationTableError("The calibration table in %r is not valid JSON (%s). "
                                        "Export the model again." % (self._meta.source, err)) \
                from None
        try:
            return CalibrationTable.from_dict(state)
        except CalibrationTableError as err:
            raise CalibrationTableError("The calibration table in %r: %s"
                                        % (self._meta.source, err)) from None

    def report(self):
        """The per-layer :class:`~gluon_quant.QuantReport` of the quantized net, as it was
        when the model was exported.

        Raises
        ------
        ArtifactError
            The export holds no report (written before format 3.1) or a damaged one.
        """
        return _report_of(self._meta.value, self._meta.source)

    def __repr__(self):
        try:
            state = ": %d of %d convolution/dense layers in int8" % self.report().coverage()
        except ArtifactError:       # an export without its report
            state = ""
        return "QuantizedSymbolBlock(%s%s)" % (self._meta.source, state)

    def forward(self, *args):  # pylint: disable=arguments-differ
        if not args:    # not Gluon's bare TypeError: what the network takes
            raise _run_error(self, ValueError("no input was given"), [])
        flat, np_in = call_inputs(args, self._watch)     # legacy views of mxnet.np
        try:
            with _mxnet.legacy_mode():
                out = self._cached_call(self, flat, super().forward)
        except GluonQuantError:
            raise
        except (mx.base.MXNetError, ValueError) as err:
            raise _run_error(self, err, list(args)) from err
        if self._output_nesting is not None:
            # one array comes back bare: a net returning (x, []) must still give a pair
            flat = list(out) if isinstance(out, (list, tuple)) else [out]
            out = as_tuples(_mxnet.regroup(flat, self._output_nesting))
        return call_outputs(out, np_in)


def _run_error(block, err, inputs):
    """What a loaded model's MXNet failure is (:func:`gluon_quant.calls.run_error`): the
    inputs are blamed where they live elsewhere or differ from the calibration batches
    in count, rank or per-sample shape (the export's ``inputs``), else MXNet itself."""
    entries = block.metadata.get("inputs") or []
    shapes = [entry.get("shape") for entry in entries]
    seen = types.SimpleNamespace(input_shapes=[tuple(s) for s in shapes]) \
        if shapes and all(shapes) else None
    names = list(block.input_names)
    return run_error(err, inputs, InputSpec(names, names), seen,
                     _mxnet.parameter_context(block),
                     built="load it with QuantizedSymbolBlock.imports(..., ctx=)")


def export_report(prefix):
    """The per-layer report stored in the export ``prefix``, read from its metadata alone
    (no weights are loaded).

    Raises
    ------
    ArtifactError
        The metadata is missing or damaged, or holds no report.
    """
    path = file_names(prefix)["meta"]
    return _report_of(_read_metadata(path), path)


def _report_of(meta, source):
    text = meta.get("report_text")
    if text is None:
        raise ArtifactError(
            "%r holds no per-layer report: it was exported by gluon_quant %s, before format "
            "3.1. Export the model again (a loaded QuantizedSymbolBlock can export() itself)."
            % (source, meta.get("gluon_quant_version")))
    try:
        return QuantReport.from_dict(loads_json(text))
    except ValueError as err:
        raise ArtifactError("The report in %r is damaged (%s). Export the model again."
                            % (source, err)) from None


class _Holder:
    """Holds a value out of Gluon's sight (it scans a Block's dicts for child blocks)."""

    def __init__(self, value, source):
        self.value, self.source = value, source


def _read_file(meta, directory, role):
    """``(path, bytes)`` of the ``role`` file the metadata lists, its size checked."""
    entry = meta["files"][role]
    path = os.path.join(directory, entry["name"])
    data = read_bytes(path, role + " file")
    if len(data) != entry["size"]:
        raise ArtifactError(
            "The %s file %r has %d bytes, the export wrote %d: it is truncated or was "
            "replaced. Export the model again." % (role, path, len(data), entry["size"]))
    return path, data


def _check_digest(meta, paths, role, path, digest):
    if digest != meta["files"][role]["sha256"]:
        raise ArtifactError(
            "The %s file %r does not match its sha256 in %r: it was altered or belongs to "
            "another export. Export the model again." % (role, path, paths["meta"]))


def _check_pair_sums(meta, path):
    """Warn where the model was built for int8 kernels that sum in int32 (VNNI) and this
    process's saturate (docs/faq.md: no VNNI): its uint8 inputs use all 8 bits."""
    if meta.get("int16_pair_sums") or not meta.get("packed") or not kernels.int16_pair_sums():
        return
    _log.warning(
        "%s was quantized on a CPU whose int8 kernels sum in int32 (VNNI), or by a "
        "gluon_quant that did not check; this CPU has no VNNI, and oneDNN's int8 "
        "convolutions and dense layers here saturate on uint8 inputs at their largest "
        "codes (results can be far off). Quantize on this machine instead (a saved "
        "calibration table rebuilds it: gq.quantize(net, calib_table=...)), then export "
        "again.", path)


def _build(cls, meta, paths, graph, symbol_path, params_path, params_data, ctx):
    """The block over the checked files, every parameter in its own array on ``ctx``
    (``graph.result()``: the Symbol, loaded on another thread)."""
    arrays = parse_ndarray_file(params_data, params_path, copy=False)
    hosts = {}

    def allocate(entries):
        """Arrays for the packed weights, which are unpacked straight into them."""
        pairs = _mxnet.host_arrays([(tuple(entry["shape"]), np.float32) for entry in entries])
        hosts.update(zip((entry["weight"] for entry in entries), pairs))
        return [view for _, view in pairs]

    checked = []

    def symbol():
        if not checked:
            checked.append(_check_symbol(symbol_path, graph.result()))
        return checked[0]

    params = _unpack_params(arrays, meta, symbol, params_path, allocate)
    sym = symbol()
    _check_output_format(meta.get("output_format"), len(sym.list_outputs()), paths["meta"])
    names = [entry["name"] for entry in meta["inputs"]]
    inputs = [mx.sym.var(name, dtype=entry["dtype"])
              for name, entry in zip(names, meta["inputs"])]
    try:
        block = cls(sym, inputs, metadata=meta, source=paths["meta"])
    except (mx.base.MXNetError, ValueError, AssertionError) as err:
        raise ArtifactError("The graph in %r does not take the inputs %s listed in %r: %s"
                            % (symbol_path, names, paths["meta"], err)) from err
    copied = [name for name in params if name not in hosts]   # views of the file's bytes
    hosts.update(zip(copied, _mxnet.host_arrays([(params[name].shape, params[name].dtype)
                                                 for name in copied])))
    for name in copied:
        hosts[name][1][...] = params[name]
    nd_params = {name: hosts[name][0] if ctx == mx.cpu() else hosts[name][0].as_in_context(ctx)
                 for name in params}
    try:
        # An int8 graph only runs inference: no gradient buffers, no copies.
        return _mxnet.adopt_params(block, nd_params)
    except GluonQuantError as err:
        raise ArtifactError("%r does not fit the graph in %r: %s"
                            % (params_path, symbol_path, err)) from err


#: Deepest output nesting read (Gluon's nets return a few levels at most).
_MAX_NESTING = 32


def _check_output_format(fmt, outputs, path):
    """Refuse an ``output_format`` that is not Gluon's nesting of ``outputs`` arrays: 0 for
    one array, a list of such formats for a tuple (None: no nesting recorded, the graph's
    outputs as they come)."""
    if fmt is None:
        return
    leaves, stack = 0, [(fmt, 0)]
    while stack:
        sub, depth = stack.pop()
        if isinstance(sub, list) and depth < _MAX_NESTING:
            stack.extend((inner, depth + 1) for inner in sub)
        elif type(sub) is int and sub == 0:     # noqa: E721 (True is an int too)
            leaves += 1
        else:
            raise ArtifactError("The metadata file %r has a bad output_format %s: Gluon's "
                                "nesting of the graph's outputs (0, or lists of them) was "
                                "expected. Export the model again." % (path, _brief(fmt)))
    if leaves != outputs:
        raise ArtifactError("The metadata file %r nests %d output(s) (output_format %s) but "
                            "the graph has %d. Export the model again."
                            % (path, leaves, _brief(fmt), outputs))


def _brief(value):
    """``value`` as JSON, cut to 200 characters (a nesting too deep for JSON: said so)."""
    try:
        return json.dumps(value)[:200]
    except (RecursionError, ValueError):
        return "(nested too deep to print)"


def _check_gluon_arguments(paths, meta, input_names, param_file):
    """The ``input_names`` and ``param_file`` of a Gluon-style ``imports`` call must be the
    export's own: an :class:`InputMismatchError` or :class:`ArtifactError` says what is."""
    names = [entry["name"] for entry in meta["inputs"]]
    if input_names is not None:
        given = [input_names] if isinstance(input_names, str) else list(input_names)
        if given != names:
            raise InputMismatchError(
                "input_names=%r, but the export described by %r takes %r: it knows its "
                "inputs; drop input_names or pass these." % (input_names, paths["meta"], names))
    if param_file is not None and os.path.abspath(os.fspath(param_file)) != \
            os.path.abspath(paths["params"]):
        raise ArtifactError(
            "param_file=%r is not the export's parameters: %r loads only its own %r. Call "
            "QuantizedSymbolBlock.imports(prefix) with the prefix given to export()."
            % (os.fspath(param_file), paths["meta"], paths["params"]))


def _export_prefix(prefix):
    """The export prefix ``prefix`` names: itself, or the prefix of an export file given
    instead (``PREFIX-symbol.json``, ``-int8.params``, ``-meta.json``). A plain MXNet pair
    (no metadata beside its symbol file) is refused with the loader that reads it."""
    prefix = os.fspath(prefix)
    for path in file_names("").values():
        if prefix.endswith(path) and os.path.isfile(prefix):
            prefix = prefix[:-len(path)]
            break
    paths = file_names(prefix)
    if not os.path.exists(paths["meta"]) and os.path.isfile(paths["symbol"]):
        pair = file_names(prefix, ExportFormat.MXNET)
        raise ArtifactError(
            "%r has no %r beside it: it is not a gluon_quant export (written by "
            "qnet.export(prefix)). A plain MXNet pair (qnet.export(prefix, fmt='mxnet') or "
            "net.export) loads with mx.gluon.SymbolBlock.imports(%r, input_names, %r); an "
            "fp32 one is quantized with gluon_quant.quantize or `gluon-quant quantize %s`."
            % (paths["symbol"], os.path.basename(paths["meta"]), pair["symbol"],
               pair["params"], prefix))
    return prefix


def _read_metadata(path):
    data = read_bytes(path, "metadata file")
    try:
        meta = loads_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ArtifactError("The metadata file %r is not valid JSON (truncated or edited: "
                            "%s). Export the model again." % (path, err)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError("%r is not gluon_quant export metadata (format %r, expected %r)."
                            % (path, meta.get("format") if isinstance(meta, dict) else None,
                               FORMAT))
    version = meta.get("version")
    try:
        major, minor = (int(part) for part in version.split("."))
    except (AttributeError, ValueError):
        raise ArtifactError("The metadata file %r has a bad format version %r (expected "
                            "'MAJOR.MINOR')." % (path, version)) from None
    if major > FORMAT_VERSION[0]:
        raise ArtifactError(
            "The metadata file %r has format version %d.%d, newer than the %d.x this "
            "gluon_quant reads (it was written by gluon_quant %s): upgrade gluon_quant."
            % (path, major, minor, FORMAT_VERSION[0], meta.get("gluon_quant_version")))
    missing = sorted(_META_KEYS - set(meta) | ({"plain"} - set(meta) if major >= 2 else set()))
    if missing:
        raise ArtifactError("The metadata file %r lacks %s. Export the model again."
                            % (path, ", ".join(missing)))
    try:
        _check_meta_types(meta)
        if major == 1:
            meta["packed"] = [_packing.PackSpec.from_dict(s).to_dict() for s in meta["packed"]]
        else:
            meta["packed"] = [_packed_entry(entry) for entry in meta["packed"]]
            meta["plain"] = [_plain_entry(entry) for entry in meta["plain"]]
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise ArtifactError("The metadata file %r is malformed (%s: %s). Export the model "
                            "again." % (path, type(err).__name__, err)) from None
    return meta


def _check_meta_types(meta):
    for role in ("symbol", "params"):
        entry = meta["files"][role]
        if not isinstance(entry["name"], str) or os.path.basename(entry["name"]) != \
                entry["name"] or not isinstance(entry["size"], int) \
                or not isinstance(entry["sha256"], str):
            raise ValueError("bad 'files' entry for %s: %r" % (role, entry))
    inputs = meta["inputs"]
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str)
            and i.get("dtype") in ("float32", "float16", "float64", "uint8", "int8")
            for i in inputs):
        raise ValueError("bad 'inputs' %r" % (inputs,))
    if not isinstance(meta["packed"], list):
        raise TypeError("'packed' must be a list")
    if not isinstance(meta["calibration_table"], (dict, type(None))) \
            or not isinstance(meta.get("calibration_table_text"), (str, type(None))) \
            or not isinstance(meta.get("report_text"), (str, type(None))):
        raise TypeError("'calibration_table' must be an object or null, "
                        "'calibration_table_text' and 'report_text' strings or null")


def _packed_entry(entry):
    """A format-2 ``packed`` entry, checked: ``{"weight": str, "shape": [int, ...]}``."""
    shape = entry["shape"]
    if not isinstance(entry["weight"], str) or not isinstance(shape, list) \
            or not 2 <= len(shape) <= 8 \
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError("bad 'packed' entry %r" % (entry,))
    return {"weight": entry["weight"], "shape": shape}


#: The dtypes ``mx.nd.save`` writes that a ``plain:DTYPE`` array may have.
_PLAIN_DTYPES = ("float32", "float64", "float16", "uint8", "int32", "int8", "int64")


def _plain_entry(entry):
    """A format-2 ``plain`` entry, checked: ``{"name", "aux", "dtype", "shape"}``."""
    shape = entry["shape"]
    if not isinstance(entry["name"], str) or not isinstance(entry["aux"], bool) \
            or entry["dtype"] not in _PLAIN_DTYPES or not isinstance(shape, list) \
            or not 1 <= len(shape) <= 8 \
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError("bad 'plain' entry %r" % (entry,))
    return {"name": entry["name"], "aux": entry["aux"], "dtype": entry["dtype"],
            "shape": shape}


def _plain_layout(meta):
    """Where each plain parameter lies: name -> (array key, start, stop, shape)."""
    layout, offsets = {}, {}
    for entry in meta.get("plain", []):
        key = "plain:" + entry["dtype"]
        start = offsets.get(key, 0)
        offsets[key] = start + math.prod(entry["shape"])
        layout[entry["name"]] = (key, start, offsets[key], tuple(entry["shape"]))
    return layout, offsets


def _load_symbol(path, data):
    """``(graph dict, Symbol)``: the JSON parsed, then loaded by MXNet (on the loading
    thread: both hold the GIL briefly; :func:`_check_symbol` must check it next)."""
    try:
        text = data.decode("utf-8")
        graph = loads_json(text)
        if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
            raise ValueError("no node list")
        return graph, mx.sym.load_json(text)
    except (UnicodeDecodeError, ValueError, mx.base.MXNetError) as err:
        raise _bad_symbol(path, err) from None


def _check_symbol(path, loaded):
    """The Symbol of :func:`_load_symbol`, once every edge of its graph is checked (in
    Python: on the main thread, which a pure-Python thread would stall)."""
    graph, sym = loaded
    try:
        _mxnet.check_graph_entries(graph, sym)
    except (ValueError, KeyError, TypeError, mx.base.MXNetError) as err:
        raise _bad_symbol(path, err) from None
    return sym


def _bad_symbol(path, err):
    return ArtifactError("The symbol file %r is not a valid MXNet graph (%s). Export the "
                         "model again." % (path, _mxnet.first_line(err)))


def _unpack_params(arrays, meta, graph, path, allocate=None):
    """Rebuild the name -> array dict the graph ``graph()`` needs, checking it matches
    exactly (format 2's packed weights written into ``allocate(meta["packed"])``'s arrays
    when given, once their sizes are checked; see :func:`_packing.split`). Format 2's
    weights are unpacked before ``graph()`` is called: it may still be loading."""
    version1 = meta["version"].startswith("1.")
    packed = {}
    used = 0 if version1 else _unpack_v2(arrays, meta, packed, path, allocate)
    sym = graph()
    args = set(sym.list_arguments()) - {entry["name"] for entry in meta["inputs"]}
    aux = set(sym.list_auxiliary_states())
    params, bad = {}, []
    for key, value in arrays.items():
        kind, _, name = key.partition(":")
        if version1 and kind in ("arg", "aux") and name in (args if kind == "arg" else aux):
            params[name] = value
        elif kind not in (("int8", "anchor") if version1 else ("packed", "plain")):
            bad.append(key)
    if not version1:
        _plain_params(arrays, meta, params, bad, args, aux)
    names = [entry["weight"] for entry in meta["packed"]]
    bad += [n for n in names if n not in args or n in params]
    direct = len(params) if version1 else len(_plain_layout(meta)[1])
    if version1:
        used = _unpack_v1(arrays, meta, params, bad)
    else:
        params.update(packed)
    missing = sorted((args | aux) - set(params))
    extra = len(arrays) - direct - used
    if bad or missing or extra:
        raise ArtifactError(
            "The params file %r does not match the graph: %s. Export the model again."
            % (path, "; ".join(filter(None, [
                "unexpected or malformed entries %s" % sorted(bad)[:5] if bad else "",
                "missing %s" % missing[:5] if missing else "",
                "%d extra entries" % extra if extra and not bad else ""]))))
    return params


def _plain_params(arrays, meta, params, bad, args, aux):
    """Format 2: views of the ``plain:DTYPE`` arrays, one per parameter of ``plain``."""
    layout, sizes = _plain_layout(meta)
    for key, size in sizes.items():
        array = arrays.get(key)
        if array is None or array.ndim != 1 or array.size != size \
                or array.dtype.name != key.partition(":")[2]:
            bad.append(key)
    if bad:
        return
    for entry in meta["plain"]:
        key, start, stop, shape = layout[entry["name"]]
        if entry["name"] in params or entry["name"] not in (aux if entry["aux"] else args):
            bad.append(entry["name"])
        params[entry["name"]] = arrays[key][start:stop].reshape(shape)


def _unpack_v2(arrays, meta, params, path, allocate=None):
    """Format 2: all packed weights in four arrays, rebuilt in one pass; returns how many
    arrays it used."""
    if not meta["packed"]:
        return 0
    joined = {key: arrays.get("packed:" + key) for key in _packing.ARRAYS
              if key not in _packing.OPTIONAL_ARRAYS or "packed:" + key in arrays}
    if any(value is None for value in joined.values()):
        raise ArtifactError("The params file %r lacks the packed:* arrays its metadata "
                            "announces. Export the model again." % path)
    shapes = [tuple(e["shape"]) for e in meta["packed"]]
    try:
        _packing.check_joined(joined, shapes)
        outs = None if allocate is None else allocate(meta["packed"])
        weights = _packing.split(joined, shapes, outs, threads=2)
    except ValueError as err:
        raise ArtifactError("The packed weights in %r are inconsistent (%s). Export the "
                            "model again." % (path, err)) from None
    for entry, weight in zip(meta["packed"], weights):
        params[entry["weight"]] = weight
    return len(joined)


def _unpack_v1(arrays, meta, params, bad):
    """Format 1.0: per weight ``int8:NAME`` and ``anchor:NAME``; returns their count."""
    specs = [_packing.PackSpec.from_dict(s) for s in meta["packed"]]
    for spec in specs:
        q, anchors = arrays.get("int8:" + spec.weight), arrays.get("anchor:" + spec.weight)
        needed = [n for n in (spec.gamma, spec.var) if n is not None]
        if q is None or anchors is None or q.dtype != np.int8 or q.ndim < 2 \
                or anchors.dtype != np.float32 or anchors.shape != q.shape[:1] \
                or any(params.get(n) is None or params[n].shape != q.shape[:1]
                       for n in needed):
            bad.append(spec.weight)
            continue
        params[spec.weight] = _packing.unpack_v1(spec, q, anchors, params)
    return 2 * len(specs)
