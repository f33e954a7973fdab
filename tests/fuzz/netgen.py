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
from dataclasses import dataclass
from typing import List, Tuple

import mxnet as mx
import numpy as np
from mxnet.gluon import nn, rnn

from gluon_quant.zoo.gluoncv import set_batchnorm_statistics

from .blocks import (AVGPOOL, CONV, GLOBAL_AVG, GLOBAL_MAX, MAXPOOL, Branches,
                     ChannelsLastDense, Columns, ContextBias, FeedForward, FuzzNet, GatedConv,
                     GatedDense, HardSwish, LastStep, MeanOverTime, PositionalEmbedding,
                     ResidualBlock, SelfAttention, SharedPool, ShuffleUnit, SqueezeExcite,
                     TemporalConv, UNetLevel, PixelShuffle, SplitGate, CausalConv,
                     RepBranches)
from .data import audio_data, image_data, sensor_data, tabular_data, token_data, video_data

__all__ = ["INPUT_KINDS", "LAYER_KINDS", "BATCH_SIZES", "FuzzCase", "FuzzNet", "generate",
           "kind_of", "make_case"]

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
    "batch_dot", "softmax", "reused_block", "pixel_shuffle", "split", "causal_crop",
    "parallel_branches")

#: Rows per batch by input kind (more for tabular rows, which are cheap and heavy-tailed).
BATCH_SIZES = {"image": 8, "residual": 8, "signal": 8, "video": 8, "sequence": 16,
               "tokens": 16, "tabular": 64}
