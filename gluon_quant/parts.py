"""Quantize the traceable parts of a network whose own ``forward`` cannot be traced.

A Gluon model is often more than one graph: a translation model's ``forward`` loops over
decoding steps in Python, a detector's post-processing reads ``.shape`` or ``.asnumpy()``,
a hand-written model branches on its input's size. :func:`gluon_quant.quantize` traces the
whole model and refuses such a one. :func:`quantize_parts` runs the fp32 model as it is
over the calibration data, records what each of its blocks is called with (forward
pre-hooks), quantizes each block that traces on those calls, and puts the int8 block in
its place inside the model, which keeps its Python code. Without ``parts=``, the largest
blocks that trace are found from the top: a block that does not is replaced by those of
its children that do.

The model is changed in place; :meth:`QuantizedParts.restore` puts the fp32 blocks back.
:meth:`QuantizedParts.export` writes each int8 part and a manifest (``PREFIX-parts.json``);
:func:`load_parts` puts them into a freshly built fp32 model, as Gluon users rebuild a
model from its code and load its parameters.
"""
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import mxnet as mx

from . import _io, _mxnet
from ._names import suggest
from .api import quantize
from .block import QuantizedHybridBlock, hybrid_view
from .config import QuantConfig
from .data import BatchConverter, InputSpec, describe, iter_batches, keep_batches, peek
from .errors import (ArtifactError, ConfigError, GluonQuantError, InputMismatchError,
                     ModelExecutionError, NotHybridizableError, UnknownNameError)
from .symbol_block import QuantizedSymbolBlock

__all__ = ["quantize_parts", "load_parts", "QuantizedParts", "QuantizedPart", "PartResult"]

_log = logging.getLogger(__name__)

#: Format name and version of ``PREFIX-parts.json``.
PARTS_FORMAT, PARTS_VERSION = "gluon_quant.parts", 1

#: Errors that say a block does not trace on its calls (its children may).
_UNTRACEABLE = (NotHybridizableError, InputMismatchError)


@dataclass(frozen=True)
class PartResult:
    """What became of one block :func:`quantize_parts` tried.

    Attributes
    ----------
    path : str
        Dotted path of the block in the model (``encoder``, ``body.3``).
    kind : str
        Class name of the fp32 block.
    calls : int or None
        How many calls of it the calibration run recorded (None: loaded from files).
    int8_layers, layers : int
        Convolution and dense layers in int8, of all (0, 0 where it stays fp32).
    reason : str
        Why it stays fp32; empty where its int8 block replaced it.
    """

    path: str
    kind: str
    calls: Optional[int]
    int8_layers: int = 0
    layers: int = 0
    reason: str = ""

    @property
    def quantized(self):
        """Whether the model now runs this block in int8."""
        return not self.reason


class QuantizedPart(mx.gluon.HybridBlock):
    """An int8 block in the place of the fp32 block ``fp32`` inside a model.

    Calls run the int8 block; attributes and methods the int8 block lacks are the fp32
    block's (a decoder's ``init_state_from_encoder``, an encoder's ``units``), so the
    model's own code keeps working. The model's ``save_parameters`` writes the fp32
    block's weights in its place, so that the file loads into the fp32 model as before
    (the int8 parts are saved by :meth:`QuantizedParts.export`); weights loaded into the
    model change the fp32 blocks only: quantize again after loading others.

    Parameters
    ----------
    int8 : QuantizedHybridBlock or QuantizedSymbolBlock
    fp32 : mxnet.gluon.Block
        The block it replaces (kept, not registered as a child).
    """

    def __init__(self, int8, fp32):
        super().__init__(prefix=fp32.prefix, params=None)
        self.int8 = int8
        object.__setattr__(self, "fp32", fp32)

    def forward(self, *args):       # pylint: disable=arguments-differ
        return self.int8(*args)

    def _collect_params_with_prefix(self, prefix=""):
        # Gluon's save_parameters/load_parameters of a parent walk its children with this
        return _mxnet.params_with_prefix(self.fp32, prefix)

    def __getattr__(self, name):
        # only reached for names the proxy lacks; "fp32" itself is set in __init__
        if name == "fp32" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.fp32, name)

    def __repr__(self):
        return "QuantizedPart(%s: %r)" % (type(self.fp32).__name__, self.int8)


