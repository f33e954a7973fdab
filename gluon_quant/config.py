"""Typed settings: :class:`QuantConfig` and the enums that name dtypes, backends and
granularities.

Strings given by users are parsed here once, with errors that list the valid names;
the rest of the package only sees the enums and one frozen, validated
:class:`QuantConfig`, which every entry point (:func:`~gluon_quant.quantize`,
:class:`~gluon_quant.QuantizedHybridBlock`, ``clone()``, :func:`~gluon_quant.tune`,
``zoo.get_model``, the CLI) accepts, alone or built from keyword arguments.
"""
import dataclasses
import enum
import math
import numbers
from typing import Any, Callable, Optional, Tuple

import numpy as np
from mxnet.gluon import Block

from ._names import suggest
from .backends import get_spec
from .calib import Calibrator, get_calibrator
from .errors import (CalibrationDataError, CalibrationTableError, ConfigError, GluonQuantError,
                     InputMismatchError, UnknownNameError, UnsupportedDtypeError)
from .graph.selection import block_paths
from . import _mxnet
from .presets import Preset, get_preset

__all__ = ["QuantConfig", "QuantDtype", "Backend", "Granularity", "WeightRounding", "suggest",
           "check_ctx"]


class _ParsableEnum(enum.Enum):
    """An enum parsed from its value or an alias, with a helpful error."""

    @classmethod
    def _aliases(cls):
        return {}

    @classmethod
    def _named(cls, value):
        """``value`` as the name :meth:`parse` reads, where it spells one otherwise."""
        return value

    @classmethod
    def parse(cls, value, what=None):
        """Return the member named by ``value`` (a member, its value or an alias)."""
        if isinstance(value, cls):
            return value
        what = what or cls.__name__
        if not isinstance(value, str):
            value = cls._named(value)
        if isinstance(value, str):
            key = value.strip().lower().replace("_", "-")
            for member in cls:
                if member.value == key:
                    return member
            alias = cls._aliases().get(key)
            if alias is not None:
                return cls(alias)
        valid = sorted([m.value for m in cls] + list(cls._aliases()))
        raise UnknownNameError(
            "Unknown %s %r. Valid values: %s.%s"
            % (what, value, ", ".join(repr(v) for v in valid), suggest(value, valid)))


class QuantDtype(_ParsableEnum):
    """The integer type of quantized activations.

    ``AUTO`` picks uint8 for tensors that are never negative (after ReLU) and int8
    otherwise; ``INT8`` makes every quantize node emit int8 (oneDNN fused operators
    that end in a ReLU still emit uint8, which is strictly more precise for their
    non-negative outputs); ``UINT8`` is refused for tensors that can be negative.
    """

    AUTO = "auto"
    INT8 = "int8"
    UINT8 = "uint8"

    @classmethod
    def _named(cls, value):
        """NumPy's and MXNet's ways of naming a dtype (``np.int8``, ``np.dtype('uint8')``)."""
        if value is None:
            return value            # np.dtype(None) is float64
        try:
            return np.dtype(value).name
        except (TypeError, ValueError, KeyError):
            return value


class Backend(_ParsableEnum):
    """The runtime the int8 graph is built for."""

    ONEDNN = "onednn"
    CUDNN = "cudnn"

    @classmethod
    def _aliases(cls):
        return {"mkldnn": "onednn", "dnnl": "onednn", "cpu": "onednn",
                "cuda": "cudnn", "gpu": "cudnn"}


class Granularity(_ParsableEnum):
    """How weights are scaled: one scale per tensor or one per output channel."""

    TENSOR = "tensor"
    CHANNEL = "channel"

    @classmethod
    def _aliases(cls):
        return {"tensor-wise": "tensor", "per-tensor": "tensor",
                "channel-wise": "channel", "per-channel": "channel"}

    @property
    def mxnet_name(self):
        """The spelling MXNet's quantization pass expects."""
        return self.value + "-wise"


