"""Inputs unlike the calibration data, caught on an int8 net's first calls.

The most common way an int8 model goes wrong is not quantization: it is inference inputs
preprocessed unlike the calibration batches (pixels in [0, 255] where calibration saw
normalized ones, or the reverse). The int8 graph then clips every value beyond the
calibrated ranges, or spends one of its 255 levels on the whole input, and returns
numbers without a word. An fp32 stem does not help: its output is what gets clipped.

Calibration records the range of each input that feeds a weight layer
(:func:`watched_inputs`: through arithmetic with constants or parameters, reshapes and
BatchNorm, into a convolution, dense or RNN layer; token ids, lengths, masks and inputs
the net scales by their own statistics or layer-normalizes are not watched) in
the table's ``meta['input_ranges']``. :class:`InputWatch` compares the first
:data:`CHECKED_CALLS` calls' inputs with them and logs one warning per block that says
what differs and what to do. Later calls cost nothing.
"""
import logging

import mxnet as mx
import numpy as np

from . import _mxnet

__all__ = ["META_KEY", "CHECKED_CALLS", "watched_inputs", "InputRanges", "InputWatch",
           "from_inputs_meta"]

_log = logging.getLogger(__name__)

#: Table meta key: ``{input name: [lowest, highest]}`` over the calibration batches.
META_KEY = "input_ranges"
#: Calls of an int8 net whose inputs are checked.
CHECKED_CALLS = 8
#: Values an input must hold in a call to be checked.
MIN_VALUES = 256
#: Widening of the calibrated range, as a fraction of its span, before a value is outside.
MARGIN = 0.25
#: Share of an input's values beyond the widened range that is reported.
OUTSIDE_SHARE = 0.01
#: An input whose values span less than this share of the calibrated span is reported...
NARROW_SHARE = 0.02
#: ... in this many of the checked calls: one dark or uniform frame spans little too (an
#: image in [0, 1] given to a net calibrated on [0, 255] looks like a very dark one).
NARROW_CALLS = 3

#: Operators a value passes through on its way to a weight layer (the fused graph's).
_PASS_THROUGH = {
    "elemwise_add", "elemwise_sub", "broadcast_add", "broadcast_sub", "_plus_scalar",
    "_minus_scalar", "_rminus_scalar", "_mul_scalar", "_div_scalar", "_rdiv_scalar",
    "_plus", "_minus", "Reshape", "reshape", "transpose", "expand_dims", "squeeze",
    "SwapAxis", "swapaxes", "Flatten", "flatten", "Cast", "cast", "amp_cast", "slice",
    "slice_axis", "slice_like", "crop", "Pad", "pad", "Concat", "concat", "SliceChannel",
    "split", "_copy", "identity", "Dropout", "BatchNorm", "Pooling", "UpSampling",
    "_contrib_BilinearResize2D", "clip", "Activation", "LeakyReLU"}
#: Products and quotients: passed through only with a parameter as the other operand. A
#: quotient by a tensor computed from the data (GluonTS's mean scaling) or a layer
#: normalization makes the values after it independent of the input's scale: such
#: inputs are not watched (LayerNorm, InstanceNorm and GroupNorm are not passed either).
_SCALED = {"elemwise_mul", "elemwise_div", "broadcast_mul", "broadcast_div", "_mul", "_div"}
#: Layers whose output depends on the input's scale through their weights.
_WEIGHT_OPS = {"Convolution", "FullyConnected", "Deconvolution", "RNN"}


def watched_inputs(view, input_names):
    """The names among ``input_names`` whose values reach a weight layer of ``view``
    (a :class:`~gluon_quant.graph.GraphView`) through :data:`_PASS_THROUGH` operators,
    and products or quotients (:data:`_SCALED`) with a parameter."""
    readers = {}
    for node in view:
        for source in node.inputs:
            readers.setdefault(source, []).append(node)
    params = set(view.variables) - set(input_names)
    return [name for name in input_names if _reaches_weights(name, readers, params)]


def _reaches_weights(name, readers, params):
    stack, seen = [name], set()
    while stack:
        source = stack.pop()
        for node in readers.get(source, ()):
            if node.name in seen:
                continue
            if node.main_op in _WEIGHT_OPS:
                return True
            if node.main_op in _SCALED:
                if not all(i == source or i in params for i in node.inputs):
                    continue        # scaled by the data itself: the scale is gone
            elif node.main_op not in _PASS_THROUGH:
                continue
            seen.add(node.name)
            stack.append(node.name)
    return False


class InputRanges:
    """The lowest and highest value of each watched input over calibration batches."""

    def __init__(self, names, earlier=None):
        self.names = list(names)
        self.ranges = {name: list(value) for name, value in (earlier or {}).items()
                       if name in self.names}

    def see(self, named_arrays):
        """Widen the ranges by one batch (``{input name: NDArray}``)."""
        for name in self.names:
            array = named_arrays.get(name)
            if array is None or array.size == 0:
                continue
            lo, hi = _extremes(array)
            if name in self.ranges:
                lo, hi = min(lo, self.ranges[name][0]), max(hi, self.ranges[name][1])
            self.ranges[name] = [lo, hi]

    def merge(self, ranges):
        """Widen the ranges by another pass's (``{input name: [lowest, highest]}``)."""
        for name, (lo, hi) in ranges.items():
            if name in self.ranges:
                lo, hi = min(lo, self.ranges[name][0]), max(hi, self.ranges[name][1])
            self.ranges[name] = [lo, hi]