class QuantizedParts:
    """The result of :func:`quantize_parts` (or :func:`load_parts`): the model, changed in
    place, and what became of each block tried.

    Attributes
    ----------
    net : mxnet.gluon.Block
        The model; its quantized blocks are now :class:`QuantizedPart` s.
    parts : dict of str to QuantizedPart
        The int8 parts by dotted path.
    results : tuple of PartResult
        Every block tried, int8 or not (with why).
    """

    def __init__(self, net, parts, results):
        self.net = net
        self.parts: Dict[str, QuantizedPart] = dict(parts)
        self.results: Tuple[PartResult, ...] = tuple(results)

    def __call__(self, *args):
        return self.net(*args)

    def __repr__(self):
        return "QuantizedParts(%s: %d part(s) in int8: %s)" % (
            type(self.net).__name__, len(self.parts), ", ".join(self.parts) or "none")

    def report(self):
        """One line per block tried: int8 with its layer counts, or fp32 and why; the
        int8 parts' own reports (``parts[path].int8.report()``) tell layer by layer."""
        width = max([len(r.path) for r in self.results] + [4])
        lines = ["%s: %d of %d block(s) tried run in int8" % (
            type(self.net).__name__, len(self.parts), len(self.results))]
        first = {}                      # reason -> the first block given it
        for r in self.results:
            state = ("int8  %d of %d convolution/dense layers" % (r.int8_layers, r.layers)
                     if r.quantized else "fp32  " + (
                         "same reason as %s" % first[r.reason] if r.reason in first
                         else r.reason))
            first.setdefault(r.reason, r.path)
            calls = "%5d call(s)" % r.calls if r.calls is not None else "%13s" % "loaded"
            lines.append("  %-*s  %-24s %s  %s" % (width, r.path, r.kind, calls, state))
        return "\n".join(lines)

    def restore(self):
        """Put the fp32 blocks back in the model, wherever it holds them (a block shared by
        two attributes at both); the int8 parts are dropped."""
        for part in self.parts.values():
            for path in _places(self.net, part):
                _replace(self.net, path, part.fp32)
        self.parts = {}

    def export(self, prefix):
        """Write each int8 part (``PREFIX.PATH-symbol.json``, ``-int8.params``,
        ``-meta.json``) and the manifest ``PREFIX-parts.json`` naming them.

        The manifest is written last: a failed export leaves none, and removes the part
        files it wrote. Returns the manifest's path.

        Raises
        ------
        ConfigError
            No part is in int8, or ``prefix`` names a folder.
        ArtifactError
            A file cannot be written.
        """
        if not self.parts:
            raise ConfigError("No block of %s runs in int8, so there is nothing to export; "
                              "see report() for why." % type(self.net).__name__)
        prefix = os.fspath(prefix)
        if not os.path.basename(prefix):
            raise ConfigError("The export prefix %r names a folder: pass a prefix with a file "
                              "name, e.g. %r." % (prefix, os.path.join(prefix or ".", "model")))
        manifest, written = [], []
        try:
            for path, part in self.parts.items():
                part_prefix = "%s.%s" % (prefix, path)
                fresh = [p for p in _part_files(part_prefix) if not os.path.exists(p)]
                part.int8.export(part_prefix)
                written += fresh
                manifest.append({"path": path, "class": type(part.fp32).__name__,
                                 "prefix": os.path.basename(part_prefix)})
            target = prefix + "-parts.json"
            _io.atomic_write(target, (json.dumps(
                {"format": PARTS_FORMAT, "version": PARTS_VERSION, "model":
                 type(self.net).__name__, "parts": manifest}, indent=1) + "\n").encode("utf-8"),
                "parts manifest")
        except Exception:
            for path in written:
                _unlink(path)
            raise
        return target


