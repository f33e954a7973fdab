"""The blocks generated nets are made of, written as Gluon users write them: ``HybridBlock``
subclasses whose ``hybrid_forward(self, F, x)`` calls ``F.*``, over ``nn`` layers."""
import math

import mxnet as mx
from mxnet.gluon import nn

__all__ = ["CONV", "MAXPOOL", "AVGPOOL", "GLOBAL_AVG", "GLOBAL_MAX", "HardSwish",
           "ResidualBlock", "SqueezeExcite", "ContextBias", "GatedConv", "Branches",
           "SharedPool", "ShuffleUnit", "UNetLevel", "ChannelsLastDense", "PositionalEmbedding",
           "SelfAttention", "FeedForward", "GatedDense", "TemporalConv", "LastStep",
           "MeanOverTime", "Columns", "FuzzNet", "PixelShuffle", "SplitGate", "CausalConv",
           "RepBranches"]


CONV = {1: nn.Conv1D, 2: nn.Conv2D, 3: nn.Conv3D}
MAXPOOL = {1: nn.MaxPool1D, 2: nn.MaxPool2D, 3: nn.MaxPool3D}
AVGPOOL = {1: nn.AvgPool1D, 2: nn.AvgPool2D, 3: nn.AvgPool3D}
GLOBAL_AVG = {1: nn.GlobalAvgPool1D, 2: nn.GlobalAvgPool2D, 3: nn.GlobalAvgPool3D}
GLOBAL_MAX = {1: nn.GlobalMaxPool1D, 2: nn.GlobalMaxPool2D, 3: nn.GlobalMaxPool3D}

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
            self.pool = GLOBAL_AVG[dims]()
            if dense:
                self.fc1 = nn.Dense(squeezed, activation="relu")
                self.fc2 = nn.Dense(channels)
            else:
                self.fc1 = CONV[dims](squeezed, 1, activation="relu")
                self.fc2 = CONV[dims](channels, 1)

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
            self.pool = GLOBAL_AVG[dims]()
            self.fc = nn.Dense(channels)

    def hybrid_forward(self, F, x):
        bias = self.fc(self.pool(x)).reshape((0, 0) + (1,) * self._dims)
        return F.broadcast_add(x, bias)


class GatedConv(nn.HybridBlock):
    """WaveNet's gated activation: ``tanh(filter(x)) * sigmoid(gate(x))``."""

    def __init__(self, channels, dims, kernel=3, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.filter = CONV[dims](channels, kernel, padding=kernel // 2)
            self.gate = CONV[dims](channels, kernel, padding=kernel // 2)

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


class SharedPool(nn.HybridBlock):
    """One pooling block called twice (on the input and on a conv of it), concatenated:
    users reuse parameter-free blocks."""

    def __init__(self, conv, pool, **kwargs):
        super().__init__(**kwargs)
        self.conv, self.pool = conv, pool

    def hybrid_forward(self, F, x):
        return F.concat(self.pool(x), self.pool(self.conv(x)), dim=1)


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


class PixelShuffle(nn.HybridBlock):
    """A convolution to ``4 * channels`` then a pixel shuffle by 2 (ESPCN, DUC heads), as
    PyTorch ports write it: one 6-D view and one permute."""

    def __init__(self, conv, channels, **kwargs):
        super().__init__(**kwargs)
        self.conv, self._channels = conv, channels

    def hybrid_forward(self, F, x):
        y = self.conv(x).reshape((0, -4, self._channels, 4, -2))
        y = y.reshape((0, 0, -4, 2, 2, -2))
        return F.transpose(y, axes=(0, 1, 4, 2, 5, 3)).reshape((0, 0, -3, -3))


class SplitGate(nn.HybridBlock):
    """A GLU: one convolution split in two along the channels, ``a * sigmoid(b)``."""

    def __init__(self, conv, **kwargs):
        super().__init__(**kwargs)
        self.conv = conv

    def hybrid_forward(self, F, x):
        value, gate = F.split(self.conv(x), num_outputs=2, axis=1)
        return value * F.sigmoid(gate)


class CausalConv(nn.HybridBlock):
    """A TCN's causal convolution: ``Conv1D(padding=(k - 1) * d)``, the last ``(k - 1) *
    d`` steps sliced off ("chomp"), then ReLU."""

    def __init__(self, channels, kernel, dilation, **kwargs):
        super().__init__(**kwargs)
        self._chomp = (kernel - 1) * dilation
        with self.name_scope():
            self.conv = nn.Conv1D(channels, kernel, padding=self._chomp, dilation=dilation)

    def hybrid_forward(self, F, x):
        return F.relu(F.slice_axis(self.conv(x), axis=2, begin=0, end=-self._chomp))


class RepBranches(nn.HybridBlock):
    """RepVGG's training-time block: 3x3 conv + BN, 1x1 conv + BN, a BN of the input."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.dense = nn.HybridSequential()
            self.dense.add(nn.Conv2D(channels, 3, padding=1, use_bias=False), nn.BatchNorm())
            self.one = nn.HybridSequential()
            self.one.add(nn.Conv2D(channels, 1, use_bias=False), nn.BatchNorm())
            self.identity = nn.BatchNorm()

    def hybrid_forward(self, F, x):
        return F.relu(self.dense(x) + self.one(x) + self.identity(x))


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


class ManualDense(nn.HybridBlock):
    """A linear layer written by hand, as ported from NumPy: ``relu(x . W + b)`` over
    ``params.get`` parameters, ``W`` shaped ``(in, out)``."""

    def __init__(self, in_units, units, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(in_units, units),
                                          init=mx.init.Xavier())
            self.bias = self.params.get("bias", shape=(units,), init=mx.init.Uniform(0.1))

    def hybrid_forward(self, F, x, weight, bias):  # pylint: disable=arguments-differ
        return F.relu(F.broadcast_add(F.dot(x, weight), bias))


class FrozenBatchNorm(nn.HybridBlock):
    """Detectron-style frozen BatchNorm, as ported from PyTorch: ``x * scale + shift``
    over fixed ``(1, C, 1, 1)`` parameters."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.scale = self.params.get("scale", shape=(1, channels, 1, 1), grad_req="null",
                                         init=mx.init.Uniform(1.0))
            self.shift = self.params.get("shift", shape=(1, channels, 1, 1), grad_req="null",
                                         init=mx.init.Uniform(0.2))

    def hybrid_forward(self, F, x, scale, shift):  # pylint: disable=arguments-differ
        return F.broadcast_add(F.broadcast_mul(x, scale), shift)


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


class Columns(nn.HybridBlock):
    """Columns ``begin:end`` of (N, F) (a wide-and-deep tower's share of the features)."""

    def __init__(self, begin, end, **kwargs):
        super().__init__(**kwargs)
        self._begin, self._end = begin, end

    def hybrid_forward(self, F, x):
        return F.slice_axis(x, axis=1, begin=self._begin, end=self._end)
