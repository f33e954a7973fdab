"""Turning any batch (NDArray, numpy, tuple, list, dict, DataBatch) into the net's inputs.

Calibration data is any iterable of batches: a gluon ``DataLoader``, a list, a
generator, an ``mx.io.DataIter``. No labels are ever needed: a tuple's first ``k``
elements feed the net's ``k`` inputs and the rest (labels, ids) are ignored.
"""
import collections.abc
import inspect
import itertools
import logging
import numbers
import operator
from typing import Callable, List, Optional, Sequence

import mxnet as mx
import numpy as np

from . import _mxnet
from .errors import CalibrationDataError, EmptyCalibrationError, InputMismatchError, \
    NonFiniteDataError

__all__ = ["InputSpec", "BatchConverter", "iter_batches", "keep_batches", "peek", "describe",
           "check_finite", "batch_count", "nest", "input_labels", "UNBOUNDED_WARNING_BATCHES",
           "KEPT_BATCHES_BUDGET"]

_log = logging.getLogger(__name__)

#: Without ``num_calib_batches``, calibration data of unknown length (a generator, a
#: stream) that has given this many batches gets a warning saying how to bound it: it may
#: never end (GluonTS's ``TrainDataLoader``, a generator over ``itertools.cycle``).
UNBOUNDED_WARNING_BATCHES = 1000
#: ``tune()`` (and a parallel shard read in this process) keeps its batches in memory:
#: without ``num_calib_batches``, more than this many bytes of batches stop it with an
#: error instead of exhausting the machine's memory.
KEPT_BATCHES_BUDGET = 4 * 2 ** 30
_BOUND_HINT = ("Pass num_calib_batches=N (a few dozen batches are plenty for calibration) or "
               "a finite iterable.")


def is_array(value):
    """Whether ``value`` is one array: an NDArray, a numpy array, or an object numpy reads
    as one (``__array__`` and a ``shape``: a pandas DataFrame, a CPU torch tensor)."""
    if isinstance(value, (mx.nd.NDArray, np.ndarray)):
        return True
    return (hasattr(value, "__array__") and hasattr(value, "shape")
            and not isinstance(value, (list, tuple, dict, str, bytes)))


def describe(value):
    """A short description of a batch for error messages (types and shapes, no values)."""
    if isinstance(value, (mx.nd.NDArray, np.ndarray)):
        return "%s%s %s" % (type(value).__name__, tuple(value.shape), np.dtype(value.dtype).name)
    if is_array(value):
        return "%s%s" % (type(value).__name__, tuple(value.shape))
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(v) for v in value[:4])
        return "%s of %d [%s%s]" % (type(value).__name__, len(value), inner,
                                    ", ..." if len(value) > 4 else "")
    if isinstance(value, dict):
        return "dict with keys %s" % sorted(map(str, value))
    return type(value).__name__


def channels_last_hint(inputs):
    """A sentence for an input shaped like channels-last images (``(N, H, W, C)``, C of 1,
    3 or 4, as ``ImageFolderDataset`` and ``mx.image.imread`` decode them) when a network
    fails on it: Gluon's convolutions take ``(N, C, H, W)``. Empty otherwise."""
    for index, value in enumerate(inputs):
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) == 4 and shape[-1] in (1, 3, 4) and min(shape[1:3]) >= 8:
            return (" Input %d, shaped %s, looks like channels-last images (N, H, W, C) as "
                    "decoded; Gluon's convolutions take (N, C, H, W): transform the dataset "
                    "with gluon.data.vision.transforms.ToTensor() (which also scales 0-255 "
                    "pixels to [0, 1]) or transpose the batches with x.transpose((0, 3, 1, 2))."
                    % (index, shape))
    return ""


