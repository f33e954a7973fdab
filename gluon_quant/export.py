"""Writing a quantized model to disk, with int8 weights and a verifiable manifest.

``qnet.export(prefix)`` writes three files, each atomically:

``PREFIX-symbol.json``
    The final int8 graph, exactly as it runs in memory.
``PREFIX-int8.params``
    MXNet's ``nd.save`` format. The parameters stored as they are go in one array per
    dtype, ``plain:float32`` (...), in the order of the metadata's ``plain`` list; the weights of oneDNN's fused int8 convolutions and dense layers, all
    together, in seven arrays: ``packed:int8`` (the int8 values the runtime computes,
    weight after weight), ``packed:anchors`` (one float32 per output channel: the value
    that sets its maximum), the few exceptions, ``packed:factor_index`` /
    ``factor_value`` and ``packed:fix_index`` / ``fix_value``, and
    ``packed:anchor_at`` (where each anchor goes in rows of 256 values or more; format
    3.0); see :mod:`gluon_quant._packing`. Loading is one multiplication per weight.
``PREFIX-meta.json``
    Format version, gluon_quant and MXNet versions, backend/dtype/granularity, the
    input names, dtypes and calibration shapes, the output nesting, the calibration
    table (as JSON text, read only when asked for), the names, shapes and dtypes of the
    plain and of the packed parameters in
    storage order, the weights kept in fp32 and why, and the size and sha256 of the two files
    above. :class:`gluon_quant.QuantizedSymbolBlock` verifies all of it before a byte
    reaches MXNet's loaders.

``fmt='mxnet'`` writes the ``PREFIX-symbol.json`` / ``PREFIX-0000.params`` pair that stock
MXNet 1.9.1 loads with ``mx.gluon.SymbolBlock.imports(sym, input_names, params)``: the
same graph with fp32 convolution weights, as large as the fp32 model.

Input shapes are those of the first calibration batch (``None`` when the model was built
from a saved calibration table): informational only, the model takes any batch size. An
input's ``range`` (optional, format 3.2) is the lowest and highest value calibration saw
(:mod:`gluon_quant.watch`): the loaded model checks its first calls against it.
"""
import dataclasses
import json
import logging
import os
import tempfile
from typing import Dict, NamedTuple, Tuple

import mxnet as mx
import numpy as np

from ._stage import stage
from . import _mxnet, _packing, kernels, watch
from ._io import atomic_write_many, sha256_bytes
from ._version import __version__
from .config import _ParsableEnum
from .errors import ArtifactError, ConfigError, GraphError
from .graph.guards import entry_dtype

__all__ = ["ExportFormat", "export_model", "FORMAT", "FORMAT_VERSION", "file_names"]

_log = logging.getLogger(__name__)

FORMAT = "gluon_quant.export"
#: (major, minor): a reader accepts its own and older major versions and refuses a newer
#: one. 2.0 stores all packed weights in six arrays and the other parameters in one
#: array per dtype (1.0: two arrays per packed weight, one per other parameter). 2.1 keeps
#: the calibration table as JSON text (``calibration_table_text``, ``calibration_table``
#: null): parsed as JSON, its bias corrections (23,000 floats on EfficientNet-Lite0) took
#: 7-15 ms of every load; a 2.0 reader still loads a 2.1 export, without its table.
#: 3.0 adds ``packed:anchor_at`` (where each channel's anchor goes, found at export
#: instead of by two passes over the int8 values at every load: resnet18_v1 loaded 10%
#: slower than its fp32 pair before); a 2.x reader would count it as an extra entry, so
#: the major version changes and 2.x readers refuse 3.0 files by name. 2.x and 1.0
#: files still load.
#: 3.1 adds ``report_text``, the per-layer report as JSON text (``report()`` of a loaded
#: model; null for models exported before it).
#: 3.2 adds an optional ``range`` to ``inputs`` entries: the lowest and highest value
#: calibration saw of an input that feeds a weight layer (:mod:`gluon_quant.watch`); a
#: 3.1 reader ignores it.
FORMAT_VERSION = (3, 2)


class ExportFormat(_ParsableEnum):
    """Which files :meth:`QuantizedHybridBlock.export` writes."""

    GLUON_QUANT = "gluon_quant"
    MXNET = "mxnet"

    @classmethod
    def _aliases(cls):
        return {"gluon-quant": "gluon_quant", "int8": "gluon_quant", "stock": "mxnet"}


def file_names(prefix, fmt=ExportFormat.GLUON_QUANT):
    """The paths an export with ``prefix`` writes, by role."""
    prefix = os.fspath(prefix)
    if fmt is ExportFormat.MXNET:
        return {"symbol": prefix + "-symbol.json", "params": prefix + "-0000.params"}
    return {"symbol": prefix + "-symbol.json", "params": prefix + "-int8.params",
            "meta": prefix + "-meta.json"}