def quantize_parts(net, calib_data, parts=None, *, run_fn=None, config=None, **settings):
    """Quantize the blocks of ``net`` that trace, in place, where ``net`` itself does not.

    ``net`` runs in fp32 over ``calib_data`` (read as :func:`gluon_quant.quantize` reads
    it); each block tried is quantized on the calls it got, with ``config``, and its int8
    :class:`QuantizedPart` takes its place in ``net``.

    Parameters
    ----------
    net : mxnet.gluon.Block
        The fp32 model (initialized). Its blocks are replaced in place.
    calib_data : iterable of batches
        As for :func:`gluon_quant.quantize`: ``num_inputs``, ``input_fn`` and
        ``num_calib_batches`` say how batches feed ``net``.
    parts : list of str or Block, optional
        The blocks to quantize, as dotted paths (``"encoder"``, ``"features.3"``) or the
        blocks themselves. By default, the largest that trace: from ``net``'s children
        down, a block that does not trace on its calls (or takes values that are not
        arrays) is replaced by its children that hold parameters.
    run_fn : callable, optional
        ``run_fn(net, batch)`` runs the model on one batch the way it is used, for blocks
        that ``net(*inputs)`` does not call (a translator's beam search calling the
        model's one-step decoder, a ``predict()`` method). By default ``net`` is called
        on each batch's inputs.
    config : QuantConfig, optional
    **settings
        Any :class:`~gluon_quant.QuantConfig` field, for every part.

    Returns
    -------
    QuantizedParts
        ``net`` (changed), the int8 parts by path, and ``report()`` of every block tried.

    Raises
    ------
    NotHybridizableError
        No block could be quantized; the message says why for each.
    UnknownNameError
        A path of ``parts`` names no block of ``net``.

    Examples
    --------
    >>> result = gluon_quant.quantize_parts(translator, batches)
    >>> print(result.report())
    >>> translator.translate(sentence)          # the model's own code, int8 parts inside
    """
    if not isinstance(net, mx.gluon.Block):
        raise ConfigError("quantize_parts() needs a mxnet.gluon.Block, got %s."
                          % type(net).__name__)
    config = QuantConfig.build(config, **settings)
    if calib_data is None:
        raise ConfigError("quantize_parts() needs calibration data (calib_data=, any iterable "
                          "of batches that net is called on).")
    pending = _named(net, parts) if parts is not None else _children(net, "")
    feed = _Feed(net, calib_data, config, run_fn)
    per_part = config.replace(num_inputs=None, input_fn=None, num_calib_batches=None)
    done, results, first, aliases, unused = {}, [], {}, {}, {}
    while pending:
        calls = feed.capture(pending)
        descend = []
        for path, block in pending:
            if id(block) in first:      # one block at two places (shared): quantized once
                aliases[path] = first[id(block)]
                continue
            first[id(block)] = path
            got = calls[id(block)]
            result, int8 = _quantize_part(path, block, got, per_part)
            if int8 is None and parts is None and _children(block, path) \
                    and (not got or isinstance(result.reason_error, _UNTRACEABLE)):
                # its children may trace, or be called where it is not (a decoder whose
                # code loops over its cells, not calling the list holding them)
                _log.info("%s (%s): %s; trying its children.", path, type(block).__name__,
                          result.record.reason)
                if not got:
                    unused[path] = result.record
                descend += _children(block, path)
                continue
            results.append(result.record)
            if int8 is not None:
                done[path] = int8
        pending = descend
    results = _collapsed(results, unused)
    _warn_unmatched(config.exclude, done, {r.path for r in results})
    for path, int8 in done.items():
        _replace(net, path, QuantizedPart(int8, _resolve(net, path)))
    for path, original in aliases.items():
        if original in done:
            _replace(net, path, _resolve(net, original))
    if not done:
        raise NotHybridizableError(
            "No block of %s could be quantized:\n  %s\nEach part must trace as a HybridBlock "
            "on the calls the model makes (arrays, lists of arrays or None)." % (
                type(net).__name__, "\n  ".join("%s (%s): %s" % (r.path, r.kind, r.reason)
                                                for r in results) or "it has no child block"))
    qparts = QuantizedParts(net, {p: _resolve(net, p) for p in done}, results)
    _log.info("%s", qparts.report())
    return qparts


