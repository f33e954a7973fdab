"""A seeded generator of random, valid Gluon nets, written the way Gluon users write them.

``generate(seed)`` returns a :class:`FuzzCase`: an initialized net (a ``HybridBlock``
subclass whose ``hybrid_forward(self, F, x)`` calls ``F.*``, around ``HybridSequential``
stacks of the blocks below), the layer kinds it uses, and realistic calibration and
held-out batches for its input kind. Same seed, same net, same weights, same data.

Input kinds (``INPUT_KINDS``, picked by ``seed % 7`` so any run of 7 seeds has each once):

``image``     (N, 3, 32, 32) crops of the offline sample photos, ImageNet-normalised
``residual``  the same images through a ResNet-style stem and residual blocks
``signal``    (N, C, L) audio-like waveforms (harmonics, envelope, noise)
``video``     (N, 3, 4, 16, 16) clips panning across a photo
``sequence``  (N, T, C) standardised multichannel sensor series
``tokens``    (N, T) Zipf-distributed token ids with padding, into an ``Embedding``
``tabular``   (N, F) standardised mixed columns (Gaussian, heavy-tailed, binary, counts)

Weights are Xavier; biases, BatchNorm/LayerNorm affine parameters and PReLU slopes are
then drawn at random around their initial values, as in a trained net (with zero biases
every ReLU is exactly half on, which hides range-asymmetry bugs). BatchNorm running
statistics are set from the calibration data (MXNet 1.9.1 does not update them in
forward passes).
"""
import math
from dataclasses import dataclass
from typing import List, Tuple

import mxnet as mx
import numpy as np
from mxnet.gluon import nn, rnn

from gluon_quant.zoo.gluoncv import sample_batches, set_batchnorm_statistics

__all__ = ["INPUT_KINDS", "LAYER_KINDS", "FuzzCase", "FuzzNet", "generate"]

INPUT_KINDS = ("image", "residual", "signal", "video", "sequence", "tokens", "tabular")
ACT_TYPES = ("relu", "sigmoid", "tanh", "softrelu", "softsign")
#: Every layer kind a generated net can contain (the tags of ``FuzzCase.layer_kinds``).
LAYER_KINDS = (
    "conv1d", "conv2d", "conv3d", "conv2d_transpose", "depthwise_conv",
    "dense_flatten", "dense_no_flatten", "batchnorm", "layernorm", "instancenorm", "dropout",
    *ACT_TYPES, "leaky_relu", "prelu", "elu", "selu", "gelu", "swish", "hard_swish",
    "hard_sigmoid", "F.relu", "F.sigmoid", "F.tanh",
    "maxpool1d", "maxpool2d", "maxpool3d", "avgpool1d", "avgpool2d", "avgpool3d",
    "global_pool", "concat", "add", "mul", "broadcast_mul", "broadcast_add",
    "reshape", "transpose", "slice_axis", "embedding", "lstm", "gru", "rnn",
    "batch_dot", "softmax")

BATCH = 8
CALIB_BATCHES = 4
HELD_OUT_BATCHES = 2
CLASSES = 10

_CONV = {1: nn.Conv1D, 2: nn.Conv2D, 3: nn.Conv3D}
_MAXPOOL = {1: nn.MaxPool1D, 2: nn.MaxPool2D, 3: nn.MaxPool3D}
_AVGPOOL = {1: nn.AvgPool1D, 2: nn.AvgPool2D, 3: nn.AvgPool3D}
_GLOBAL_AVG = {1: nn.GlobalAvgPool1D, 2: nn.GlobalAvgPool2D, 3: nn.GlobalAvgPool3D}
_GLOBAL_MAX = {1: nn.GlobalMaxPool1D, 2: nn.GlobalMaxPool2D, 3: nn.GlobalMaxPool3D}


# ----------------------------------------------------------------- user-style blocks
class HardSwish(nn.HybridBlock):
    """MobileNetV3's hard-swish, as users write it."""

    def hybrid_forward(self, F, x):
        return x * F.clip(x + 3, 0, 6) / 6