CALIB_BATCHES = 4
HELD_OUT_BATCHES = 2
CLASSES = 10


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

    def norm(self, spatial=True):
        """A normalisation over axis 1 (channels), or None; InstanceNorm needs ``spatial``
        axes after the channels."""
        tag = self.pick({"batchnorm": 6, "instancenorm": .8 if spatial else 0,
                         "layernorm": .7, None: 2.5})
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
        seq.add(CONV[dims](channels, kernels, strides=strides, padding=pads, groups=groups,
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
        layer = (MAXPOOL if kind == "max" else AVGPOOL)[dims](pools)
        return layer, (channels, tuple(s // p for s, p in zip(size, pools)))

    # ---------------------------------------------------------- spatial (N, C, *S)
    def spatial_block(self, dims, shape):
        """One random block for channels-first data; returns (block, shape)."""
        channels, size = shape
        options = {"conv": 4, "se": 1, "context": .6, "residual": 1.5, "branches": 1,
                   "gated": .7, "dropout": .4, "shared_pool": .4}
        if min(size) >= 4:
            options["pool"] = 1.5
        if dims in (1, 2):
            options["depthwise"] = 1.2
        if channels % 2 == 0 and channels >= 8:
            options["shuffle"] = .7
        if dims == 2 and max(size) <= 16:
            options["upsample"] = 1
        if dims == 2 and min(size) >= 8 and size[0] % 2 == 0 and size[1] % 2 == 0:
            options["unet"] = 1
        if dims == 2 and max(size) <= 16:
            options["pixel_shuffle"] = .6
        options["split_gate"] = .6
        if dims == 1:
            options["causal"] = .8
        if dims == 2:
            options["rep_branches"] = .6
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
                seq.add((MAXPOOL if kind == "max" else AVGPOOL)[dims](3, 1, 1))
                unit, _ = self.conv_unit(dims, shape, channels, 1)
            else:
                unit, _ = self.conv_unit(dims, shape, channels, int(self.rng.choice([1, 3])))
            seq.add(unit)
            branches.append(seq)
            total += channels
        self.kinds.add("concat")
        return Branches(branches), (total, shape[1])

    def _spatial_shared_pool(self, dims, shape):
        conv, (channels, _) = self.conv_unit(dims, shape, self.width(8, 16), 3)
        kind = self.pick({"max": 1, "avg": 1})
        self.kinds.update({"%spool%dd" % (kind, dims), "concat", "reused_block"})
        pool = (MAXPOOL if kind == "max" else AVGPOOL)[dims](3, 1, 1)
        return SharedPool(conv, pool), (shape[0] + channels, shape[1])

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

    def _spatial_pixel_shuffle(self, dims, shape):
        channels = self.width(8, 16)
        conv, _ = self.conv_unit(dims, shape, 4 * channels, 3)
        self.kinds.update({"pixel_shuffle", "reshape", "transpose"})
        return PixelShuffle(conv, channels), (channels, tuple(2 * s for s in shape[1]))

    def _spatial_split_gate(self, dims, shape):
        channels = self.width(8, 16)
        conv, (_, size) = self.conv_unit(dims, shape, 2 * channels, 3, act=False)
        self.kinds.update({"split", "mul", "F.sigmoid"})
        return SplitGate(conv), (channels, size)

    def _spatial_causal(self, dims, shape):
        channels = self.width()
        dilation = int(self.rng.choice([1, 2, 4]))
        self.kinds.update({"conv1d", "causal_crop", "slice_axis", "F.relu"})
        return CausalConv(channels, 3, dilation), (channels, shape[1])

    def _spatial_rep_branches(self, dims, shape):
        self.kinds.update({"parallel_branches", "conv2d", "batchnorm", "add", "F.relu"})
        return RepBranches(shape[0]), shape

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
            head.add((GLOBAL_AVG if self.rng.rand() < 0.7 else GLOBAL_MAX)[dims]())
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
            layer = self.norm(spatial=False)
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
                tower.add(Columns(begin, end), nn.Dense(units), self.act())
                towers.append(tower)
                total += units
            self.kinds.update({"slice_axis", "concat", "dense_flatten"})
            return Branches(towers), total
        if choice == "layernorm":
            self.kinds.add("layernorm")
            return nn.LayerNorm(), features
        return self.dropout(), features


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


def _build_image(b, rng, seed, rows, calib_rows):
    data = image_data(seed, rows)
    first, shape = b.conv_unit(2, (3, (32, 32)), b.width(8, 16), 3, 2)
    features, head, softmax = _spatial_net(b, 2, shape, int(rng.randint(2, 6)), [first])
    return features, head, softmax, data


def _build_residual(b, rng, seed, rows, calib_rows):
    data = image_data(seed, rows)
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


def _build_signal(b, rng, seed, rows, calib_rows):
    channels, length = int(rng.choice([1, 2])), int(rng.choice([128, 256]))
    data = audio_data(rng, rows, channels, length)
    first, shape = b.conv_unit(1, (channels, (length,)), b.width(8, 16), 7, 2)
    features, head, softmax = _spatial_net(b, 1, shape, int(rng.randint(2, 6)), [first])
    return features, head, softmax, data


def _build_video(b, rng, seed, rows, calib_rows):
    data = video_data(seed, rows)
    first, shape = b.conv_unit(3, (3, (4, 16, 16)), 8, 3)
    features, head, softmax = _spatial_net(b, 3, shape, int(rng.randint(1, 4)), [first])
    return features, head, softmax, data


def _sequence_body(b, rng, shape, features):
    for _ in range(int(rng.randint(1, 4))):
        block, shape = b.sequence_block(shape)
        features.add(block)
    head, softmax = b.sequence_head(shape)
    return features, head, softmax


def _build_sequence(b, rng, seed, rows, calib_rows):
    steps, channels = int(rng.choice([8, 12, 16])), int(rng.choice([4, 8, 16]))
    data = sensor_data(rng, rows, calib_rows, steps, channels)
    features = nn.HybridSequential()
    if rng.rand() < 0.3:
        features.add(PositionalEmbedding(steps, channels))
        b.kinds.add("broadcast_add")
    return _sequence_body(b, rng, (steps, channels), features) + (data,)


def _build_tokens(b, rng, seed, rows, calib_rows):
    steps, vocab, units = int(rng.choice([8, 16])), int(rng.choice([50, 200, 1000])), b.width()
    data = token_data(rng, rows, steps, vocab)
    features = nn.HybridSequential()
    features.add(nn.Embedding(vocab, units))
    b.kinds.add("embedding")
    if rng.rand() < 0.3:
        features.add(PositionalEmbedding(steps, units))
        b.kinds.add("broadcast_add")
    return _sequence_body(b, rng, (steps, units), features) + (data,)


def _build_tabular(b, rng, seed, rows, calib_rows):
    width = int(rng.choice([6, 12, 20, 32]))
    data = tabular_data(rng, rows, calib_rows, width)
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


def make_case(net, kind, data, seed, batch, layer_kinds=()):
    """Initialize ``net`` as generated nets are and split ``data`` into its batches.

    Xavier weights (``mx.random.seed(seed)``), trained-like biases and affine parameters,
    BatchNorm statistics from the calibration batches; ``data`` holds ``CALIB_BATCHES``
    then ``HELD_OUT_BATCHES`` batches of ``batch`` rows. For hand-written nets too (the
    benchmark's families).
    """
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    batches = [data[i:i + batch] for i in range(0, len(data), batch)]
    calib, held = batches[:CALIB_BATCHES], batches[CALIB_BATCHES:]
    net(mx.nd.array(calib[0]))                                    # finish deferred shapes
    _randomize_affine(net, np.random.RandomState(seed + 1))
    set_batchnorm_statistics(net, mx.nd.array(np.concatenate(calib)))
    return FuzzCase(seed=seed, kind=kind, net=net, layer_kinds=tuple(sorted(layer_kinds)),
                    calib=calib, held_out=held)


def _assemble(seed, kind, build, rng, b):
    batch = BATCH_SIZES[kind]
    rows, calib_rows = batch * (CALIB_BATCHES + HELD_OUT_BATCHES), batch * CALIB_BATCHES
    net = FuzzNet(prefix="fuzz%d_" % seed)
    with net.name_scope():
        features, head, softmax, data = build(b, rng, seed, rows, calib_rows)
        net.features, net.output = features, head
    net.softmax_axis = softmax
    net.return_features = bool(rng.rand() < 0.15)
    return make_case(net, kind, data, seed, batch, b.kinds)


def kind_of(seed):
    """The input kind of the net of ``seed``."""
    return INPUT_KINDS[seed % len(INPUT_KINDS)]


def generate(seed, kind=None):
    """The net of ``seed`` (of input kind ``INPUT_KINDS[seed % 7]`` unless ``kind``).

    Returns
    -------
    FuzzCase
        ``net`` is initialized and not hybridized; ``calib`` and ``held_out`` are lists
        of float32 arrays of ``BATCH_SIZES[kind]`` rows.
    """
    kind = kind or kind_of(seed)
    rng = np.random.RandomState(seed)
    return _assemble(seed, kind, _BUILDERS[kind], rng, _Builder(rng))