class InputWatch:
    """Checks an int8 net's first :data:`CHECKED_CALLS` calls against the calibrated
    input ranges (a table's ``meta['input_ranges']``) and warns once.

    Parameters
    ----------
    ranges : dict or None
        ``{input name: [lowest, highest]}``; None or empty: nothing is checked.
    input_names : list of str
        The graph's inputs, in call order.
    """

    def __init__(self, ranges, input_names):
        self._checks = [(i, name, float(ranges[name][0]), float(ranges[name][1]))
                        for i, name in enumerate(input_names)
                        if isinstance(ranges, dict) and _is_range(ranges.get(name))]
        self._calls = CHECKED_CALLS if not self._checks else 0
        self._narrow = {}

    def see(self, arrays):
        """Check one call's flat list of input NDArrays (the first calls only)."""
        if self._calls >= CHECKED_CALLS:
            return
        self._calls += 1        # racing threads may check a call or two more: harmless
        for index, name, lo, hi in self._checks:
            if index >= len(arrays) or not isinstance(arrays[index], mx.nd.NDArray):
                continue
            problem, narrow = _compare(arrays[index], lo, hi)
            if narrow:
                self._narrow[name] = self._narrow.get(name, 0) + 1
                problem = problem if self._narrow[name] >= NARROW_CALLS else ""
            if problem:
                self._calls = CHECKED_CALLS
                _log.warning(
                    "Input %r of this call is unlike the calibration data: %s. The int8 "
                    "network is calibrated for what calibration saw: preprocess inputs as "
                    "the calibration batches were (the same scaling and mean/std), or "
                    "calibrate on data like these. (Checked on the first %d calls, said "
                    "once.)",
                    name, problem, CHECKED_CALLS)
                return


def _extremes(array):
    """``array``'s lowest and highest value as floats: numpy's reductions on a CPU array's
    memory (MXNet's ``min``/``max`` took 30 ms of a batch of 16 images where numpy takes
    under 1 ms), MXNet's elsewhere, read back in one wait."""
    host = _host(array)
    if host is not None:
        return float(host.min()), float(host.max())
    parts = [array.min().reshape((1,)), array.max().reshape((1,))]
    return [float(v) for v in mx.nd.concat(*parts, dim=0).asnumpy()]


def _outside(array, low, high):
    """The share of ``array``'s values below ``low`` or above ``high``."""
    return _share(array, lambda a: (a < low) | (a > high), lambda a: (a < low) + (a > high))


def _nan_share(array):
    """The share of ``array``'s values that are NaN."""
    return _share(array, np.isnan, lambda a: a != a)


def _share(array, on_host, in_mxnet):
    """The share of ``array``'s values a test marks: ``on_host`` on a numpy view of its
    memory where that is free, else ``in_mxnet`` on the NDArray (both give 0/1 arrays)."""
    host = _host(array)
    count = (np.count_nonzero(on_host(host)) if host is not None
             else float(in_mxnet(array).sum().asscalar()))
    return count / array.size


def _host(array):
    """A numpy view of ``array``'s memory where that is free (a float32 CPU array), else
    None."""
    if array.context.device_type == "cpu" and array.dtype == np.float32:
        return _mxnet.host_view(array)
    return None


def _is_range(value):
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def from_inputs_meta(inputs):
    """``{input name: [lowest, highest]}`` of an export's ``inputs`` entries (``range``)."""
    return {entry["name"]: entry["range"] for entry in inputs or ()
            if isinstance(entry, dict) and _is_range(entry.get("range"))}


def _compare(array, lo, hi):
    """``(what is wrong with array's values against the calibrated [lo, hi] or '',
    whether it is that they span a sliver of it)``."""
    span = hi - lo
    if array.size < MIN_VALUES or not span > 0:
        return "", False
    low, high = lo - MARGIN * span, hi + MARGIN * span
    a_lo, a_hi = _extremes(array)
    if np.isnan(a_lo) or np.isnan(a_hi):
        # NaN compares false with every bound: it passed as in range, and quantized, it
        # comes out as numbers (where fp32 layers would pass NaN on)
        return ("%.3g%% of its values are NaN, which int8 turns into ordinary numbers: its "
                "output shows no sign of them" % (100 * _nan_share(array))), False
    outside = _outside(array, low, high) if a_lo < low or a_hi > high else 0.0
    if outside > OUTSIDE_SHARE:
        return ("%.0f%% of its values lie beyond the range calibration saw, [%.4g, %.4g] "
                "(this call: [%.4g, %.4g])" % (100 * outside, lo, hi, a_lo, a_hi)), False
    # A constant input (zeros to time the net, a padding frame) has nothing to compare.
    if 0 < (a_hi - a_lo) < NARROW_SHARE * span:
        return ("its values span [%.4g, %.4g], %.1f%% of the range calibration saw, "
                "[%.4g, %.4g]: about %d of int8's levels are left for them"
                % (a_lo, a_hi, 100 * (a_hi - a_lo) / span, lo, hi,
                   max(1, round(255 * (a_hi - a_lo) / span)))), True
    return "", False