def load_parts(net, prefix, ctx=None):
    """Put the int8 parts :meth:`QuantizedParts.export` wrote into the fp32 model ``net``
    (built by the same code), in place.

    Parameters
    ----------
    net : mxnet.gluon.Block
    prefix : str or os.PathLike
        The prefix given to ``export`` (``PREFIX-parts.json`` is read).
    ctx : mxnet.Context, optional

    Returns
    -------
    QuantizedParts

    Raises
    ------
    ArtifactError
        The manifest or a part's files are missing, corrupt or of a newer format.
    ConfigError
        A part's path is not in ``net``, or holds a block of another class.
    """
    if not isinstance(net, mx.gluon.Block):
        raise ConfigError("load_parts() puts int8 parts into the fp32 model they were "
                          "exported from (a mxnet.gluon.Block built by its code), got %s."
                          % type(net).__name__)
    path = os.fspath(prefix) + "-parts.json"
    if not os.path.exists(path) and os.path.exists(os.fspath(prefix) + "-meta.json"):
        raise ArtifactError("%r is the export of one whole int8 model, not of a model's parts "
                            "(no %r): load it with gluon_quant.QuantizedSymbolBlock.imports(%r)."
                            % (os.fspath(prefix), os.path.basename(path), os.fspath(prefix)))
    try:
        manifest = _io.loads_json(_io.read_bytes(path, "parts manifest").decode("utf-8"))
        entries = manifest["parts"]
        fmt, version = manifest["format"], int(manifest["version"])
        entries = [(str(e["path"]), str(e["class"]), str(e["prefix"])) for e in entries]
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as err:
        raise ArtifactError("The parts manifest %r is not one QuantizedParts.export() wrote "
                            "(%s: %s). Export the model again." % (path, type(err).__name__,
                                                                   err)) from err
    if fmt != PARTS_FORMAT or version > PARTS_VERSION:
        raise ArtifactError("The parts manifest %r has format %r version %r; this gluon_quant "
                            "reads %r up to version %d. Upgrade gluon_quant or export again."
                            % (path, fmt, version, PARTS_FORMAT, PARTS_VERSION))
    folder = os.path.dirname(path)
    loaded = {}
    for part_path, kind, part_prefix in entries:
        block = _resolve(net, part_path)
        block = block.fp32 if isinstance(block, QuantizedPart) else block   # loaded again
        if type(block).__name__ != kind:
            raise ConfigError("The export has a %s at %r but this %s has a %s there: build the "
                              "model with the code it was exported from."
                              % (kind, part_path, type(net).__name__, type(block).__name__))
        loaded[part_path] = (QuantizedSymbolBlock.imports(os.path.join(folder, part_prefix),
                                                          ctx=ctx), block)
    for part_path, (int8, block) in loaded.items():
        _replace(net, part_path, QuantizedPart(int8, block))
    return QuantizedParts(net, {p: _resolve(net, p) for p in loaded}, [
        PartResult(p, type(b).__name__, None, *int8.report().coverage())
        for p, (int8, b) in loaded.items()])


# ---------------------------------------------------------------------------- internals
@dataclass(frozen=True)
class _Attempt:
    record: PartResult
    reason_error: Exception = None


class _Feed:
    """Runs the fp32 model over the calibration data, recording its blocks' calls."""

    def __init__(self, net, calib_data, config, run_fn=None):
        self.net, self.config = net, config
        if iter(calib_data) is calib_data:     # a generator: read once, kept for each pass
            calib_data = keep_batches(calib_data, config.num_calib_batches,
                                      who="quantize_parts()")
        first, self.data = peek(calib_data)
        if first is None:
            raise ConfigError("calib_data is empty: give at least one batch %s is called on."
                              % type(net).__name__)
        if run_fn is not None and not callable(run_fn):
            raise ConfigError("run_fn must be callable as run_fn(net, batch), got %r."
                              % (run_fn,))
        if run_fn is None:
            spec = InputSpec.from_net(hybrid_view(net), config.num_inputs, first)
            convert = BatchConverter(spec, config.ctx or mx.cpu(), config.input_fn)
            np_mode = _mxnet.net_np_mode(net)      # fed mxnet.np arrays, as it was written
            run_fn = lambda model, batch: _mxnet.call_net(model, spec.regroup(convert(batch)),
                                                          np_mode)
        self.run_fn = run_fn

    def capture(self, named):
        """``{id(block): [call args, ...]}`` of the ``(path, block)`` pairs ``named``, over
        one pass of the data. Their hybridized ancestors run imperatively meanwhile: inside
        a cached graph, a child's forward hooks do not run."""
        blocks = {id(block): block for _, block in named}
        calls = {key: [] for key in blocks}
        handles = [block.register_forward_pre_hook(
            lambda blk, args: calls[id(blk)].append(_copied(args))) for block in blocks.values()]
        ancestors = {id(b): b for path, _ in named for b in _ancestors(self.net, path)}
        try:
            with _mxnet.imperative(list(ancestors.values())):
                self._run()
        finally:
            for handle in handles:
                handle.detach()
        return calls

    def _run(self):
        for batch in iter_batches(self.data, self.config.num_calib_batches):
            try:
                with mx.autograd.pause(train_mode=False):
                    self.run_fn(self.net, batch)
                mx.nd.waitall()
            except GluonQuantError:
                raise
            except Exception as err:
                raise ModelExecutionError(
                    "The fp32 model %s raised on a calibration batch (%s), before anything "
                    "was quantized: %s: %s. Check that it runs on these batches as given "
                    "(num_inputs= or input_fn= say how a batch feeds it)."
                    % (type(self.net).__name__, describe(batch), type(err).__name__,
                       _mxnet.first_line(err))) from err