class InputSpec:
    """The inputs a Gluon net takes: how many, and the names users may key dicts by.

    Parameters
    ----------
    names : list of str
        The graph's input names (``data`` or ``data0``, ``data1``...).
    arg_names : list of str
        The names of the tensor arguments the net is called with (``x``, ``y``...).
    optional : list of str, optional
        Arguments after the required ones whose default is None (``valid_length=None``,
        ``mask=None``): inputs when the batches supply them.
    explicit : bool, default False
        The count was given (``num_inputs=``, or the model family's preset says which
        elements its batches feed), so extra batch elements are labels.
    layout : list, optional
        Where an argument is a list of arrays (an RNN's ``states=[h, c]``) or None (a
        ``states=None`` before a ``valid_length`` the batches give): the nesting of
        ``arg_names`` in Gluon's format (``[0, [0, 0]]``, ``-1`` for None), ``names`` then
        naming the flat arrays in order, as ``hybridize()`` does. None when every argument
        is one array.
    nullable : list of str, optional
        Arguments of ``arg_names`` that default to None: a dict batch without them passes
        None (the traced graph has no input for them).
    """

    def __init__(self, names, arg_names, optional=(), explicit=False, layout=None,
                 nullable=()):
        self.names = list(names)
        self.arg_names = list(arg_names)
        self.optional = [n for n in optional if n not in self.arg_names]
        self.nullable = [n for n in nullable if n in self.arg_names]
        self.explicit = bool(explicit)
        self.layout = None if layout is None or layout == [0] * len(self.arg_names) \
            else list(layout)

    @property
    def count(self):
        """Number of tensor inputs (arrays, after flattening nested arguments)."""
        return len(self.names)

    def to_meta(self):
        """The spec as JSON-ready data (kept in calibration tables' metadata)."""
        return {"names": self.names, "arg_names": self.arg_names, "optional": self.optional,
                "explicit": self.explicit, "layout": self.layout, "nullable": self.nullable}

    def table_meta(self, shapes=None):
        """What a calibration table keeps of the graph's inputs, so that a block built from
        the table alone plans the same graph: this spec (key ``inputs``) and the inputs'
        ``shapes`` at calibration (``input_shapes``; the int8 regions depend on them)."""
        return dict(inputs=self.to_meta(),
                    **({"input_shapes": [list(s) for s in shapes]} if shapes else {}))

    @classmethod
    def from_meta(cls, table_meta):
        """The spec :meth:`to_meta` wrote in a table's metadata (key ``inputs``), or None
        where it holds none (a table saved by an earlier version) or not a valid one."""
        try:
            meta = table_meta["inputs"]
            spec = cls(meta["names"], meta["arg_names"], meta.get("optional", ()),
                       meta.get("explicit", False), meta.get("layout"),
                       meta.get("nullable", ()))
            flat, _ = nest([0] * len(spec.arg_names) if spec.layout is None else spec.layout,
                           arrays=False)
        except (KeyError, TypeError, AttributeError):
            return None
        valid = all(isinstance(n, str) for n in spec.names + spec.arg_names)
        return spec if valid and flat.count(0) == spec.count else None

    def regroup(self, flat):
        """The arguments to call the fp32 net with, from the flat input arrays/symbols."""
        flat = list(flat)
        return flat if self.layout is None else _mxnet.regroup(flat, self.layout)

    def flatten(self, items, batch=None):
        """``(arrays, labels)`` of the arguments ``items``, checked against the layout.

        Raises
        ------
        InputMismatchError
            An argument is nested differently from the first batch's.
        """
        flat, layout = nest(items)
        expected = self.layout or [0] * len(self.arg_names)
        if layout != expected:
            raise InputMismatchError(
                "The inputs are nested as %s (%s) but the network was traced with %s (0 is "
                "one array, [0, 0] a list of two, -1 None). Give every batch and call the "
                "same structure." % (layout, describe(batch if batch is not None else items),
                                     expected))
        return flat, input_labels(self.arg_names, expected)

    def nested_as(self, batch):
        """This spec, with the layout of ``batch``'s arguments when some are lists."""
        if batch is None:
            return self
        try:
            items = _select(self, batch)
        except InputMismatchError:      # reported with context when the batch is converted
            return self
        flat, layout = nest(items)
        if layout == [0] * len(layout):
            return self
        return type(self)(_mxnet.input_names(len(flat)), self.arg_names, self.optional,
                          self.explicit, layout, self.nullable)

    @classmethod
    def from_net(cls, net, num_inputs=None, batch=None, feeds=(), ranks=()):
        """Read the inputs from the signature ``net`` is called with (and a batch): its
        ``hybrid_forward``'s, or its class's own ``__call__``'s where it overrides Gluon's.

        Required positional arguments after ``F`` that are not the block's own parameters
        are inputs; so are the arguments after them that default to None when the batch
        supplies them: a dict batch by name; a tuple batch when the model family says its
        batches feed them (``feeds``, from its preset: BERT's ``(tokens, token_types,
        valid_length, label)``), or else only when it cannot be a label instead, otherwise
        the choice is refused as ambiguous. ``num_inputs`` overrides.

        Parameters
        ----------
        net : mxnet.gluon.HybridBlock
        num_inputs : int, optional
        batch : object, optional
            A calibration batch.
        feeds : sequence of str
            The arguments the family's tuple batches feed, in order (elements after them
            are labels); those the net does not take are skipped, and only names that then
            lead the signature count.
        ranks : sequence of int
            The rank of each of ``feeds`` (empty: not checked).

        Raises
        ------
        InputMismatchError
            ``num_inputs`` is invalid, or a tuple batch has more elements than required
            inputs while the net also takes optional tensors (labels or inputs?) that
            ``feeds`` does not settle, or its elements' ranks are not ``ranks``.
        """
        required, optional = _signature_inputs(net)
        if isinstance(batch, dict):
            _refuse_options(net, batch, required + optional)
        fed, ranks = _leading(required + optional, feeds, ranks)
        if ranks and num_inputs is None and isinstance(batch, (list, tuple)):
            _check_ranks(net, (required + optional)[:fed], ranks, batch)
        if num_inputs is not None:
            if isinstance(num_inputs, bool) or not isinstance(num_inputs, int) or num_inputs < 1:
                raise InputMismatchError("num_inputs must be a positive int, got %r."
                                         % (num_inputs,))
            args = required + optional
            args = (args + ["input%d" % i for i in range(len(args), num_inputs)])[:num_inputs]
            return cls(_mxnet.input_names(num_inputs), args, explicit=True,
                       nullable=optional).nested_as(batch)
        count = max(1, len(required))
        settled = bool(optional) and fed > len(required) and isinstance(batch, (list, tuple))
        if settled:
            count = max(count, min(len(batch), fed))
        elif optional and batch is not None:
            count = _count_from_batch(net, required, optional, batch, count)
        args = required + optional
        args = (args + ["input%d" % i for i in range(len(args), count)])[:count]
        return cls(_mxnet.input_names(count), args, optional=optional[count - len(required):],
                   explicit=settled, nullable=optional).nested_as(batch)


