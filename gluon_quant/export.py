"""Writing a quantized model to disk, with int8 weights and a verifiable manifest.

``qnet.export(prefix)`` writes three files, each atomically:

``PREFIX-symbol.json``
    The final int8 graph, exactly as it runs in memory.
``PREFIX-int8.params``
    MXNet's ``nd.save`` format. Plain parameters are stored as ``arg:NAME`` /
    ``aux:NAME``; the weights of oneDNN's fused int8 convolutions and dense layers as
    ``int8:NAME`` (the int8 values the runtime computes) and ``anchor:NAME`` (one fp32
    value per output channel), see :mod:`gluon_quant._packing`.
``PREFIX-meta.json``
    Format version, gluon_quant and MXNet versions, backend/dtype/granularity, the
    input names, dtypes and calibration shapes, the output nesting, the calibration
    table, how each packed weight is rebuilt, and the size and sha256 of the two files
    above. :class:`gluon_quant.QuantizedSymbolBlock` verifies all of it before a byte
    reaches MXNet's loaders.

``fmt='mxnet'`` writes the ``PREFIX-symbol.json`` / ``PREFIX-0000.params`` pair that stock
MXNet 1.9.1 loads with ``mx.gluon.SymbolBlock.imports(sym, input_names, params)``: the
same graph with fp32 convolution weights, as large as the fp32 model.

Input shapes are those of the first calibration batch (``None`` when the model was built
from a saved calibration table): informational only, the model takes any batch size.
"""
import json
import logging
import os
import tempfile

import mxnet as mx
import numpy as np

from . import _mxnet, _packing
from ._io import atomic_write_many, sha256_bytes
from ._version import __version__
from .config import _ParsableEnum
from .errors import ArtifactError, GraphError

__all__ = ["ExportFormat", "export_model", "FORMAT", "FORMAT_VERSION", "file_names"]

_log = logging.getLogger(__name__)

FORMAT = "gluon_quant.export"
#: (major, minor): a reader accepts its own major version and refuses a newer one.
FORMAT_VERSION = (1, 0)


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


def export_model(qnet, prefix, *, fmt="gluon_quant"):
    """Write ``qnet`` (a built :class:`QuantizedHybridBlock`); see the module docstring.

    Returns
    -------
    dict of str to str
        The written paths by role.

    Raises
    ------
    GraphError
        ``qnet`` is not quantized yet.
    ArtifactError
        A file cannot be written (nothing is left behind).
    """
    fmt = ExportFormat.parse(fmt, "export format")
    if qnet.model is None:
        raise GraphError("Nothing to export: the network is not quantized yet. Call "
                         "gluon_quant.quantize() (or finalize()) before export().")
    sym = qnet.quantized_graph
    symbol_text = sym.tojson().encode("utf-8")
    params = {name: value.asnumpy() for name, value in qnet.model.params.items()}
    aux = set(sym.list_auxiliary_states())
    paths = file_names(prefix, fmt)
    if fmt is ExportFormat.MXNET:
        arrays = {("aux:" if k in aux else "arg:") + k: v for k, v in params.items()}
        atomic_write_many([(paths["symbol"], symbol_text),
                           (paths["params"], _nd_writer(arrays))], "MXNet export")
        return paths

    specs, kept = _pack_specs(_mxnet.graph_json(sym), params, qnet.calibration_table)
    fallback_bound = _data_scale_bound(qnet.calibration_table)
    arrays, packed = {}, []
    for spec, (bias_bound, input_range) in specs.items():
        # The runtime's input scale is at most 255 / the layer's own input range; where
        # that range cannot be read off the graph, the smallest range of the table bounds it.
        result = _packing.pack(spec, params, bias_bound=bias_bound,
                               data_scale_bound=(max(255.0 / input_range, 1.0)
                                                 if input_range else fallback_bound))
        if result is None:
            kept[spec.weight] = "its int8 packing would not reproduce the runtime exactly"
            continue
        arrays["int8:" + spec.weight], arrays["anchor:" + spec.weight] = result
        packed.append(spec)
    packed_names = {spec.weight for spec in packed}
    for name, value in params.items():
        if name not in packed_names:
            arrays[("aux:" if name in aux else "arg:") + name] = value
    params_bytes = _nd_bytes(arrays)
    meta = _metadata(qnet, paths, symbol_text, params_bytes, packed, kept)
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