class WeightRounding(_ParsableEnum):
    """How fp32 weights become int8: to nearest, or learned per layer (AdaRound)."""

    NEAREST = "nearest"
    ADAROUND = "adaround"


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Every setting of one quantization, validated once.

    Build it directly, or let any entry point build it from keyword arguments:
    ``quantize(net, data, calibrator="entropy")`` is
    ``quantize(net, data, config=QuantConfig(calibrator="entropy"))``. Derive variants
    with :meth:`replace`. Strings are parsed into the enums here, so
    ``QuantConfig(dtype="int8").dtype is QuantDtype.INT8``.

    Parameters
    ----------
    calibrator : str, Calibrator subclass or instance, default 'mse'
        How activation ranges are chosen: ``'mse'`` (least expected quantization error),
        ``'entropy'`` (KL divergence), ``'minmax'``, ``'percentile'`` or your own
        :class:`~gluon_quant.calib.Calibrator` (class or instance).
    dtype : {'auto', 'int8', 'uint8'}, default 'auto'
        Quantized activation type; ``'auto'`` uses uint8 for tensors that are never negative
        (where the backend has uint8 kernels) and int8 elsewhere.
    backend : {'onednn', 'cudnn'}, default 'onednn'
        Runtime of the int8 graph (:mod:`gluon_quant.backends`); aliases ``'mkldnn'``,
        ``'cpu'``, ``'gpu'``...
    granularity : {'channel', 'tensor'}, optional
        One weight scale per output channel or per tensor. Default: the backend's first
        (``'channel'`` on oneDNN, ``'tensor'`` on cuDNN).
    exclude : str, Block or sequence of them, default ()
        Layers kept in fp32: block names, attribute paths, node names, glob patterns or
        operator types (``'Convolution'``, ``'Dense'``, ``'Pooling'``), or the net's own
        Gluon blocks (``exclude=[net.output]``; given to ``quantize()``, ``tune()`` or a
        block with the net, a block stands for its attribute path in the net, else for
        its ``name``, which blocks made with ``prefix=''`` share with their parent).
    preset : str, Preset or None, default None
        A model family's rules (:mod:`gluon_quant.presets`: layers kept in fp32, bounds on
        ranges, which batch elements are inputs): None picks the family's preset for
        GluonCV and GluonNLP zoo nets and none otherwise; ``'none'`` turns it off.
    bias_correction : bool, default True
        Remove the per-channel mean error int8 adds to layers without an activation,
        measured on up to 32 calibration samples (:mod:`gluon_quant.bias`).
    num_calib_batches : int, optional
        Calibrate on at most this many batches (by default, all): needed for data that
        never ends (``itertools.cycle`` is refused without it; see
        :data:`gluon_quant.data.UNBOUNDED_WARNING_BATCHES`).
    input_fn : callable, optional
        ``input_fn(batch)`` returns the net's input(s) from one batch.
    num_inputs : int, optional
        Number of tensor inputs, when ``hybrid_forward``'s signature does not tell.
    ctx : mxnet.Context, optional
        Where calibration and inference run. By default, where the net's parameters are
        when the backend runs on that kind of device (``mx.gpu(0)`` for a net there and
        ``backend='cudnn'``), else ``mx.cpu()``.
    progress : bool, default True
        Show a progress bar while calibrating (only on a terminal).
    int8_lstm : bool, default False
        Let LSTM layers run in int8 (``_contrib_quantized_rnn``) where this process can run
        it. Off by default, as measured on MXNet 1.9.1: on AVX512-VNNI CPUs oneDNN cannot
        run it at all, and without VNNI it reached only 0.77-0.96 output cosine. With it
        off, LSTMs stay fp32 and the layers around them are int8 (an LSTM language model
        with a 33k-word vocabulary: 1.8x fp32 speed at batch 8, 0.9999 cosine, one thread;
        ``benchmarks/nlp.py``).
    input_normalization : (sequence of float, sequence of float), optional
        ``(mean, std)``, one value per channel (axis 1) of the first input: the quantized
        network takes raw inputs (pixel values, e.g. 0..255, as float32 NDArrays; uint8
        numpy calibration batches are converted) and computes ``net((x - mean) / std)``,
        the normalization folded into the first convolutions
        (:mod:`gluon_quant.graph.normalize`; exact in fp32). Calibrate on raw inputs too. ImageNet models trained on ``x / 255``
        normalized by ``m, s`` take ``mean=255 * m``, ``std=255 * s``.
    equalization : bool, default False
        Cross-layer equalization before calibration (:mod:`gluon_quant.weights.equalize`):
        an exact fp32 rescaling of consecutive convolution (or dense) layers joined by no
        activation or a ReLU that evens out their per-channel weight ranges, with high-bias
        absorption. Off by default: measured on GluonCV and EfficientNet nets with
        per-channel weights it does not reliably help (``benchmarks/weight_methods.py``).
    fp32_stem : bool, default True
        Keep fp32 an image stem (a convolution reading the network input with at most 4
        channels) whose output a depthwise convolution reads, and that depthwise
        convolution, where the two do at most 4% of the multiply-adds
        (:mod:`gluon_quant.graph.stem`): measured, they cost real-weight
        EfficientNet-Lite1 the most accuracy of any layers (logit cosine 0.9908 -> 0.9979
        with them fp32) for 2.8% of its multiply-adds. ``False`` quantizes them.
    weight_rounding : {'nearest', 'adaround'}, default 'nearest'
        ``'adaround'`` learns, layer by layer on up to 32 calibration samples, whether each
        int8 weight rounds down or up (:mod:`gluon_quant.weights.adaround`); the choices
        are stored in the calibration table. oneDNN only.

    Raises
    ------
    ConfigError
        A value has the wrong type or is refused by the backend (the message says what to
        pass instead); :class:`UnknownNameError` for unknown names.
    """

    calibrator: Any = "mse"
    dtype: QuantDtype = QuantDtype.AUTO
    backend: Backend = Backend.ONEDNN
    granularity: Optional[Granularity] = None
    exclude: Tuple[str, ...] = ()
    preset: Any = None
    bias_correction: bool = True
    num_calib_batches: Optional[int] = None
    input_fn: Optional[Callable] = None
    num_inputs: Optional[int] = None
    ctx: Any = None
    progress: bool = True
    int8_lstm: bool = False
    input_normalization: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
    equalization: bool = False
    weight_rounding: WeightRounding = WeightRounding.NEAREST
    fp32_stem: bool = True

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("dtype", QuantDtype.parse(self.dtype, "dtype"))
        set_("backend", Backend.parse(self.backend, "backend"))
        set_("weight_rounding", WeightRounding.parse(self.weight_rounding, "weight_rounding"))
        spec = get_spec(self.backend.value)
        set_("granularity", Granularity.parse(
            self.granularity if self.granularity is not None else spec.default_granularity,
            "granularity"))
        why = spec.refusal("dtype", self.dtype.value)
        if why:
            raise UnsupportedDtypeError("dtype=%r is not supported with backend=%r: %s"
                                        % (self.dtype.value, self.backend.value, why))
        why = spec.refusal("granularity", self.granularity.value)
        if why:
            raise ConfigError("granularity=%r is not supported with backend=%r: %s"
                              % (self.granularity.value, self.backend.value, why))
        exclude = self.exclude
        if exclude is None:
            exclude = ()
        elif isinstance(exclude, (str, Block)):
            exclude = (exclude,)
        elif isinstance(exclude, (list, tuple, set, frozenset)):
            exclude = tuple(exclude)
        else:
            raise ConfigError("exclude must be a list of layer names/patterns/operator "
                              "types or Gluon blocks, got %r." % (exclude,))
        # A block stands for its name (kept as text: the config stays JSON data).
        exclude = tuple(p.name if isinstance(p, Block) else p for p in exclude)
        for pattern in exclude:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(
                    "exclude entries must be non-empty strings (layer names, glob patterns "
                    "or operator types such as 'Convolution') or Gluon blocks of the net; "
                    "got %r." % (pattern,))
        set_("exclude", exclude)
        _check_calibrator(self.calibrator)
        _check_preset(self.preset)
        # The error classes say what the setting is about (data, inputs), as before the
        # config existed, so that callers catching them keep working.
        for name, error, none_means in (
                ("num_calib_batches", CalibrationDataError, "every batch"),
                ("num_inputs", InputMismatchError, "read from hybrid_forward's signature")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, numbers.Integral) or value < 1):
                raise error("%s must be a positive int, got %r (None: %s)."
                            % (name, value, none_means))
            set_(name, None if value is None else int(value))    # a NumPy integer, as int
        if self.input_fn is not None and not callable(self.input_fn):
            raise InputMismatchError("input_fn must be callable, got %r (input_fn(batch) "
                                     "returns the input(s) of one batch)." % (self.input_fn,))
        set_("input_normalization", _check_normalization(self.input_normalization))
        why = spec.refusal("weight_rounding", self.weight_rounding.value)
        if why:
            raise ConfigError("weight_rounding=%r is not supported with backend=%r: %s"
                              % (self.weight_rounding.value, self.backend.value, why))
        check_ctx(self.ctx)
        for name in ("bias_correction", "progress", "int8_lstm", "equalization", "fp32_stem"):
            if not isinstance(getattr(self, name), (bool, int)):
                raise ConfigError("%s must be True or False, got %r."
                                  % (name, getattr(self, name)))
            set_(name, bool(getattr(self, name)))

    @classmethod
    def fields(cls):
        """The names of every setting, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, config=None, *, net=None, recorded=None, **settings):
        """``config`` (or the defaults) with ``settings`` replaced, validated.

        This is how entry points turn ``config=`` and keyword arguments into one config.
        With ``net``, Gluon blocks of it in ``settings["exclude"]`` stand for their
        attribute paths in it (:func:`gluon_quant.graph.selection.block_paths`), which
        tell apart blocks that share a name. Without ``config``, ``recorded`` (a
        calibration table's ``meta['settings']``, :meth:`recorded_settings`) replaces the
        defaults of the fields it holds that ``settings`` does not: a table alone rebuilds
        the model it was built into.

        Raises
        ------
        ConfigError
            ``config`` is not a QuantConfig, or a keyword is not a setting (the message
            lists the valid ones).
        """
        if config is None:
            config = cls._from_record(recorded, settings)
        elif not isinstance(config, cls):
            raise ConfigError("config must be a gluon_quant.QuantConfig, got %s."
                              % type(config).__name__)
        if net is not None and "exclude" in settings:
            settings["exclude"] = block_paths(net, settings["exclude"])
        config = config.replace(**settings) if settings else config
        home = _home_context(net, config) if net is not None and config.ctx is None else None
        return config.replace(ctx=home) if home is not None else config

    #: Fields that decide which int8 model a calibration table is built into, recorded in
    #: the table's ``meta['settings']`` (the calibrator, data and progress settings do not).
    BUILD_FIELDS = ("dtype", "backend", "granularity", "exclude", "preset", "bias_correction",
                    "num_inputs", "int8_lstm", "input_normalization", "equalization",
                    "weight_rounding", "fp32_stem")

    def recorded_settings(self):
        """The JSON-safe values of :data:`BUILD_FIELDS`, as a table records them."""
        data = self.to_dict()
        return {name: data[name] for name in self.BUILD_FIELDS}

    @classmethod
    def _from_record(cls, recorded, settings):
        """The defaults with a table's recorded settings (those ``settings`` do not give)."""
        if not isinstance(recorded, dict):
            return cls()
        values = {name: value for name, value in recorded.items()
                  if name in cls.BUILD_FIELDS and name not in settings}
        try:
            return cls.from_dict(values)
        except GluonQuantError as err:
            raise CalibrationTableError(
                "The calibration table records settings this gluon_quant cannot apply (%s). "
                "Pass them to quantize() yourself (a Preset object for a custom preset the "
                "table names), or give config=." % (err,)) from err

    #: Fields that :meth:`to_dict` writes (the others are Python objects: ``input_fn``, ``ctx``).
    JSON_FIELDS = ("calibrator", "dtype", "backend", "granularity", "exclude", "preset",
                   "bias_correction", "num_calib_batches", "num_inputs", "progress",
                   "int8_lstm", "input_normalization", "equalization", "weight_rounding",
                   "fp32_stem")

    def to_dict(self):
        """The JSON-safe settings (:data:`JSON_FIELDS`); a calibrator or preset object is
        written by name (with a calibrator's options)."""
        calibrator = self.calibrator
        if not isinstance(calibrator, str):
            instance = calibrator if isinstance(calibrator, Calibrator) else calibrator()
            calibrator = {"method": instance.method_name, "options": instance.options()}
        preset = self.preset.name if isinstance(self.preset, Preset) else self.preset
        return {"calibrator": calibrator, "dtype": self.dtype.value,
                "backend": self.backend.value, "granularity": self.granularity.value,
                "exclude": list(self.exclude), "preset": preset,
                "bias_correction": self.bias_correction,
                "num_calib_batches": self.num_calib_batches, "num_inputs": self.num_inputs,
                "progress": self.progress, "int8_lstm": self.int8_lstm,
                "input_normalization": None if self.input_normalization is None else
                [list(part) for part in self.input_normalization],
                "equalization": self.equalization,
                "weight_rounding": self.weight_rounding.value,
                "fp32_stem": self.fp32_stem}

    @classmethod
    def from_dict(cls, data, **settings):
        """The config :meth:`to_dict` wrote, with ``settings`` replacing its fields.

        Raises
        ------
        ConfigError
            ``data`` is not a dict, or has keys that are not JSON settings.
        """
        if not isinstance(data, dict):
            raise ConfigError("A QuantConfig dict must be a JSON object of settings, got %s."
                              % type(data).__name__)
        unknown = sorted(set(data) - set(cls.JSON_FIELDS))
        if unknown:
            raise ConfigError("Unknown setting(s) %s in the config.%s Valid settings: %s."
                              % (", ".join(map(repr, unknown)),
                                 suggest(unknown[0], cls.JSON_FIELDS),
                                 ", ".join(cls.JSON_FIELDS)))
        values = dict(data)
        calibrator = values.get("calibrator")
        if isinstance(calibrator, dict):
            values["calibrator"] = get_calibrator(calibrator.get("method"),
                                                  **(calibrator.get("options") or {}))
        values.update(settings)
        return cls(**values)

    def replace(self, **changes):
        """A copy with ``changes`` applied and validated (``dataclasses.replace``).

        Raises
        ------
        ConfigError
            An unknown setting; the message lists the valid ones.
        """
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise ConfigError("Unknown setting(s) %s.%s Valid settings: %s."
                              % (", ".join(map(repr, unknown)),
                                 suggest(unknown[0], self.fields()),
                                 ", ".join(self.fields())))
        if "granularity" not in changes and "backend" in changes:
            changes["granularity"] = None   # the new backend's default
        return dataclasses.replace(self, **changes)