def _refuse_options(net, batch, inputs):
    """Refuse a dict batch keying a non-tensor argument (``temperature=2.0``): its default
    is traced into the graph, so the batch's value would be silently ignored."""
    try:
        params, own = {p.name: p for p in _call_parameters(net)}, _mxnet.registered_param_names(net)
    except (TypeError, ValueError):
        return
    for name in (k for k in batch if k in params and k not in inputs and k not in own):
        raise InputMismatchError(
            "The batch dict has the key %r, an argument of %s's hybrid_forward that is not "
            "a tensor input (its default, %r, is traced into the network, so the batch's "
            "value would be ignored; tensor inputs are the required arguments and those "
            "defaulting to None: %s). Drop the key, or give the argument the default None "
            "to feed it per batch." % (name, type(net).__name__, params[name].default,
                                        ", ".join(inputs) or "none"))


def _check_ranks(net, feeds, ranks, batch):
    """Refuse a tuple batch whose leading elements do not have the ranks of the arguments
    they feed, with the ``input_fn=`` that reorders it when one order of them fits."""
    have = [getattr(item, "ndim", None) for item in batch]
    count = min(len(feeds), len(ranks), len(batch))
    if None in have[:count] or list(have[:count]) == list(ranks[:count]):
        return
    order = next((p for p in itertools.permutations(range(len(batch)), count)
                  if [have[i] for i in p] == list(ranks[:count])), None)
    fix = ("pass input_fn=lambda b: (%s) to feed them in that order"
           % ", ".join("b[%d]" % i for i in order)) if order else "pass input_fn="
    raise InputMismatchError(
        "The batch's elements have ranks %s (%s), but %s takes %s with ranks %s, in this "
        "order, from a tuple batch (then labels): %s."
        % (tuple(have), describe(batch), type(net).__name__, ", ".join(feeds[:count]),
           tuple(ranks[:count]), fix))