def _collapsed(results, unused):
    """``results`` with the blocks inside a never-called block that were not called either
    left out (that block stands for them), int8 ones first."""
    def inside(path, paths):
        return any(path.startswith(p + ".") for p in paths)
    tops = [p for p in unused if not inside(p, unused)]
    kept = [r for r in results if r.calls or not inside(r.path, tops)]
    kept += [unused[p] for p in tops if not any(r.calls and r.path.startswith(p + ".")
                                                  for r in results)]
    return sorted(kept, key=lambda r: (not r.quantized, r.path))


def _quantize_part(path, block, calls, config):
    kind = type(block).__name__
    if path in config.exclude:
        return _Attempt(PartResult(path, kind, len(calls),
                                   reason="excluded by user (%r)" % path)), None
    if not calls:
        return _Attempt(PartResult(path, kind, 0, reason="never called on the calibration "
                                                         "data")), None
    ranks = sorted({_ranks(call) for call in calls})
    if len(ranks) > 1:
        err = InputMismatchError("called with inputs of different ranks (%s and %s): one int8 "
                                 "graph takes one layout" % (list(ranks[0]), list(ranks[-1])))
        return _Attempt(PartResult(path, kind, len(calls), reason=str(err)), err), None
    try:
        with _quiet_part_notes():       # said once for the model, by part (see below)
            int8 = quantize(block, calls, config=config.replace(
                num_inputs=len(calls[0]), exclude=_part_exclude(config.exclude, path)))
    except _UNTRACEABLE as err:
        return _Attempt(PartResult(path, kind, len(calls), reason=_first_line(err)), err), None
    except ConfigError:
        raise                   # the settings: every part would refuse them
    except GluonQuantError as err:     # this part only (MXNet failed on it): the rest go on
        _log.warning("%s (%s) stays fp32: quantize() raised %s: %s", path, kind,
                     type(err).__name__, err)
        return _Attempt(PartResult(path, kind, len(calls), reason="quantize() raised %s: %s" % (
            type(err).__name__, _first_line(err)))), None
    report = int8.report()
    quantized, total = report.coverage()
    if quantized == 0:
        return _Attempt(PartResult(path, kind, len(calls), 0, total, _why_fp32(report))), None
    return _Attempt(PartResult(path, kind, len(calls), quantized, total)), int8


#: Operators whose reason to stay fp32 says why a part gained nothing from int8 (the
#: multiply-adds; in this order of preference).
_WORK_OPS = ("Convolution", "FullyConnected", "Deconvolution", "RNN", "batch_dot", "dot")


def _why_fp32(report):
    """Why no layer of a part's ``report`` runs in int8: the reason its first layer doing
    multiply-adds was given (an LSTM: "int8 LSTM is opt-in (int8_lstm=True): ..."), else a
    general one."""
    for op in _WORK_OPS:
        row = next((r for r in report if r.op == op and r.reason), None)
        if row is not None:
            return "no layer runs in int8; %s (%s) stays fp32: %s" % (row.layer, op, row.reason)
    return "no convolution or dense layer runs in int8"


def _part_exclude(patterns, path):
    """``exclude=`` for the part at ``path``: the patterns as given (layer names, operator
    types and globs are the model's own) and, for those naming a block by its path in the
    model (``step.vocab``), the path inside the part (``vocab``)."""
    inner = [p[len(path) + 1:] for p in patterns if p.startswith(path + ".")]
    return tuple(patterns) + tuple(inner)


class _DropStarting(logging.Filter):
    def __init__(self, start):
        super().__init__()
        self.start = start

    def filter(self, record):
        return not str(record.msg).startswith(self.start)


#: Per part, what is no news: an ``exclude=`` pattern matching none of its layers
#: (:func:`_warn_unmatched` tells the ones no part matched), and a part with no layer in
#: int8 (the parts' report names it by its path and says why; quantize() would name only
#: its class: "No layer of HybridSequential runs in int8" for an embedding).
_PART_NOTES = (("gluon_quant.graph.selection", "exclude pattern"),
               ("gluon_quant.pipeline", "No layer of"))