class _Source(NamedTuple):
    """What an export writes, read off a built block or a loaded export."""
    symbol: object              # the final int8 mx.sym.Symbol
    params: Dict[str, np.ndarray]
    input_names: Tuple[str, ...]
    table: object               # CalibrationTable or None
    header: Dict[str, object]   # settings, fingerprint, inputs, output_format, table text


def _built_source(qnet, header=True):
    if qnet.model is None:
        raise GraphError("Nothing to export: the network is not quantized yet. Call "
                         "gluon_quant.quantize() (or finalize()) before export().")
    params = {name: value.asnumpy() for name, value in qnet.model.params.items()}
    if not header:      # the stock MXNet pair: graph and parameters only
        return _Source(qnet.quantized_graph, params, tuple(qnet.input_names), None, {})
    shapes = getattr(qnet, "calib_input_shapes", None) or [None] * len(qnet.input_names)
    table = qnet.calibration_table
    ranges = (table.meta.get(watch.META_KEY) if table is not None else None) or {}
    header = {
        "settings": {"backend": qnet.backend.value, "dtype": qnet.dtype.value,
                     "granularity": qnet.granularity.value,
                     "calibrator": table.method if table is not None else None},
        "fingerprint": qnet.fingerprint,
        "inputs": [dict({"name": name, "dtype": "float32",
                         "shape": None if shape is None else [int(d) for d in shape]},
                        **({"range": ranges[name]} if name in ranges else {}))
                   for name, shape in zip(qnet.input_names, shapes)],
        "output_format": qnet.fused.out_format,
        "calibration_table_text": None if table is None else json.dumps(
            table.to_dict(), separators=(",", ":"), allow_nan=False),
        "report_text": qnet.report().to_json(separators=(",", ":")),
    }
    return _Source(qnet.quantized_graph, params, tuple(qnet.input_names), table, header)


def _loaded_source(block, header=True):
    """A loaded :class:`QuantizedSymbolBlock`: its graph, its (unpacked) parameters and
    the header of the metadata it was loaded with, so that its export loads as it did."""
    symbol = _mxnet.symbol_block_graph(block)[1]
    wanted = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    params = {p.name: p.data().asnumpy() for p in block.collect_params().values()
              if p.name in wanted}
    if not header:
        return _Source(symbol, params, tuple(block.input_names), None, {})
    meta = block.metadata
    table = block.calibration_table     # checked, and a 2.0 file's table made text
    fields = {key: meta.get(key) for key in ("settings", "fingerprint", "inputs",
                                             "output_format", "report_text")}
    fields["calibration_table_text"] = None if table is None else json.dumps(
        table.to_dict(), separators=(",", ":"), allow_nan=False)
    return _Source(symbol, params, tuple(block.input_names), table, fields)