def _pack_specs(graph, params, table):
    """The weights of the final graph that the runtime quantizes, with their bias bounds.

    Returns
    -------
    specs : dict of PackSpec to (numpy.ndarray or None, float or None)
        Each packable weight with an upper bound of its folded bias per channel and the
        calibrated magnitude of its layer's int8 input (None when not found).
    kept : dict of str to str
        Weights left in fp32 and why.
    """
    nodes = graph["nodes"]
    uses = {}
    for node in nodes:
        for src, _, _ in node.get("inputs", []):
            uses[src] = uses.get(src, 0) + 1
    specs, kept = {}, {}
    for node in nodes:
        attrs = node.get("attrs") or {}
        if str(attrs.get("quantized", "")).lower() != "true" \
                or node["op"] not in ("_sg_mkldnn_conv", "_sg_mkldnn_fully_connected"):
            continue
        inputs = [nodes[src]["name"] for src, _, _ in node["inputs"]]
        weight_id = node["inputs"][1][0]
        weight = inputs[1]
        if nodes[weight_id]["op"] != "null" or uses.get(weight_id) != 1 \
                or params.get(weight) is None or params[weight].dtype != np.float32:
            if weight in params and params[weight].dtype == np.float32:
                kept[weight] = "shared or not a plain parameter"
            continue
        inner = {n["op"]: n.get("attrs") or {} for n in node["subgraphs"][0]["nodes"]} \
            if node.get("subgraphs") else {}
        if node["op"] == "_sg_mkldnn_fully_connected":
            spec = _packing.PackSpec(
                weight, _flag(attrs.get("channel_wise_quantize"), False))
            no_bias = _flag(inner.get("FullyConnected", {}).get("no_bias"), False)
            bias = None if no_bias else np.abs(params[inputs[2]])
        else:
            no_bias = _flag(inner.get("Convolution", {}).get("no_bias"), False)
            channelwise = _flag(attrs.get("weight_channelwise_scale"), True)
            bias = None if no_bias else np.abs(params[inputs[2]])
            if _flag(attrs.get("with_bn"), False):
                first = 2 if no_bias else 3
                gamma, beta, mean, var = inputs[first:first + 4]
                bn = inner.get("BatchNorm", {})
                spec = _packing.PackSpec(weight, channelwise, gamma=gamma, var=var,
                                         eps=float(bn.get("eps", 1e-3)),
                                         fix_gamma=_flag(bn.get("fix_gamma"), True))
                alpha = np.abs(_packing.fold_factor(spec, params))
                bias = np.abs(params[beta]) + alpha * (
                    np.abs(params[mean]) + (0 if bias is None else bias))
            else:
                spec = _packing.PackSpec(weight, channelwise)
        specs[spec] = (bias, _input_range(nodes, node["inputs"][0]))
    return specs, kept


#: Quantized operators whose output keeps their input's range (MXNet passes min/max on).
_RANGE_PRESERVING = ("_contrib_quantized_pooling", "_contrib_quantized_flatten",
                     "_contrib_quantized_act", "_contrib_quantized_reshape", "Reshape",
                     "Flatten")


def _input_range(nodes, entry, depth=0):
    """``max(|min|, |max|)`` of the calibrated range an int8 entry carries, or None."""
    node = nodes[entry[0]]
    attrs = node.get("attrs") or {}
    if "max_calib_range" in attrs and "min_calib_range" in attrs:
        try:
            value = max(abs(float(attrs["min_calib_range"])),
                        abs(float(attrs["max_calib_range"])))
        except ValueError:
            return None
        return value if value > 0 else None
    if node["op"] in _RANGE_PRESERVING and node["inputs"] and depth < 16:
        return _input_range(nodes, node["inputs"][0], depth + 1)
    return None


def _flag(value, default):
    if value is None:
        return default
    return str(value).strip().lower() in ("true", "1")


def _metadata(qnet, paths, symbol_bytes, params_bytes, packed, kept):
    shapes = getattr(qnet, "calib_input_shapes", None) or [None] * len(qnet.input_names)
    table = qnet.calibration_table
    return {
        "format": FORMAT,
        "version": "%d.%d" % FORMAT_VERSION,
        "gluon_quant_version": __version__,
        "mxnet_version": _mxnet.MXNET_VERSION,
        "settings": {"backend": qnet.backend.value, "dtype": qnet.dtype.value,
                     "granularity": qnet.granularity.value,
                     "calibrator": table.method if table is not None else None},
        "fingerprint": qnet.fingerprint,
        "inputs": [{"name": name, "dtype": "float32",
                    "shape": None if shape is None else [int(d) for d in shape]}
                   for name, shape in zip(qnet.input_names, shapes)],
        "output_format": qnet.fused.out_format,
        "files": {role: {"name": os.path.basename(paths[role]), "size": len(data),
                         "sha256": sha256_bytes(data)}
                  for role, data in (("symbol", symbol_bytes), ("params", params_bytes))},
        "packed": [spec.to_dict() for spec in packed],
        "kept_fp32": kept,
        "calibration_table": table.to_dict() if table is not None else None,
    }