def _numbers(value):
    """Whether ``value`` is a (nested) list/tuple of Python numbers: one array, not a nest."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, numbers.Number) or _numbers(v) for v in value))


def nest(values, arrays=True):
    """``(flat, fmt)``: the leaves of nested lists/tuples ``values`` and Gluon's format of
    their nesting (0 for a leaf, a list per sequence; with ``arrays``, -1 for None, which
    ``flat`` leaves out, as Gluon does for an argument passed as None).  With ``arrays``,
    a list of numbers (``[[0.1, ...]]``) is one leaf: the array it spells."""
    flat, fmt = [], []
    for value in values:
        if arrays and value is None:
            fmt.append(-1)
        elif isinstance(value, (list, tuple)) and not (arrays and _numbers(value)):
            inner, inner_fmt = nest(value, arrays)
            flat.extend(inner)
            fmt.append(inner_fmt)
        else:
            flat.append(value)
            fmt.append(0)
    return flat, fmt


def input_labels(names, fmt):
    """Names of the leaves of ``fmt``: ``x``, ``states[0]``, ``states[1]``..."""
    out = []
    for name, sub in zip(names, fmt):
        if sub == 0:
            out.append(name)
        elif sub != -1:     # None: no array
            out.extend(input_labels(["%s[%d]" % (name, i) for i in range(len(sub))], sub))
    return out

def _signature_inputs(net):
    """``(required, optional)`` tensor argument names of the signature ``net`` is called
    with (:func:`_call_parameters`; of a ``SymbolBlock``: its graph's input names,
    ``data0, data1`` rather than ``x, *args``)."""
    if type(net).hybrid_forward is mx.gluon.SymbolBlock.hybrid_forward:
        try:
            return [sym.name for sym in _mxnet.symbol_block_graph(net)[0]], []
        except (AttributeError, TypeError, ValueError):
            pass
    try:
        params = _call_parameters(net)
    except (TypeError, ValueError):
        return [], []
    own = _mxnet.registered_param_names(net)
    required, optional = [], []
    for param in params:
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) \
                or param.name in own:
            continue
        if param.default is param.empty and not optional:
            required.append(param.name)
        elif param.default is None:
            optional.append(param.name)
        else:
            break       # a non-tensor option (training=False): no tensor after it
    return required, optional


def _call_parameters(net):
    """The parameters users call ``net`` with: those of its class's own ``__call__`` where
    it overrides Gluon's with named arguments only (GluonNLP's RoBERTa takes ``inputs,
    valid_length`` and passes empty token types to BERT's ``hybrid_forward`` itself), else
    ``hybrid_forward``'s after ``F``."""
    if type(net).__call__ is not mx.gluon.Block.__call__:
        params = list(inspect.signature(net.__call__).parameters.values())
        # a wrapper passing *args on (``__call__(self, x, *args)``) does not say them
        if not any(p.kind is p.VAR_POSITIONAL for p in params) and any(
                p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
            return params
    return list(inspect.signature(net.hybrid_forward).parameters.values())[1:]


def _leading(args, feeds, ranks=()):
    """``(count, ranks)``: how many of ``args`` (in order) the family's ``feeds`` name, up
    to the first it does not, after dropping the feeds the net does not take (RoBERTa, a
    BERT without token types, is fed ``(tokens, valid_length)``); the ranks of those."""
    kept = [(fed, rank) for fed, rank in itertools.zip_longest(feeds, ranks) if fed in args]
    count = 0
    for arg, (fed, _) in zip(args, kept):
        if arg != fed:
            break
        count += 1
    return count, tuple(rank for _, rank in kept[:count] if rank is not None)


def _count_from_batch(net, required, optional, batch, count):
    """How many of the optional inputs a batch supplies (see :meth:`InputSpec.from_net`)."""
    if isinstance(batch, dict):
        # up to the last one given: those before it that are missing are passed as None
        # (GluonNLP's encoders: ``inputs, states=None, valid_length=None``)
        present = [i for i, name in enumerate(optional) if name in batch]
        return count + (present[-1] + 1 if present else 0)
    if isinstance(batch, (list, tuple)) and len(batch) > count:
        extra = len(batch) - count
        raise InputMismatchError(
            "Cannot tell which batch elements are inputs: %s takes %s and, "
            "optionally, %s, and the batches have %d elements (%s). Extra elements may be "
            "optional inputs or labels: pass num_inputs=%d to feed %s, num_inputs=%d if the "
            "rest are labels, a dict batch keyed by input name, or input_fn=."
            % (type(net).__name__, ", ".join(required) or "one input", ", ".join(optional),
               len(batch), describe(batch), count + min(extra, len(optional)),
               ", ".join((required + optional)[:count + min(extra, len(optional))]), count))
    return count


def peek(data):
    """``(first batch or None, data)``; an iterator's first batch is put back in front.

    Re-iterable data (lists, DataLoaders) is returned as is; a one-shot iterator
    (a generator) is returned chained after its first batch. An ``mx.io.DataIter`` is
    reset and read once (:func:`iter_batches` resets it again): its first batch's shapes
    decide the int8 regions as a list's do (they were planned without shapes, and
    ``NDArrayIter`` data gave another model than the same batches in a list).
    """
    if data is None:
        return None, data
    if isinstance(data, mx.io.DataIter):
        data.reset()
        try:
            return data.next(), data
        except StopIteration:
            return None, data
    _refuse_samples(data)
    try:
        iterator = iter(data)
    except TypeError:
        return None, data
    first = next(iterator, None)
    if iterator is data:
        data = _PutBack(first, iterator)
    return first, data


def _source(data):
    """The user's calibration data behind a :func:`peek`."""
    return data.source if isinstance(data, _PutBack) else data


class _PutBack:
    """A one-shot iterator with its first batch put back in front (:func:`peek`); it
    keeps the user's iterator as ``source`` for the checks and messages of
    :func:`iter_batches`."""

    def __init__(self, first, source):
        self.source = source
        self._batches = itertools.chain([] if first is None else [first], source)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._batches)


