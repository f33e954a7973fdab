"""Turning any batch (NDArray, numpy, tuple, list, dict, DataBatch) into the net's inputs.

Calibration data is any iterable of batches: a gluon ``DataLoader``, a list, a
generator, an ``mx.io.DataIter``. No labels are ever needed: a tuple's first ``k``
elements feed the net's ``k`` inputs and the rest (labels, ids) are ignored.
"""
import inspect
import itertools
import logging
from typing import Callable, List, Optional, Sequence

import mxnet as mx
import numpy as np

from . import _mxnet
from .errors import CalibrationDataError, EmptyCalibrationError, InputMismatchError, \
    NonFiniteDataError

__all__ = ["InputSpec", "BatchConverter", "iter_batches", "describe", "check_finite", "as_tuples"]

_log = logging.getLogger(__name__)


def describe(value):
    """A short description of a batch for error messages (types and shapes, no values)."""
    if isinstance(value, (mx.nd.NDArray, np.ndarray)):
        return "%s%s %s" % (type(value).__name__, tuple(value.shape), np.dtype(value.dtype).name)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(v) for v in value[:4])
        return "%s of %d [%s%s]" % (type(value).__name__, len(value), inner,
                                    ", ..." if len(value) > 4 else "")
    if isinstance(value, dict):
        return "dict with keys %s" % sorted(map(str, value))
    return type(value).__name__


class InputSpec:
    """The inputs a Gluon net takes: how many, and the names users may key dicts by.

    Parameters
    ----------
    names : list of str
        The graph's input names (``data`` or ``data0``, ``data1``...).
    arg_names : list of str
        The names of ``hybrid_forward``'s tensor arguments (``x``, ``y``...).
    """

    def __init__(self, names, arg_names):
        self.names = list(names)
        self.arg_names = list(arg_names)

    @property
    def count(self):
        """Number of tensor inputs."""
        return len(self.names)

    @classmethod
    def from_net(cls, net, num_inputs=None):
        """Read the input count and names from ``net.hybrid_forward``'s signature.

        Required positional arguments after ``F`` that are not the block's own
        parameters are inputs. ``num_inputs`` overrides the count.
        """
        try:
            sig = inspect.signature(net.hybrid_forward)
            own = _mxnet.registered_param_names(net)
            args = [p.name for p in list(sig.parameters.values())[1:]
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                    and p.default is p.empty and p.name not in own]
        except (TypeError, ValueError):
            args = []
        count = num_inputs if num_inputs is not None else max(1, len(args))
        if not isinstance(count, int) or count < 1:
            raise InputMismatchError("num_inputs must be a positive int, got %r." % (num_inputs,))
        args = (args + ["input%d" % i for i in range(len(args), count)])[:count]
        return cls(_mxnet.input_names(count), args)


def iter_batches(data, limit=None):
    """Iterate over calibration batches, at most ``limit`` of them.

    Raises
    ------
    CalibrationDataError
        ``data`` is not iterable (or is a single array, which would be read row by row).
    """
    if data is None:
        raise EmptyCalibrationError(
            "calib_data is None. Pass an iterable of batches (a DataLoader, a list of arrays, "
            "a generator) or a CalibrationTable via calib_table=.")
    if isinstance(data, (mx.nd.NDArray, np.ndarray)):
        raise CalibrationDataError(
            "calib_data is a single %s; it must be an iterable of batches. Wrap it in a list "
            "([x]) or a DataLoader." % describe(data))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise CalibrationDataError(
            "num_calib_batches must be a positive int or None, got %r." % (limit,))
    if isinstance(data, mx.io.DataIter):
        data.reset()
    try:
        iterator = iter(data)
    except TypeError as err:
        raise CalibrationDataError(
            "calib_data of type %s is not iterable. Pass a DataLoader, a list of batches or a "
            "generator." % type(data).__name__) from err
    return itertools.islice(iterator, limit) if limit is not None else iterator


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
        items = self._select(batch)
        arrays = [self._to_ndarray(item, name, batch)
                  for item, name in zip(items, self.spec.arg_names)]
        ranks = [a.ndim for a in arrays]
        if self._ranks is None:
            self._ranks = ranks
        elif ranks != self._ranks:
            raise InputMismatchError(
                "Batch inputs have ranks %s but earlier batches had ranks %s (%s). Every batch "
                "must have the same layout." % (ranks, self._ranks, describe(batch)))
        return arrays

    def _select(self, batch) -> Sequence:
        count = self.spec.count
        if isinstance(batch, mx.io.DataBatch):
            batch = list(batch.data or [])
        if isinstance(batch, (mx.nd.NDArray, np.ndarray)):
            if count != 1:
                raise InputMismatchError(
                    "The batch is a single array (%s) but the network takes %d inputs (%s). "
                    "Yield tuples of %d arrays, or pass input_fn=." % (
                        describe(batch), count, ", ".join(self.spec.arg_names), count))
            return [batch]
        if isinstance(batch, dict):
            picked = []
            for graph_name, arg_name in zip(self.spec.names, self.spec.arg_names):
                if arg_name in batch:
                    picked.append(batch[arg_name])
                elif graph_name in batch:
                    picked.append(batch[graph_name])
                else:
                    raise InputMismatchError(
                        "The batch dict has keys %s but no entry for input %r (also accepted: "
                        "%r). Key the dict by the input names %s or pass input_fn=." % (
                            sorted(map(str, batch)), arg_name, graph_name,
                            self.spec.arg_names))
            return picked
        if isinstance(batch, (list, tuple)):
            if len(batch) < count:
                raise InputMismatchError(
                    "The batch has %d element(s) (%s) but the network takes %d input(s) (%s). "
                    "Yield at least %d arrays per batch (extra ones such as labels are ignored)."
                    % (len(batch), describe(batch), count, ", ".join(self.spec.arg_names), count))
            return batch[:count]
        raise InputMismatchError(
            "Cannot read network inputs from a batch of type %s. A batch must be an NDArray, "
            "a numpy array, a tuple/list of them, a dict keyed by input names or an "
            "mx.io.DataBatch; or pass input_fn=." % type(batch).__name__)

    def _to_ndarray(self, item, name, batch):
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
        if isinstance(array, mx.nd.NDArray):
            if array.dtype != np.float32:
                array = array.astype("float32")
            return array.as_in_context(self.ctx)
        return mx.nd.array(array, ctx=self.ctx, dtype="float32")


def check_finite(name, array):
    """Raise :class:`NonFiniteDataError` if ``array`` (numpy) holds NaN or Inf."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise NonFiniteDataError(
            "Tensor %r holds %d NaN/Inf value(s) of %d. Clean the calibration data (or the "
            "layer producing it) before quantizing." % (name, bad, array.size))


def as_tuples(value):
    """Nested lists of outputs as nested tuples (how fp32 Gluon nets return them)."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(v) for v in value)
    return value