@stage       # legacy array semantics: MXNet writes NumPy-mode files in another format
def export_model(qnet, prefix, *, fmt="gluon_quant"):
    """Write ``qnet`` (a built :class:`QuantizedHybridBlock`, or a loaded
    :class:`QuantizedSymbolBlock`); see the module docstring.

    Returns
    -------
    dict of str to str
        The written paths by role.

    Raises
    ------
    GraphError
        ``qnet`` is not quantized yet.
    ConfigError
        ``prefix`` names a folder (``'out/'``): its files would be hidden ``-*`` ones.
    ArtifactError
        A file cannot be written (nothing is left behind).
    """
    fmt = ExportFormat.parse(fmt, "export format")
    # A loaded export carries its metadata (duck-typed: symbol_block imports this module).
    read = _loaded_source if hasattr(qnet, "metadata") else _built_source
    source = read(qnet, header=fmt is ExportFormat.GLUON_QUANT)
    sym, params = source.symbol, source.params
    symbol_text = sym.tojson().encode("utf-8")
    aux = set(sym.list_auxiliary_states())
    if not os.path.basename(os.fspath(prefix)):
        raise ConfigError("The export prefix %r names a folder, not files (they would be "
                          "%r...): pass a prefix with a file name, e.g. %r."
                          % (prefix, os.fspath(prefix) + "-symbol.json",
                             os.path.join(os.fspath(prefix) or ".", "model")))
    paths = file_names(prefix, fmt)
    if fmt is ExportFormat.MXNET:
        arrays = {("aux:" if k in aux else "arg:") + k: v for k, v in params.items()}
        atomic_write_many([(paths["symbol"], symbol_text),
                           (paths["params"], _nd_writer(arrays))], "MXNet export")
        return paths

    graph = _mxnet.graph_json(sym)
    dtypes = _mxnet.infer_graph_dtypes(graph, list(source.input_names))
    readers, kept = _pack_specs(graph, params, dtypes)
    # Where a layer's input scale cannot be read off the graph, the smallest calibrated
    # range of the table bounds it.
    bound = _data_scale_bound(source.table)
    packs, packed = [], []
    for weight, specs in readers.items():
        try:
            results = [_packing.pack(spec, params, in_scale=in_scale, in_scale_bound=bound)
                       for spec, in_scale in specs]
        except _packing.NotPackable as reason:
            kept[weight] = str(reason)
            continue
        # A weight several layers read is stored once, where each layer's own packing
        # (verified for its scales and bias guard) is that same one.
        if any(not _same_pack(results[0], other) for other in results[1:]):
            kept[weight] = "shared by %d int8 layers whose packings differ (their bias " \
                "guards or BatchNorms)" % len(specs)
            continue
        packs.append(results[0])
        packed.append({"weight": weight, "shape": [int(d) for d in results[0].q.shape]})
    arrays = {"packed:" + key: value for key, value in _packing.join(packs).items()} \
        if packs else {}
    packed_names = {entry["weight"] for entry in packed}
    # The other parameters, one array per dtype (names and shapes in the metadata): one
    # array header instead of one per parameter, and one array for MXNet to load.
    plain, groups = [], {}
    for name, value in params.items():
        if name not in packed_names:
            plain.append({"name": name, "aux": name in aux, "dtype": value.dtype.name,
                          "shape": [int(d) for d in value.shape]})
            groups.setdefault(value.dtype.name, []).append(value.ravel())
    arrays.update({"plain:" + dtype: np.concatenate(values) for dtype, values in groups.items()})
    params_bytes = _nd_bytes(arrays)
    meta = _metadata(source.header, paths, symbol_text, params_bytes, packed, kept)
    meta["plain"] = plain
    atomic_write_many([(paths["symbol"], symbol_text), (paths["params"], params_bytes),
                       (paths["meta"], (json.dumps(meta, indent=1) + "\n").encode("utf-8"))],
                      "export")
    _log.info("Exported %s: %d weights packed as int8, %d kept in fp32.", prefix,
              len(packed), len(kept))
    return paths