def _refuse_samples(data):
    """A Gluon ``Dataset`` yields single samples, not batches, and a dict of arrays (or
    ``np.load`` of a .npz) its keys: say how to batch them."""
    if isinstance(data, mx.gluon.data.Dataset):
        raise CalibrationDataError(
            "calib_data is a Gluon %s, which yields single samples, not batches. Wrap it in a "
            "DataLoader: gluon.data.DataLoader(dataset, batch_size=32)." % type(data).__name__)
    if isinstance(data, collections.abc.Mapping):
        keys = list(data.keys())
        raise CalibrationDataError(
            "calib_data is a %s (keys %s), which yields its keys, not batches. Pass a list "
            "of batches, each a dict keyed by input name: [{k: v[i:i + 32] for k, v in "
            "arrays.items()} for i in range(0, n, 32)] (with arrays = dict(data) for a .npz), "
            "or [data] to calibrate on it as one batch."
            % (type(data).__name__, ", ".join(map(str, keys[:5])) + (", ..." if len(keys) > 5
                                                                     else "")))


def iter_batches(data, limit=None, *, what="calib_data"):
    """Iterate over calibration batches, at most ``limit`` of them.

    ``what`` names ``data`` in messages (the doctor's tools call it ``batches``, and their
    ``limit`` ``num_batches``).

    Raises
    ------
    CalibrationDataError
        ``data`` is not iterable (or is a single array, which would be read row by row).
    """
    calib = what == "calib_data"
    if data is None:
        raise EmptyCalibrationError(
            "%s is None. Pass an iterable of batches (a DataLoader, a list of arrays, a "
            "generator)%s." % (what, " or a CalibrationTable via calib_table=" if calib else ""))
    if is_array(data):
        raise CalibrationDataError(
            "%s is a single %s; it must be an iterable of batches. Wrap it in a list "
            "([x]) or a DataLoader." % (what, describe(data)))
    if limit is not None and (not isinstance(limit, numbers.Integral) or isinstance(limit, bool)
                              or limit < 1):
        raise CalibrationDataError("%s must be a positive int or None, got %r."
                                   % ("num_calib_batches" if calib else "num_batches", limit))
    if isinstance(data, mx.io.DataIter):
        data.reset()
    _refuse_samples(data)
    try:
        iterator = iter(data)
    except TypeError as err:
        raise CalibrationDataError(
            "%s of type %s is not iterable. Pass a DataLoader, a list of batches or a "
            "generator." % (what, type(data).__name__)) from err
    if limit is not None:
        return itertools.islice(iterator, limit)
    source = _source(data)
    if _endless(source):
        raise CalibrationDataError("calib_data is an endless itertools.%s: calibration would "
                                   "never finish. %s" % (type(source).__name__, _BOUND_HINT))
    if batch_count(source) is None:
        return _warn_when_long(iterator, source)
    return iterator