def _check_normalization(value):
    """``(mean, std)`` as two equal-length tuples of finite floats (std > 0), or None."""
    if value is None:
        return None
    how = ("Pass input_normalization=(mean, std) with one mean and one positive std per "
           "input channel, e.g. ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)).")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) \
            or len(value) != 2:
        raise ConfigError("input_normalization must be a (mean, std) pair, got %r. %s"
                          % (value, how))
    parts = []
    for what, part in zip(("mean", "std"), value):
        if isinstance(part, (int, float)) and not isinstance(part, bool):
            part = (part,)
        try:
            floats = tuple(float(v) for v in part)
        except (TypeError, ValueError):
            raise ConfigError("input_normalization's %s must be a sequence of numbers, got "
                              "%r. %s" % (what, part, how)) from None
        if not floats or not all(math.isfinite(v) for v in floats):
            raise ConfigError("input_normalization's %s must be finite numbers, got %r. %s"
                              % (what, part, how))
        parts.append(floats)
    if len(parts[0]) != len(parts[1]) or min(parts[1]) <= 0:
        raise ConfigError("input_normalization needs as many means as stds and every std "
                          "> 0, got mean=%r, std=%r. %s" % (parts[0], parts[1], how))
    return tuple(parts)


def _home_context(net, config):
    """Where ``net``'s parameters live, when that is a device of the backend's kind other
    than ``mx.cpu()`` (the default ``ctx``): a net on ``mx.gpu(0)`` for ``'cudnn'``, on
    ``mx.cpu(1)`` for ``'onednn'``. Calibration and the int8 net then stay where the net
    is, as Gluon users expect. None otherwise (a Module, a net with no parameters yet, a
    net on a device of another kind than the backend's)."""
    if not isinstance(net, Block):
        return None
    home = _mxnet.parameter_context(net)
    if (home is None or home.device_type != get_spec(config.backend.value).device_type
            or home == _mxnet.device("cpu")):
        return None
    return home