@contextlib.contextmanager
def _quiet_part_notes():
    """Drop the log records of :data:`_PART_NOTES` inside."""
    filters = [(logging.getLogger(name), _DropStarting(start)) for name, start in _PART_NOTES]
    for logger, quiet in filters:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger, quiet in filters:
            logger.removeFilter(quiet)


def _warn_unmatched(patterns, parts, excluded_parts):
    """Warn of each ``exclude=`` pattern that excluded no part and no layer of a part."""
    used = " ".join(row.reason for part in parts.values() for row in part.report()
                    if row.reason.startswith("excluded by user"))
    for pattern in patterns:
        tails = [pattern] + [pattern[len(path) + 1:] for path in parts
                             if pattern.startswith(path + ".")]
        if pattern not in excluded_parts and not any("(%r)" % tail in used for tail in tails):
            _log.warning("exclude pattern %r matched no layer of the quantized parts (%s): "
                         "give a layer name from their report() or a block path in the "
                         "model (part.layer).", pattern, ", ".join(parts) or "none")


def _ranks(args):
    """The ranks of a call's arrays, nested lists flattened (None for other values)."""
    if isinstance(args, (list, tuple)):
        return tuple(rank for a in args for rank in _ranks(a))
    return (args.ndim if isinstance(args, mx.nd.NDArray) else None,)


def _first_line(err):
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _copied(args):
    """The call's arguments, arrays copied (a model may write into its buffers later)."""
    if isinstance(args, (list, tuple)):
        return type(args)(_copied(a) for a in args)
    return args.copy() if isinstance(args, mx.nd.NDArray) else args   # mx.np arrays too


def _children(block, path):
    """``[(dotted path, child)]`` of ``block``'s children that hold parameters."""
    found = []
    for name, child in _mxnet.named_children(block):
        if isinstance(child, (QuantizedPart, QuantizedHybridBlock, QuantizedSymbolBlock)):
            continue
        if list(child.collect_params().keys()):      # a ParameterDict has no len()
            found.append((name if not path else path + "." + name, child))
    return found


def _places(block, target, path=""):
    """Dotted paths of every place ``target`` sits under ``block``."""
    found = []
    for name, child in _mxnet.named_children(block):
        where = name if not path else path + "." + name
        found += [where] if child is target else _places(child, target, where)
    return found


def _ancestors(net, path):
    """``net`` and the blocks on the way to ``path`` (``path``'s own block excluded)."""
    found, block = [net], net
    for name in path.split(".")[:-1]:
        block = dict(_mxnet.named_children(block))[name]
        found.append(block)
    return found


def _all_paths(block, path=""):
    paths = []
    for where, child in _children(block, path):
        paths += [where] + _all_paths(child, where)
    return paths


def _resolve(net, path):
    block = net
    for name in path.split("."):
        children = dict(_mxnet.named_children(block))
        if name not in children:
            valid = _all_paths(net)
            raise UnknownNameError("%s has no block %r.%s Paths of its blocks with parameters: "
                                   "%s." % (type(net).__name__, path, suggest(path, valid),
                                            ", ".join(valid[:40]) or "none"))
        block = children[name]
    return block


def _named(net, parts):
    """``[(path, block)]`` of the ``parts`` argument (paths or blocks of ``net``)."""
    if isinstance(parts, (str, mx.gluon.Block)):
        parts = [parts]
    named = []
    for part in parts:
        if part is net:
            raise ConfigError("parts= names the model itself: quantize a whole model that "
                              "traces with gluon_quant.quantize(net, calib_data).")
        if isinstance(part, mx.gluon.Block):
            paths = _places(net, part)
            if not paths:
                raise UnknownNameError("parts= holds a %s that is not a block of this %s: "
                                       "pass blocks of the model, or their dotted paths."
                                       % (type(part).__name__, type(net).__name__))
            part = paths[0]
        if not isinstance(part, str):
            raise ConfigError("parts= takes dotted paths or blocks of the model, got %r."
                              % (part,))
        named.append((part, _resolve(net, part)))
    paths = [path for path, _ in named]
    for path in paths:
        inner = [p for p in paths if p.startswith(path + ".")]
        if inner:
            raise ConfigError("parts= names %r and %r, which is inside it: give one of them."
                              % (path, inner[0]))
    return named


def _replace(net, path, block):
    parent_path, _, name = path.rpartition(".")
    parent = _resolve(net, parent_path) if parent_path else net
    _mxnet.replace_child(parent, name, block)


def _part_files(prefix):
    return [prefix + suffix for suffix in ("-symbol.json", "-int8.params", "-meta.json")]


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