def _endless(data):
    """Whether ``data`` is one of Python's known endless iterators."""
    if isinstance(data, (itertools.cycle, itertools.count)):
        return True
    return isinstance(data, itertools.repeat) and operator.length_hint(data, -1) < 0


def _warn_when_long(iterator, data):
    """Yield from ``iterator``; warn once it has given :data:`UNBOUNDED_WARNING_BATCHES`."""
    for count, batch in enumerate(iterator, 1):
        if count == UNBOUNDED_WARNING_BATCHES:
            _log.warning("calib_data (%s, of unknown length) has given %d batches and "
                         "num_calib_batches is not set: if it never ends (a stream, GluonTS's "
                         "TrainDataLoader, a generator that loops), calibration never "
                         "finishes. %s", type(data).__name__, count, _BOUND_HINT)
        yield batch


def keep_batches(data, limit=None, *, who="tune()"):
    """The batches of ``data`` (at most ``limit``) as a list, for callers that reuse them.

    Raises
    ------
    CalibrationDataError
        Without ``limit``, once the batches kept pass :data:`KEPT_BATCHES_BUDGET` bytes
        (``data`` may be endless): an error now rather than a machine out of memory.
    """
    kept, size = [], 0
    for batch in iter_batches(data, limit):
        kept.append(batch)
        size += _nbytes(batch)
        if limit is None and size > KEPT_BATCHES_BUDGET:
            raise CalibrationDataError(
                "%s keeps its calibration batches in memory, and calib_data (%s) has given %d "
                "batches (%.1f GiB) without ending while num_calib_batches is not set: it may "
                "be endless. %s" % (who, type(_source(data)).__name__, len(kept),
                                    size / 2 ** 30, _BOUND_HINT))
    return kept


def _nbytes(batch):
    """Bytes of the arrays in a batch (nested tuples, lists, dicts, DataBatch)."""
    if isinstance(batch, mx.io.DataBatch):
        return _nbytes(list(batch.data or ()) + list(batch.label or ()))
    if isinstance(batch, dict):
        return _nbytes(list(batch.values()))
    if isinstance(batch, (list, tuple)):
        return sum(_nbytes(item) for item in batch)
    if isinstance(batch, (mx.nd.NDArray, np.ndarray)):
        return int(np.prod(batch.shape)) * np.dtype(batch.dtype).itemsize
    if is_array(batch):     # a DataFrame has no one dtype: counted as the float32 it becomes
        return int(np.prod(batch.shape)) * 4
    return 0


class BatchConverter:
    """Map one batch to the list of NDArrays the net takes.

    Parameters
    ----------
    spec : InputSpec
    ctx : mxnet.Context
    input_fn : callable, optional
        ``input_fn(batch)`` returns the input(s) (an array, or a tuple/list/dict of
        arrays) and overrides the default mapping.
    """

    def __init__(self, spec: InputSpec, ctx, input_fn: Optional[Callable] = None):
        if input_fn is not None and not callable(input_fn):
            raise InputMismatchError("input_fn must be callable, got %r." % (input_fn,))
        self.spec = spec
        self.ctx = ctx
        self.input_fn = input_fn
        self._ranks: Optional[List[int]] = None

    def __call__(self, batch) -> List[mx.nd.NDArray]:
        if self.input_fn is not None:
            try:
                batch = self.input_fn(batch)
            except Exception as err:
                raise InputMismatchError("input_fn raised %s: %s" % (type(err).__name__, err)) \
                    from err
        items, labels = self.spec.flatten(_select(self.spec, batch), batch)
        arrays = [self._to_ndarray(item, name, batch) for item, name in zip(items, labels)]
        ranks = [a.ndim for a in arrays]
        if self._ranks is None:
            self._ranks = ranks
        elif ranks != self._ranks:
            raise InputMismatchError(
                "Batch inputs have ranks %s but earlier batches had ranks %s (%s). Every batch "
                "must have the same layout. (calib_data is read one batch per element: for "
                "whole arrays of inputs and labels, pass [(inputs, labels)] or a DataLoader, "
                "not (inputs, labels).)" % (ranks, self._ranks, describe(batch)))
        return arrays

    def _to_ndarray(self, item, name, batch):
        item = _mxnet.unshared(_mxnet.as_legacy(item))      # legacy, dense, on cpu
        if isinstance(item, mx.nd.NDArray):
            kind = np.dtype(item.dtype).kind
            array = item
        else:
            try:
                arr = np.asarray(item)
            except Exception as err:
                raise InputMismatchError("Input %r of the batch cannot be read as an array "
                                         "(%s)." % (name, err)) from err
            kind = arr.dtype.kind
            array = arr
        if kind not in "fiub":
            raise InputMismatchError(
                "Input %r has dtype %s, which is not numeric (batch: %s). Feed float arrays."
                % (name, np.dtype(array.dtype).name, describe(batch)))
        if array.ndim == 0:
            raise InputMismatchError(
                "Input %r is a scalar; each input must be a batch with a leading batch axis "
                "(batch: %s)." % (name, describe(batch)))
        if 0 in array.shape:        # MXNet cannot even copy it, and a graph fails on it
            raise InputMismatchError(
                "Input %r is empty (shape %s): every batch needs at least one sample and no "
                "zero-size axis (batch: %s). Drop empty batches from the data (a filter that "
                "removed every sample, an empty last batch)."
                % (name, tuple(array.shape), describe(batch)))
        if isinstance(array, mx.nd.NDArray):
            if array.dtype != np.float32:
                array = array.astype("float32")
            return array.as_in_context(self.ctx)
        return mx.nd.array(array, ctx=self.ctx, dtype="float32")