def check_ctx(ctx):
    """Refuse a ``ctx`` that is not an MXNet context, or a GPU this MXNet cannot use.

    Raises
    ------
    ConfigError
        Naming the context and what to use instead.
    """
    if ctx is None:
        return
    import mxnet as mx      # here: the config module itself does not need MXNet
    if not isinstance(ctx, mx.Context):
        raise ConfigError("ctx must be an mxnet.Context such as mx.cpu() or mx.gpu(0), got "
                          "%r." % (ctx,))
    if ctx.device_type == "gpu" and mx.context.num_gpus() <= ctx.device_id:
        raise ConfigError(
            "ctx=%s, but this MXNet sees %d GPU(s) (mxnet %s; the PyPI 'mxnet' package is the "
            "CPU/oneDNN build). Use ctx=mx.cpu(), or install a CUDA build of MXNet (such as "
            "mxnet-cu112) on a machine with a GPU." % (ctx, mx.context.num_gpus(),
                                                      mx.__version__))


def _check_calibrator(calibrator):
    if isinstance(calibrator, Calibrator):
        return
    get_calibrator(calibrator)   # raises UnknownNameError / ConfigError with the valid names


def _check_preset(preset):
    if preset is None or isinstance(preset, Preset):
        return
    if not isinstance(preset, str):
        raise ConfigError("preset must be a preset name, a Preset or None, got %r."
                          % (preset,))
    get_preset(preset)