def _nd_writer(arrays):
    def write(path):
        mx.nd.save(path, {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    return write


def _nd_bytes(arrays):
    """``mx.nd.save`` bytes of ``arrays`` (through a scratch file, removed at once)."""
    try:
        fd, tmp = tempfile.mkstemp(suffix=".params.tmp")
    except OSError as err:
        raise ArtifactError("Cannot create a scratch file in the temporary directory %r: %s. "
                            "Free space there or point TMPDIR to a writable directory."
                            % (tempfile.gettempdir(), err.strerror or err)) from err
    os.close(fd)
    try:
        _nd_writer(arrays)(tmp)
        with open(tmp, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(tmp)


def _data_scale_bound(table):
    """An upper bound of every layer's input scale: 255 / the smallest calibrated range."""
    ranges = [max(abs(lo), abs(hi)) for lo, hi in (table or {}).values()]
    smallest = min([r for r in ranges if r > 0] or [1.0])
    return max(255.0 / smallest, 1.0)


def _same_pack(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _pack_specs(graph, params, dtypes):
    """The weights of the final graph that the runtime quantizes, with their input scales.

    Returns
    -------
    readers : dict of str to list of (PackSpec, numpy.float32 or None)
        Each packable weight: the int8 layers reading it (all its readers: a weight an
        fp32 layer reads too stays fp32), each with its exact input scale (None when it
        cannot be read off the graph).
    kept : dict of str to str
        Weights left in fp32 and why.
    """
    nodes = graph["nodes"]
    uses = {}
    for src, *_ in [e for node in nodes for e in node.get("inputs", [])] + graph["heads"]:
        uses[src] = uses.get(src, 0) + 1        # an output of the graph is a use too
    readers, kept = {}, {}
    halves = kernels.int16_pair_sums()      # oneDNN halves int8-input convolution weights
    for node in nodes:
        attrs = node.get("attrs") or {}
        if str(attrs.get("quantized", "")).lower() != "true" \
                or node["op"] not in ("_sg_mkldnn_conv", "_sg_mkldnn_fully_connected"):
            continue
        inputs = [nodes[src]["name"] for src, _, _ in node["inputs"]]
        weight_id = node["inputs"][1][0]
        weight = inputs[1]
        if nodes[weight_id]["op"] != "null":
            kept[weight] = "computed in the graph (by %s) at every call, not a parameter: " \
                "its fp32 parameters are stored" % nodes[weight_id]["op"]
            continue
        if params.get(weight) is None or params[weight].dtype != np.float32:
            continue
        inner = {n["op"]: n.get("attrs") or {} for n in node["subgraphs"][0]["nodes"]} \
            if node.get("subgraphs") else {}
        calibrated = "min_calib_range" in attrs and "max_calib_range" in attrs
        if node["op"] == "_sg_mkldnn_fully_connected":
            no_bias = _flag(inner.get("FullyConnected", {}).get("no_bias"), False)
            # oneDNN's dense layer is channel-wise only when asked to (and then always
            # requantizes or outputs float); otherwise its weights are int8 already.
            spec = _packing.PackSpec(weight, _flag(attrs.get("channel_wise_quantize"), False),
                                     bias=None if no_bias else inputs[2])
        else:
            no_bias = _flag(inner.get("Convolution", {}).get("no_bias"), False)
            bias = None if no_bias else inputs[2]
            # mkldnn_conv.cc: per-channel scales exactly when the output is requantized.
            if _flag(attrs.get("with_bn"), False):
                first = 2 if no_bias else 3
                gamma, beta, mean, var = inputs[first:first + 4]
                bn = inner.get("BatchNorm", {})
                spec = _packing.PackSpec(weight, calibrated, gamma=gamma, var=var,
                                         eps=float(bn.get("eps", 1e-3)),
                                         fix_gamma=_flag(bn.get("fix_gamma"), True),
                                         bias=bias, beta=beta, mean=mean)
            else:
                spec = _packing.PackSpec(weight, calibrated, bias=bias)
        if node["op"] == "_sg_mkldnn_conv" and halves and \
                entry_dtype(dtypes, nodes, node["inputs"][0]) == "int8":
            spec = dataclasses.replace(spec, weight_adjust=0.5)
        readers.setdefault(weight, []).append(
            (spec, _input_scale(nodes, node["inputs"][0], dtypes)))
    index = {n["name"]: i for i, n in enumerate(nodes)}
    for weight, specs in list(readers.items()):
        if uses.get(index[weight]) != len(specs):
            del readers[weight]
            kept[weight] = "also read by a layer that is not int8, or an output"
    return readers, kept


def _input_scale(nodes, entry, dtypes):
    """The runtime's ``data_scale`` of an int8/uint8 input entry, or None if unknown."""
    dtype = entry_dtype(dtypes, nodes, entry)
    maxabs = _input_range(nodes, entry)
    if entry[1] != 0 or dtype not in ("int8", "uint8") or maxabs is None:
        return None
    return _packing.data_scale(maxabs, dtype == "uint8")


#: Quantized operators whose output keeps their input's range (MXNet passes min/max on).
_RANGE_PRESERVING = ("_contrib_quantized_pooling", "_contrib_quantized_flatten",
                     "_contrib_quantized_act", "_contrib_quantized_reshape", "Reshape",
                     "Flatten")


def _input_range(nodes, entry, depth=0):
    """``max(|min|, |max|)`` (float32) of the calibrated range an int8 entry carries, or
    None."""
    node = nodes[entry[0]]
    attrs = node.get("attrs") or {}
    if "max_calib_range" in attrs and "min_calib_range" in attrs:
        try:
            value = max(abs(np.float32(attrs["min_calib_range"])),
                        abs(np.float32(attrs["max_calib_range"])))
        except ValueError:
            return None
        return value if np.isfinite(value) and value > 0 else None
    if node["op"] in _RANGE_PRESERVING and node["inputs"] and depth < 16:
        return _input_range(nodes, node["inputs"][0], depth + 1)
    return None


def _flag(value, default):
    if value is None:
        return default
    return str(value).strip().lower() in ("true", "1")


def _metadata(header, paths, symbol_bytes, params_bytes, packed, kept):
    meta = {
        "format": FORMAT,
        "version": "%d.%d" % FORMAT_VERSION,
        "gluon_quant_version": __version__,
        "mxnet_version": _mxnet.MXNET_VERSION,
    }
    meta.update({key: header[key] for key in ("settings", "fingerprint", "inputs",
                                              "output_format")})
    meta.update({
        "files": {role: {"name": os.path.basename(paths[role]), "size": len(data),
                         "sha256": sha256_bytes(data)}
                  for role, data in (("symbol", symbol_bytes), ("params", params_bytes))},
        "packed": packed,
        "kept_fp32": kept,
        "calibration_table": None,
        "calibration_table_text": header["calibration_table_text"],
        "report_text": header["report_text"],
        # Built where int8 pairs saturate (7-bit uint8 inputs, signed dense layers fp32)?
        "int16_pair_sums": bool(kernels.int16_pair_sums()),
    })
    return meta