def _select(spec, batch) -> Sequence:
    """The arguments ``batch`` feeds ``spec``'s net (its leading elements, or dict entries)."""
    count = len(spec.arg_names)
    if isinstance(batch, mx.io.DataBatch):
        batch = list(batch.data or [])
    if is_array(batch):
        if count != 1:
            raise InputMismatchError(
                "The batch is a single array (%s) but the network takes %d inputs (%s). "
                "Yield tuples of %d arrays, or pass input_fn=." % (
                    describe(batch), count, ", ".join(spec.arg_names), count))
        return [batch]
    if isinstance(batch, dict):
        picked = []
        aliases = spec.names if spec.layout is None else [None] * count
        for graph_name, arg_name in zip(aliases, spec.arg_names):
            if arg_name in batch:
                picked.append(batch[arg_name])
            elif graph_name is not None and graph_name in batch:
                picked.append(batch[graph_name])
            elif arg_name in spec.nullable:
                picked.append(None)
            else:
                raise InputMismatchError(
                    "The batch dict has keys %s but no entry for input %r%s. Key the dict "
                    "by the input names %s or pass input_fn=." % (
                        sorted(map(str, batch)), arg_name,
                        " (also accepted: %r)" % graph_name if graph_name else "",
                        spec.arg_names))
        return picked
    if isinstance(batch, (list, tuple)):
        if len(batch) > count and spec.optional and not spec.explicit:
            raise InputMismatchError(
                "The batch has %d elements (%s) but the network was traced with %d "
                "input(s) (%s) and also takes %s: are the extra elements inputs or "
                "labels? Pass num_inputs= (or input_fn=) to say." % (
                    len(batch), describe(batch), count, ", ".join(spec.arg_names),
                    ", ".join(spec.optional)))
        if len(batch) < count:
            raise InputMismatchError(
                "The batch has %d element(s) (%s) but the network takes %d input(s) (%s). "
                "Yield at least %d arrays per batch (extra ones such as labels are ignored)."
                % (len(batch), describe(batch), count, ", ".join(spec.arg_names), count))
        return batch[:count]
    raise InputMismatchError(
        "Cannot read network inputs from a batch of type %s. A batch must be an NDArray, "
        "a numpy array (or what numpy reads as one: a DataFrame, a CPU torch tensor), a "
        "tuple/list of them, a dict keyed by input names or an mx.io.DataBatch; or pass "
        "input_fn=." % type(batch).__name__)


def batch_count(data, limit=None):
    """How many batches ``data`` will give (``len``, at most ``limit``), or ``limit`` when
    it has no length (a generator)."""
    try:
        n = len(data)
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)


def check_finite(name, array):
    """Raise :class:`NonFiniteDataError` if ``array`` (numpy) holds NaN or Inf."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise NonFiniteDataError(
            "Tensor %r holds %d NaN/Inf value(s) of %d. Clean the calibration data (or the "
            "layer producing it) before quantizing." % (name, bad, array.size))