class ResidualBlock(nn.HybridBlock):
    """``relu(body(x) + shortcut(x))``; the shortcut is the identity when None."""

    def __init__(self, body, shortcut=None, relu=True, **kwargs):
        super().__init__(**kwargs)
        self.body = body
        self.shortcut = shortcut
        self._relu = relu

    def hybrid_forward(self, F, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        out = self.body(x) + skip
        return F.relu(out) if self._relu else out


class SqueezeExcite(nn.HybridBlock):
    """Channel attention: global pool, two small layers, a sigmoid gate, broadcast_mul."""

    def __init__(self, channels, dims, reduction=4, dense=True, hard=False, **kwargs):
        super().__init__(**kwargs)
        self._dense, self._hard, self._dims = dense, hard, dims
        squeezed = max(2, channels // reduction)
        with self.name_scope():
            self.pool = _GLOBAL_AVG[dims]()
            if dense:
                self.fc1 = nn.Dense(squeezed, activation="relu")
                self.fc2 = nn.Dense(channels)
            else:
                self.fc1 = _CONV[dims](squeezed, 1, activation="relu")
                self.fc2 = _CONV[dims](channels, 1)

    def hybrid_forward(self, F, x):
        w = self.fc2(self.fc1(self.pool(x)))
        w = F.clip(w + 3, 0, 6) / 6 if self._hard else F.sigmoid(w)
        if self._dense:
            w = w.reshape((0, 0) + (1,) * self._dims)
        return F.broadcast_mul(x, w)


class ContextBias(nn.HybridBlock):
    """GCNet-style global context: a per-channel bias from the pooled input, broadcast_add."""

    def __init__(self, channels, dims, **kwargs):
        super().__init__(**kwargs)
        self._dims = dims
        with self.name_scope():
            self.pool = _GLOBAL_AVG[dims]()
            self.fc = nn.Dense(channels)

    def hybrid_forward(self, F, x):
        bias = self.fc(self.pool(x)).reshape((0, 0) + (1,) * self._dims)
        return F.broadcast_add(x, bias)


class GatedConv(nn.HybridBlock):
    """WaveNet's gated activation: ``tanh(filter(x)) * sigmoid(gate(x))``."""

    def __init__(self, channels, dims, kernel=3, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.filter = _CONV[dims](channels, kernel, padding=kernel // 2)
            self.gate = _CONV[dims](channels, kernel, padding=kernel // 2)

    def hybrid_forward(self, F, x):
        return F.tanh(self.filter(x)) * F.sigmoid(self.gate(x))


class Branches(nn.HybridBlock):
    """Inception-style parallel branches, concatenated along ``dim``."""

    def __init__(self, branches, dim=1, **kwargs):
        super().__init__(**kwargs)
        self._count, self._dim = len(branches), dim
        for i, branch in enumerate(branches):
            setattr(self, "branch%d" % i, branch)

    def hybrid_forward(self, F, x):
        outs = [getattr(self, "branch%d" % i)(x) for i in range(self._count)]
        return F.concat(*outs, dim=self._dim)


class ShuffleUnit(nn.HybridBlock):
    """ShuffleNetV2's unit: split channels with slice_axis, convolve one half, concat,
    then shuffle the channels with reshape / transpose / reshape."""

    def __init__(self, channels, dims, branch, groups=2, **kwargs):
        super().__init__(**kwargs)
        self._half, self._groups, self._dims = channels // 2, groups, dims
        self.branch = branch

    def hybrid_forward(self, F, x):
        left = F.slice_axis(x, axis=1, begin=0, end=self._half)
        right = F.slice_axis(x, axis=1, begin=self._half, end=None)
        out = F.concat(left, self.branch(right), dim=1)
        out = out.reshape((0, -4, self._groups, -1, -2))
        out = F.transpose(out, axes=(0, 2, 1) + tuple(range(3, 3 + self._dims)))
        return out.reshape((0, -3, -2))


class UNetLevel(nn.HybridBlock):
    """One U-Net level: encode, pool, inner levels, upsample with Conv2DTranspose, concat
    with the skip connection, fuse."""

    def __init__(self, encode, inner, up, fuse, **kwargs):
        super().__init__(**kwargs)
        self.encode, self.inner, self.up, self.fuse = encode, inner, up, fuse
        with self.name_scope():
            self.pool = nn.MaxPool2D(2)

    def hybrid_forward(self, F, x):
        skip = self.encode(x)
        y = self.up(self.inner(self.pool(skip)))
        return self.fuse(F.concat(y, skip, dim=1))


class ChannelsLastDense(nn.HybridBlock):
    """A per-position classifier: channels moved last, then ``Dense(flatten=False)``."""

    def __init__(self, units, dims, **kwargs):
        super().__init__(**kwargs)
        self._axes = (0,) + tuple(range(2, 2 + dims)) + (1,)
        with self.name_scope():
            self.dense = nn.Dense(units, flatten=False)

    def hybrid_forward(self, F, x):
        return self.dense(F.transpose(x, axes=self._axes))


class PositionalEmbedding(nn.HybridBlock):
    """A learned position embedding added to (N, T, C) inputs."""

    def __init__(self, length, units, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(1, length, units),
                                          init=mx.init.Normal(0.1))

    def hybrid_forward(self, F, x, weight):
        return F.broadcast_add(x, weight)


class SelfAttention(nn.HybridBlock):
    """Multi-head self-attention on (N, T, C) with a residual connection and LayerNorm."""

    def __init__(self, units, heads=1, **kwargs):
        super().__init__(**kwargs)
        self._heads, self._scale = heads, 1.0 / math.sqrt(units // heads)
        with self.name_scope():
            self.query = nn.Dense(units, flatten=False)
            self.key = nn.Dense(units, flatten=False)
            self.value = nn.Dense(units, flatten=False)
            self.proj = nn.Dense(units, flatten=False)
            self.norm = nn.LayerNorm()

    def _split(self, F, x):           # (N, T, C) -> (N * heads, T, C / heads)
        x = x.reshape((0, 0, -4, self._heads, -1))
        return F.transpose(x, axes=(0, 2, 1, 3)).reshape((-3, 0, 0))

    def hybrid_forward(self, F, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self._heads > 1:
            q, k, v = self._split(F, q), self._split(F, k), self._split(F, v)
        att = F.softmax(F.batch_dot(q, k, transpose_b=True) * self._scale, axis=-1)
        out = F.batch_dot(att, v)
        if self._heads > 1:
            out = out.reshape((-4, -1, self._heads, 0, 0))
            out = F.transpose(out, axes=(0, 2, 1, 3)).reshape((0, 0, -3))
        return self.norm(x + self.proj(out))


class FeedForward(nn.HybridBlock):
    """A transformer's position-wise feed-forward layer with a residual connection."""

    def __init__(self, units, hidden, act, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.fc1 = nn.Dense(hidden, flatten=False)
            self.act = act
            self.fc2 = nn.Dense(units, flatten=False)

    def hybrid_forward(self, F, x):
        return x + self.fc2(self.act(self.fc1(x)))


class GatedDense(nn.HybridBlock):
    """A gated linear unit: ``a(x) * sigmoid(b(x))``."""

    def __init__(self, units, flatten, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Dense(units, flatten=flatten)
            self.b = nn.Dense(units, flatten=flatten)

    def hybrid_forward(self, F, x):
        return self.a(x) * F.sigmoid(self.b(x))


class TemporalConv(nn.HybridBlock):
    """A Conv1D stack over time on (N, T, C): transpose to (N, C, T) and back."""

    def __init__(self, body, **kwargs):
        super().__init__(**kwargs)
        self.body = body

    def hybrid_forward(self, F, x):
        y = self.body(F.transpose(x, axes=(0, 2, 1)))
        return F.transpose(y, axes=(0, 2, 1))


class LastStep(nn.HybridBlock):
    """The last time step of (N, T, C), flattened to (N, C)."""

    def hybrid_forward(self, F, x):
        return F.slice_axis(x, axis=1, begin=-1, end=None).reshape((0, -1))


class MeanOverTime(nn.HybridBlock):
    """The mean over time of (N, T, C)."""

    def hybrid_forward(self, F, x):
        return F.mean(x, axis=1)


class FuzzNet(nn.HybridBlock):
    """The generated net: ``output(features(x))``, an optional softmax, and optionally the
    features as a second output. ``features`` and ``output`` are set after construction,
    inside the net's name scope."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.softmax_axis, self.return_features = None, False

    def hybrid_forward(self, F, x):
        feat = self.features(x)
        out = self.output(feat)
        if self.softmax_axis is not None:
            out = F.softmax(out, axis=self.softmax_axis)
        return (out, feat) if self.return_features else out


# ------------------------------------------------------------------------ generator
@dataclass
class FuzzCase:
    """One generated net with its data."""

    seed: int
    kind: str
    net: nn.HybridBlock
    layer_kinds: Tuple[str, ...]
    calib: List[np.ndarray]
    held_out: List[np.ndarray]

    @property
    def input_shape(self):
        return self.calib[0].shape


def _conv_out(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


class _Builder:
    """Picks layers at random while tracking the shape (batch axis excluded)."""

    def __init__(self, rng):
        self.rng = rng
        self.kinds = set()

    # ------------------------------------------------------------------ small pieces
    def pick(self, options):
        """One key of ``options`` ({key: weight}) at random."""
        keys = list(options)
        weights = np.array([options[k] for k in keys], dtype=np.float64)
        return keys[self.rng.choice(len(keys), p=weights / weights.sum())]

    def width(self, low=8, high=32):
        return int(self.rng.choice([c for c in (8, 12, 16, 24, 32) if low <= c <= high]))

    def act(self, relu_weight=3.0):
        tag = self.pick({"relu": relu_weight, "sigmoid": .5, "tanh": .5, "softrelu": .5,
                         "softsign": .5, "leaky_relu": .5, "prelu": .5, "elu": .5,
                         "selu": .5, "gelu": .5, "swish": .5, "hard_swish": .5})
        self.kinds.add(tag)
        if tag in ACT_TYPES:
            return nn.Activation(tag)
        return {"leaky_relu": lambda: nn.LeakyReLU(0.1), "prelu": nn.PReLU, "elu": nn.ELU,
                "selu": nn.SELU, "gelu": nn.GELU, "swish": nn.Swish,
                "hard_swish": HardSwish}[tag]()

    def norm(self, allow_none=True):
        """A normalisation over axis 1 (channels), or None."""
        tag = self.pick({"batchnorm": 6, "instancenorm": .8, "layernorm": .7,
                         None: 2.5 if allow_none else 0})
        if tag is None:
            return None
        self.kinds.add(tag)
        return {"batchnorm": nn.BatchNorm, "instancenorm": nn.InstanceNorm,
                "layernorm": lambda: nn.LayerNorm(axis=1)}[tag]()

    def dropout(self):
        self.kinds.add("dropout")
        return nn.Dropout(float(self.rng.choice([0.1, 0.25, 0.5])))

    def conv_unit(self, dims, shape, channels, kernel=3, stride=1, groups=1, act=True,
                  norm=True):
        """Conv (+ norm) (+ activation) as a HybridSequential; returns (block, shape)."""
        _, size = shape
        kernels = tuple(1 if (kernel > 1 and s < 3) else kernel for s in size)
        strides = tuple(stride if s >= 8 else 1 for s in size)
        pads = tuple(k // 2 for k in kernels)
        self.kinds.add("depthwise_conv" if groups > 1 else "conv%dd" % dims)
        seq = nn.HybridSequential()
        seq.add(_CONV[dims](channels, kernels, strides=strides, padding=pads, groups=groups,
                            use_bias=not norm))
        if norm:
            layer = self.norm()
            if layer is not None:
                seq.add(layer)
        if act:
            seq.add(self.act())
        new_size = tuple(_conv_out(s, k, st, p) for s, k, st, p in
                         zip(size, kernels, strides, pads))
        return seq, (channels, new_size)

    def pool(self, dims, shape, kind=None):
        channels, size = shape
        kind = kind or self.pick({"max": 1, "avg": 1})
        self.kinds.add("%spool%dd" % (kind, dims))
        pools = tuple(2 if s >= 4 else 1 for s in size)
        layer = (_MAXPOOL if kind == "max" else _AVGPOOL)[dims](pools)
        return layer, (channels, tuple(s // p for s, p in zip(size, pools)))

    # ---------------------------------------------------------- spatial (N, C, *S)
    def spatial_block(self, dims, shape):
        """One random block for channels-first data; returns (block, shape)."""
        channels, size = shape
        options = {"conv": 4, "se": 1, "context": .6, "residual": 1.5, "branches": 1,
                   "gated": .7, "dropout": .4}
        if min(size) >= 4:
            options["pool"] = 1.5
        if dims in (1, 2):
            options["depthwise"] = 1.2
        if channels % 2 == 0 and channels >= 8:
            options["shuffle"] = .7
        if dims == 2 and max(size) <= 16:
            options["upsample"] = .6
        if dims == 2 and min(size) >= 8 and size[0] % 2 == 0 and size[1] % 2 == 0:
            options["unet"] = .6
        choice = self.pick(options)
        return getattr(self, "_spatial_" + choice)(dims, shape)

    def _spatial_conv(self, dims, shape):
        kernel = int(self.rng.choice([1, 3, 3, 5] if dims == 1 else [1, 3, 3]))
        stride = 2 if self.rng.rand() < 0.25 else 1
        return self.conv_unit(dims, shape, self.width(), kernel, stride)

    def _spatial_pool(self, dims, shape):
        return self.pool(dims, shape)

    def _spatial_dropout(self, dims, shape):
        return self.dropout(), shape

    def _spatial_depthwise(self, dims, shape):
        channels, _ = shape
        seq = nn.HybridSequential()
        dw, shape = self.conv_unit(dims, shape, channels, 3, int(self.rng.choice([1, 2])),
                                   groups=channels)
        pw, shape = self.conv_unit(dims, shape, self.width(), 1, act=False)
        seq.add(dw, pw)
        return seq, shape

    def _spatial_se(self, dims, shape):
        dense, hard = self.rng.rand() < 0.6, self.rng.rand() < 0.3
        self.kinds.update({"global_pool", "broadcast_mul",
                           "hard_sigmoid" if hard else "F.sigmoid"})
        self.kinds.update({"dense_flatten", "reshape"} if dense else {"conv%dd" % dims})
        return SqueezeExcite(shape[0], dims, dense=dense, hard=hard), shape

    def _spatial_context(self, dims, shape):
        self.kinds.update({"global_pool", "dense_flatten", "reshape", "broadcast_add"})
        return ContextBias(shape[0], dims), shape

    def _spatial_gated(self, dims, shape):
        self.kinds.update({"conv%dd" % dims, "F.tanh", "F.sigmoid", "mul"})
        channels = self.width()
        return GatedConv(channels, dims), (channels, shape[1])

    def _spatial_residual(self, dims, shape):
        channels = self.width() if self.rng.rand() < 0.4 else shape[0]
        stride = 2 if self.rng.rand() < 0.3 else 1
        body = nn.HybridSequential()
        first, out_shape = self.conv_unit(dims, shape, channels, 3, stride)
        second, out_shape = self.conv_unit(dims, out_shape, channels, 3, act=False)
        body.add(first, second)
        shortcut = None
        if out_shape != shape:
            shortcut, _ = self.conv_unit(dims, shape, channels, 1, stride, act=False)
        relu = self.rng.rand() < 0.85
        self.kinds.update({"add", "F.relu"} if relu else {"add"})
        return ResidualBlock(body, shortcut, relu=relu), out_shape

    def _spatial_branches(self, dims, shape):
        branches, total = [], 0
        for _ in range(int(self.rng.choice([2, 3]))):
            channels = self.width(8, 16)
            seq = nn.HybridSequential()
            if self.rng.rand() < 0.3:
                kind = self.pick({"max": 1, "avg": 1})
                self.kinds.add("%spool%dd" % (kind, dims))
                seq.add((_MAXPOOL if kind == "max" else _AVGPOOL)[dims](3, 1, 1))
                unit, _ = self.conv_unit(dims, shape, channels, 1)
            else:
                unit, _ = self.conv_unit(dims, shape, channels, int(self.rng.choice([1, 3])))
            seq.add(unit)
            branches.append(seq)
            total += channels
        self.kinds.add("concat")
        return Branches(branches), (total, shape[1])

    def _spatial_shuffle(self, dims, shape):
        channels, size = shape
        half = channels // 2
        branch = nn.HybridSequential()
        first, _ = self.conv_unit(dims, (half, size), half, 1)
        second, _ = self.conv_unit(dims, (half, size), half, 3, groups=half, act=False)
        branch.add(first, second)
        self.kinds.update({"slice_axis", "concat", "reshape", "transpose"})
        return ShuffleUnit(channels, dims, branch), shape

    def _spatial_upsample(self, dims, shape):
        channels = self.width()
        kernel, pad = (4, 1) if self.rng.rand() < 0.5 else (2, 0)
        seq = nn.HybridSequential()
        seq.add(nn.Conv2DTranspose(channels, kernel, strides=2, padding=pad, use_bias=False))
        layer = self.norm()
        if layer is not None:
            seq.add(layer)
        seq.add(self.act())
        self.kinds.add("conv2d_transpose")
        size = tuple((s - 1) * 2 - 2 * pad + kernel for s in shape[1])
        return seq, (channels, size)

    def _spatial_unet(self, dims, shape):
        channels = self.width(8, 16)
        encode, enc_shape = self.conv_unit(dims, shape, channels, 3)
        inner, inner_shape = self.conv_unit(dims, (channels, tuple(s // 2 for s in shape[1])),
                                            channels * 2, 3)
        up = nn.HybridSequential()
        up.add(nn.Conv2DTranspose(channels, 2, strides=2, use_bias=False), self.act())
        fuse, out_shape = self.conv_unit(dims, (2 * channels, enc_shape[1]), channels, 3)
        self.kinds.update({"maxpool2d", "conv2d_transpose", "concat"})
        return UNetLevel(encode, inner, up, fuse), out_shape

    def spatial_head(self, dims, shape):
        """A classifier (or a dense-prediction) head; returns (block, softmax axis)."""
        channels, size = shape
        options = {"pool_dense": 5, "dense_direct": 1, "pointwise": .7}
        if channels * int(np.prod(size)) <= 4096:
            options["flatten_mlp"] = 1.5
        if dims == 2:
            options["segment"] = 1
        choice = self.pick(options)
        softmax = self.rng.rand() < 0.3
        head = nn.HybridSequential()
        axis = -1
        if choice == "pool_dense":
            self.kinds.update({"global_pool", "dense_flatten"})
            head.add((_GLOBAL_AVG if self.rng.rand() < 0.7 else _GLOBAL_MAX)[dims]())
            if self.rng.rand() < 0.3:
                head.add(self.dropout())
            head.add(nn.Dense(CLASSES))
        elif choice == "dense_direct":
            self.kinds.add("dense_flatten")
            head.add(nn.Dense(CLASSES))
        elif choice == "flatten_mlp":
            self.kinds.add("dense_flatten")
            head.add(nn.Flatten(), nn.Dense(self.width(16, 32)), self.act(), nn.Dense(CLASSES))
        elif choice == "pointwise":
            self.kinds.update({"transpose", "dense_no_flatten"})
            head.add(ChannelsLastDense(CLASSES, dims))
        else:
            self.kinds.add("conv2d")
            head.add(nn.Conv2D(CLASSES, 1))
            axis = 1
        if softmax:
            self.kinds.add("softmax")
        return head, (axis if softmax else None)

    # ---------------------------------------------------------- sequence (N, T, C)
    def sequence_block(self, shape):
        options = {"dense": 2, "layernorm": .8, "rnn": 2.5, "attention": 1.5, "tconv": 1.5,
                   "ffn": 1, "glu": .7, "dropout": .4}
        return getattr(self, "_seq_" + self.pick(options))(shape)

    def _seq_dense(self, shape):
        units = self.width()
        self.kinds.add("dense_no_flatten")
        seq = nn.HybridSequential()
        seq.add(nn.Dense(units, flatten=False), self.act())
        return seq, (shape[0], units)

    def _seq_layernorm(self, shape):
        self.kinds.add("layernorm")
        return nn.LayerNorm(), shape

    def _seq_dropout(self, shape):
        return self.dropout(), shape

    def _seq_rnn(self, shape):
        kind = self.pick({"lstm": 1.5, "gru": 1, "rnn": 1})
        hidden = self.width(8, 24)
        layers = int(self.rng.choice([1, 1, 2]))
        bidirectional = self.rng.rand() < 0.3
        self.kinds.add(kind)
        if kind == "lstm":
            layer = rnn.LSTM(hidden, layers, layout="NTC", bidirectional=bidirectional)
        elif kind == "gru":
            layer = rnn.GRU(hidden, layers, layout="NTC", bidirectional=bidirectional)
        else:
            layer = rnn.RNN(hidden, layers, activation=self.pick({"tanh": 1, "relu": 1}),
                            layout="NTC", bidirectional=bidirectional)
        return layer, (shape[0], hidden * (2 if bidirectional else 1))

    def _seq_attention(self, shape):
        steps, units = shape
        seq = nn.HybridSequential()
        if units % 2:
            units = self.width(8, 16)
            seq.add(nn.Dense(units, flatten=False))
        heads = int(self.rng.choice([1, 2, 4] if units % 4 == 0 else [1, 2]))
        self.kinds.update({"dense_no_flatten", "batch_dot", "softmax", "add", "layernorm"})
        if heads > 1:
            self.kinds.update({"reshape", "transpose"})
        seq.add(SelfAttention(units, heads))
        return seq, (steps, units)

    def _seq_tconv(self, shape):
        steps, _ = shape
        body, (channels, (steps,)) = self.conv_unit(1, (shape[1], (steps,)), self.width(),
                                                    int(self.rng.choice([3, 5])))
        if steps >= 8 and self.rng.rand() < 0.4:
            layer, (channels, (steps,)) = self.pool(1, (channels, (steps,)))
            body.add(layer)
        self.kinds.add("transpose")
        return TemporalConv(body), (steps, channels)

    def _seq_ffn(self, shape):
        self.kinds.update({"dense_no_flatten", "add"})
        return FeedForward(shape[1], 2 * shape[1], self.act(relu_weight=1)), shape

    def _seq_glu(self, shape):
        units = self.width()
        self.kinds.update({"dense_no_flatten", "mul", "F.sigmoid"})
        return GatedDense(units, flatten=False), (shape[0], units)

    def sequence_head(self, shape):
        choice = self.pick({"last": 2, "mean": 1.5, "maxpool": 1, "flatten": 1, "tagger": 1})
        head = nn.HybridSequential()
        axis = -1
        if choice == "last":
            self.kinds.update({"slice_axis", "reshape"})
            head.add(LastStep())
        elif choice == "mean":
            head.add(MeanOverTime())
        elif choice == "maxpool":
            self.kinds.update({"transpose", "global_pool"})
            head.add(TemporalConv(nn.GlobalMaxPool1D()), nn.Flatten())
        if choice == "tagger":
            self.kinds.add("dense_no_flatten")
            head.add(nn.Dense(CLASSES, flatten=False))
        else:
            self.kinds.add("dense_flatten")
            head.add(nn.Dense(CLASSES))
        softmax = self.rng.rand() < 0.3
        if softmax:
            self.kinds.add("softmax")
        return head, (axis if softmax else None)

    # ---------------------------------------------------------------- tabular (N, F)
    def tabular_block(self, features):
        choice = self.pick({"dense": 4, "residual": 1.5, "glu": 1, "towers": .8,
                            "layernorm": .5, "dropout": .5})
        if choice == "dense":
            units = self.width(8, 32)
            seq = nn.HybridSequential()
            seq.add(nn.Dense(units, use_bias=self.rng.rand() < 0.5))
            layer = self.norm()
            if layer is not None:
                seq.add(layer)
            seq.add(self.act())
            self.kinds.add("dense_flatten")
            return seq, units
        if choice == "residual":
            body = nn.HybridSequential()
            body.add(nn.Dense(features), nn.BatchNorm(), self.act(), nn.Dense(features))
            relu = self.rng.rand() < 0.7
            self.kinds.update({"dense_flatten", "batchnorm", "add"} | ({"F.relu"} if relu
                                                                       else set()))
            return ResidualBlock(body, relu=relu), features
        if choice == "glu":
            units = self.width()
            self.kinds.update({"dense_flatten", "mul", "F.sigmoid"})
            return GatedDense(units, flatten=True), units
        if choice == "towers" and features >= 4:
            half = features // 2
            towers, total = [], 0
            for begin, end in ((0, half), (half, features)):
                units = self.width(8, 16)
                tower = nn.HybridSequential()
                tower.add(_Slice(begin, end), nn.Dense(units), self.act())
                towers.append(tower)
                total += units
            self.kinds.update({"slice_axis", "concat", "dense_flatten"})
            return Branches(towers), total
        if choice == "layernorm":
            self.kinds.add("layernorm")
            return nn.LayerNorm(), features
        return self.dropout(), features


class _Slice(nn.HybridBlock):
    """Columns ``begin:end`` of (N, F) (a wide-and-deep tower's share of the features)."""

    def __init__(self, begin, end, **kwargs):
        super().__init__(**kwargs)
        self._begin, self._end = begin, end

    def hybrid_forward(self, F, x):
        return F.slice_axis(x, axis=1, begin=self._begin, end=self._end)


# ------------------------------------------------------------------------- data
def _split(data):
    """``CALIB_BATCHES`` then ``HELD_OUT_BATCHES`` batches of ``BATCH`` rows."""
    batches = [data[i:i + BATCH] for i in range(0, len(data), BATCH)]
    return batches[:CALIB_BATCHES], batches[CALIB_BATCHES:CALIB_BATCHES + HELD_OUT_BATCHES]


def _total():
    return BATCH * (CALIB_BATCHES + HELD_OUT_BATCHES)


def image_data(seed, size=32):
    """Crops of the sample photos, ImageNet-normalised, (N, 3, size, size)."""
    return np.concatenate(sample_batches(CALIB_BATCHES + HELD_OUT_BATCHES, BATCH, size=size,
                                         seed=seed))


def video_data(seed, frames=4, size=16, step=2):
    """Clips panning across a photo: (N, 3, frames, size, size)."""
    big = image_data(seed, size + step * (frames - 1))
    clip = [big[:, :, t * step:t * step + size, t * step:t * step + size]
            for t in range(frames)]
    return np.ascontiguousarray(np.stack(clip, axis=2))


def audio_data(rng, channels, length):
    """Audio-like waveforms in [-1, 1]: harmonics of a random pitch under an envelope."""
    n = _total()
    t = np.arange(length) / 8000.0
    f0 = rng.uniform(80, 600, size=(n, channels, 1))
    wave = np.zeros((n, channels, length))
    for h in range(1, 5):
        wave += rng.uniform(0.2, 1.0, size=(n, channels, 1)) / h * np.sin(
            2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi, size=(n, channels, 1)))
    envelope = np.exp(-t / rng.uniform(0.005, 0.05, size=(n, 1, 1)))
    wave = wave * envelope + rng.normal(0, 0.02, size=wave.shape)
    return (0.9 * wave / np.abs(wave).max(axis=(1, 2), keepdims=True)).astype(np.float32)


def sensor_data(rng, steps, channels):
    """Multichannel sensor series (AR(1) drift + seasonality + noise), standardised with
    statistics of the calibration part, as a user's scaler would."""
    n = _total()
    phi = rng.uniform(0.5, 0.98, size=channels)
    offset = rng.normal(0, 5, size=channels)
    scale = np.exp(rng.normal(0, 1, size=channels))
    x = np.zeros((n, steps, channels))
    state = rng.normal(0, 1, size=(n, channels))
    period = rng.uniform(4, 16, size=channels)
    for t in range(steps):
        state = phi * state + rng.normal(0, 1, size=(n, channels)) * np.sqrt(1 - phi ** 2)
        x[:, t] = offset + scale * (state + 0.5 * np.sin(2 * np.pi * t / period))
    calib = x[:BATCH * CALIB_BATCHES]
    return ((x - calib.mean(axis=(0, 1))) / calib.std(axis=(0, 1))).astype(np.float32)


def token_data(rng, steps, vocab):
    """Zipf-distributed token ids in [1, vocab) with trailing padding (id 0)."""
    n = _total()
    ids = (rng.zipf(1.3, size=(n, steps)) - 1) % (vocab - 1) + 1
    lengths = rng.randint(steps // 2, steps + 1, size=n)
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.float32)


def tabular_data(rng, features):
    """Mixed columns (Gaussian, log-normal, binary, Poisson counts, uniform), standardised
    with the calibration part's statistics except binary columns."""
    n = _total()
    cols = []
    kinds = rng.choice(["gauss", "lognormal", "binary", "count", "uniform"], size=features)
    for kind in kinds:
        if kind == "gauss":
            cols.append(rng.normal(rng.normal(0, 3), np.exp(rng.normal()), size=n))
        elif kind == "lognormal":
            cols.append(rng.lognormal(0, 1.2, size=n))
        elif kind == "binary":
            cols.append((rng.rand(n) < rng.uniform(0.1, 0.9)).astype(np.float64))
        elif kind == "count":
            cols.append(rng.poisson(rng.uniform(0.5, 20), size=n).astype(np.float64))
        else:
            cols.append(rng.uniform(-10, 10, size=n))
    x = np.stack(cols, axis=1)
    calib = x[:BATCH * CALIB_BATCHES]
    mean, std = calib.mean(axis=0), calib.std(axis=0) + 1e-6
    scaled = (x - mean) / std
    binary = kinds == "binary"
    scaled[:, binary] = x[:, binary]
    return scaled.astype(np.float32)


# ------------------------------------------------------------------------ nets
def _spatial_net(b, dims, shape, depth, stem=None):
    features = nn.HybridSequential()
    if stem is not None:
        for layer in stem:
            features.add(layer)
    for _ in range(depth):
        block, shape = b.spatial_block(dims, shape)
        features.add(block)
    head, softmax = b.spatial_head(dims, shape)
    return features, head, softmax


def _build_image(b, rng, seed):
    data = image_data(seed)
    first, shape = b.conv_unit(2, (3, (32, 32)), b.width(8, 16), 3, 2)
    features, head, softmax = _spatial_net(b, 2, shape, int(rng.randint(2, 6)), [first])
    return features, head, softmax, data


def _build_residual(b, rng, seed):
    data = image_data(seed)
    channels = b.width(8, 16)
    stem, shape = b.conv_unit(2, (3, (32, 32)), channels, 3)
    layers = [stem]
    if rng.rand() < 0.6:
        pool, shape = b.pool(2, shape, "max")
        layers.append(pool)
    features = nn.HybridSequential()
    features.add(*layers)
    for _ in range(int(rng.randint(2, 5))):
        if rng.rand() < 0.75:
            block, shape = b._spatial_residual(2, shape)
        else:
            block, shape = b.spatial_block(2, shape)
        features.add(block)
    head, softmax = b.spatial_head(2, shape)
    return features, head, softmax, data


def _build_signal(b, rng, seed):
    channels, length = int(rng.choice([1, 2])), int(rng.choice([128, 256]))
    data = audio_data(rng, channels, length)
    first, shape = b.conv_unit(1, (channels, (length,)), b.width(8, 16), 7, 2)
    features, head, softmax = _spatial_net(b, 1, shape, int(rng.randint(2, 6)), [first])
    return features, head, softmax, data


def _build_video(b, rng, seed):
    data = video_data(seed)
    first, shape = b.conv_unit(3, (3, (4, 16, 16)), 8, 3)
    features, head, softmax = _spatial_net(b, 3, shape, int(rng.randint(1, 4)), [first])
    return features, head, softmax, data


def _sequence_body(b, rng, shape, features):
    for _ in range(int(rng.randint(1, 4))):
        block, shape = b.sequence_block(shape)
        features.add(block)
    head, softmax = b.sequence_head(shape)
    return features, head, softmax


def _build_sequence(b, rng, seed):
    steps, channels = int(rng.choice([8, 12, 16])), int(rng.choice([4, 8, 16]))
    data = sensor_data(rng, steps, channels)
    features = nn.HybridSequential()
    if rng.rand() < 0.3:
        features.add(PositionalEmbedding(steps, channels))
        b.kinds.add("broadcast_add")
    return _sequence_body(b, rng, (steps, channels), features) + (data,)


def _build_tokens(b, rng, seed):
    steps, vocab, units = int(rng.choice([8, 16])), int(rng.choice([50, 200, 1000])), b.width()
    data = token_data(rng, steps, vocab)
    features = nn.HybridSequential()
    features.add(nn.Embedding(vocab, units))
    b.kinds.add("embedding")
    if rng.rand() < 0.3:
        features.add(PositionalEmbedding(steps, units))
        b.kinds.add("broadcast_add")
    return _sequence_body(b, rng, (steps, units), features) + (data,)


def _build_tabular(b, rng, seed):
    width = int(rng.choice([6, 12, 20, 32]))
    data = tabular_data(rng, width)
    features = nn.HybridSequential()
    if rng.rand() < 0.4:
        features.add(nn.BatchNorm())
        b.kinds.add("batchnorm")
    for _ in range(int(rng.randint(1, 5))):
        block, width = b.tabular_block(width)
        features.add(block)
    head = nn.HybridSequential()
    head.add(nn.Dense(int(rng.choice([1, CLASSES]))))
    b.kinds.add("dense_flatten")
    softmax = None
    if rng.rand() < 0.3:
        softmax = -1
        b.kinds.add("softmax")
    return features, head, softmax, data


_BUILDERS = {"image": _build_image, "residual": _build_residual, "signal": _build_signal,
             "video": _build_video, "sequence": _build_sequence, "tokens": _build_tokens,
             "tabular": _build_tabular}


def _randomize_affine(net, rng):
    """Biases, norm affine parameters and PReLU slopes as a trained net has them."""
    for name, param in net.collect_params().items():
        shape = param.shape
        if name.endswith("bias") or name.endswith("beta"):
            param.set_data(mx.nd.array(rng.normal(0, 0.1, size=shape)))
        elif name.endswith("gamma"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, size=shape)))
        elif name.endswith("alpha"):
            param.set_data(mx.nd.array(rng.uniform(0.05, 0.3, size=shape)))


def _assemble(seed, kind, build, rng, b):
    net = FuzzNet(prefix="fuzz%d_" % seed)
    with net.name_scope():
        features, head, softmax, data = build(b, rng, seed)
        net.features, net.output = features, head
    net.softmax_axis = softmax
    net.return_features = bool(rng.rand() < 0.15)
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    calib, held = _split(data)
    net(mx.nd.array(calib[0]))                                    # finish deferred shapes
    _randomize_affine(net, np.random.RandomState(seed + 1))
    set_batchnorm_statistics(net, mx.nd.array(np.concatenate(calib)))
    return FuzzCase(seed=seed, kind=kind, net=net, layer_kinds=tuple(sorted(b.kinds)),
                    calib=calib, held_out=held)


def generate(seed, kind=None):
    """The net of ``seed`` (of input kind ``INPUT_KINDS[seed % 7]`` unless ``kind``).

    Returns
    -------
    FuzzCase
        ``net`` is initialized and not hybridized; ``calib`` and ``held_out`` are lists
        of float32 arrays of ``BATCH`` rows.
    """
    kind = kind or INPUT_KINDS[seed % len(INPUT_KINDS)]
    rng = np.random.RandomState(seed)
    return _assemble(seed, kind, _BUILDERS[kind], rng, _Builder(rng))
