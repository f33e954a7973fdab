"""Pixel shuffles and their inverse run as one-hot grouped (de)convolutions
(graph.pixelshuffle)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn
from mxnet.gluon.contrib.nn import PixelShuffle1D, PixelShuffle2D, PixelShuffle3D

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.pixelshuffle import pixel_shuffles, shuffled_order

from _checks import assert_matches_and_reloads, assert_same_after_rewrite

RS = np.random.RandomState(0)


@pytest.mark.parametrize("factors", [(2,), (2, 3), (3, 2), (2, 2, 2), (1, 2)])
def test_the_orders_are_gluons_and_mxnets(factors):
    """CRD is Gluon's PixelShuffle; DCR is MXNet's depth_to_space; to_depth inverts each."""
    rank, channels = 2 + len(factors), 3
    phases = int(np.prod(factors))
    small = (2, channels * phases) + tuple(range(2, 2 + len(factors)))
    values = mx.nd.array(np.arange(int(np.prod(small))).reshape(small))
    shuffle = {3: PixelShuffle1D, 4: PixelShuffle2D, 5: PixelShuffle3D}[rank](
        factors[0] if rank == 3 else factors)
    crd = shuffled_order(small, factors, False, False)
    assert np.array_equal(shuffle(values).asnumpy(), crd)
    big = crd.shape
    back = shuffled_order(big, factors, True, False)          # CRD space-to-depth
    assert np.array_equal(crd.ravel()[back], np.arange(crd.size).reshape(small))
    if rank == 4 and factors[0] == factors[1]:
        dcr = shuffled_order(small, factors, False, True)
        assert np.array_equal(mx.nd.depth_to_space(values, factors[0]).asnumpy(), dcr)
        image = mx.nd.array(np.arange(crd.size).reshape(big))
        assert np.array_equal(mx.nd.space_to_depth(image, factors[0]).asnumpy(),
                              shuffled_order(big, factors, True, True))


def _torch_style(x):
    """A pixel shuffle as PyTorch ports write it: one 6-D view, one permute."""
    x = mx.sym.reshape(x, shape=(0, -4, -1, 4, -2))
    x = mx.sym.reshape(x, shape=(0, 0, -4, 2, 2, -2))
    return mx.sym.reshape(mx.sym.transpose(x, axes=(0, 1, 4, 2, 5, 3)), shape=(0, 0, -3, -3))


def _dcr_chain(x):
    """MXNet's depth_to_space written out: the phases first."""
    x = mx.sym.reshape(x, shape=(0, -4, 2, -1, -2))
    x = mx.sym.reshape(x, shape=(0, -4, 2, 1, -2))
    x = mx.sym.reshape(x, shape=(0, 2, 2, -1, 0, 0))
    return mx.sym.reshape(mx.sym.transpose(x, axes=(0, 3, 4, 1, 5, 2)), shape=(0, 0, -3, -3))


def _gluon(block):
    return lambda x: block.hybrid_forward(mx.sym, x)


#: name -> (graph over "features", input shape, another input shape, op it becomes,
#: one-hot 1x1 convolutions reordering channels)
FORMS = {
    "PixelShuffle2D": (_gluon(PixelShuffle2D(2)), (2, 8, 3, 4), (1, 8, 5, 2),
                       "Deconvolution", 0),
    "PixelShuffle2D (2, 3)": (_gluon(PixelShuffle2D((2, 3))), (2, 12, 3, 4),
                              (3, 12, 2, 2), "Deconvolution", 0),
    "PixelShuffle1D": (_gluon(PixelShuffle1D(3)), (2, 6, 5), (1, 6, 9), "Deconvolution", 0),
    "PixelShuffle3D": (_gluon(PixelShuffle3D(2)), (1, 16, 2, 3, 2), (2, 16, 3, 2, 2),
                       "Deconvolution", 0),
    "a PyTorch-style view and permute": (_torch_style, (2, 8, 3, 3), (1, 8, 4, 6),
                                         "Deconvolution", 0),
    "depth_to_space": (lambda x: mx.sym.depth_to_space(x, 2), (2, 8, 3, 4), (1, 8, 2, 2),
                       "Deconvolution", 1),
    "depth_to_space written out": (_dcr_chain, (2, 8, 3, 4), (1, 8, 2, 2),
                                   "Deconvolution", 1),
    "a reshape before and after (kept)": (
        lambda x: mx.sym.reshape(_gluon(PixelShuffle2D(2))(mx.sym.reshape(
            x, shape=(0, 0, -1, 0))), shape=(0, -1)), (2, 8, 3, 4), (1, 8, 2, 2),
        "Deconvolution", 0),
    "space_to_depth": (lambda x: mx.sym.space_to_depth(x, 2), (2, 3, 4, 6), (1, 3, 8, 2),
                       "Convolution", 1),
}


def _features(x, shape):
    """A 1x1 convolution first: the channels' count is the net's, not the input's."""
    return mx.sym.Convolution(x, kernel=(1,) * (len(shape) - 2), num_filter=shape[1],
                              no_bias=True, name="features")


def _rewrite(function, shape, features=_features, excluded=()):
    graph = json.loads(function(features(mx.sym.var("data"), shape)).tojson())
    before = json.loads(json.dumps(graph))
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": shape}),
                          excluded=frozenset(excluded))
    assert pixel_shuffles(graph, context) == {}
    return before, graph, context


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_shuffle_gives_the_same_values_at_any_size(form):
    """Bit-exact outputs at the traced shape and another, from one grouped one-hot
    (de)convolution (and a 1x1 one reordering the channels of a phase-major order), with
    no reshape, transpose or depth_to_space left."""
    function, shape, other, op, reorders = FORMS[form]
    before, graph, context = _rewrite(function, shape)
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    # (the flattening reshape after it stays; the one before is the shuffle's: no-op)
    kept = ["Reshape"] if "kept" in form else []
    assert sorted(ops) == sorted(["Convolution"] * (1 + reorders) + [op] + kept), ops
    shuffle = next(n for n in graph["nodes"] if n["op"] == op
                   and n["name"] != "features" and "reorder" not in n["name"])
    assert int(shuffle["attrs"]["num_group"]) == (shape[1] if op == "Convolution" else
                                                  shape[1] // (2 if "1D" not in form
                                                               else 3) ** (len(shape) - 2)
                                                  if "(2, 3)" not in form else 2)
    assert_same_after_rewrite(before, graph, context, (shape, other), RS)


def test_what_is_not_a_pixel_shuffle_or_is_excluded_is_left():
    shape = (2, 8, 4, 4)
    for function in (
            # the shapes of a pixel shuffle, the wrong permutation (H and W swapped)
            lambda x: mx.sym.reshape(mx.sym.transpose(mx.sym.reshape(
                x, shape=(0, -4, -1, 4, 0, 0)), axes=(0, 1, 3, 4, 2)), shape=(0, 0, 8, 8)),
            # a channel-major space-to-depth chain: its transposes were measured faster
            lambda x: mx.sym.reshape(mx.sym.transpose(mx.sym.reshape(
                x, shape=(0, 0, -4, -1, 2, -4, -1, 2)), axes=(0, 1, 3, 5, 2, 4)),
                shape=(0, -3, -3, 0, 0)),
            # a reshape that merges samples
            lambda x: mx.sym.reshape(x, shape=(-1, 2, 0, 0))):
        before, graph, _ = _rewrite(function, shape)
        assert graph == before
    # (N, T, C) data: axis 1 is the time steps, whose count follows the input's
    before, graph, _ = _rewrite(_gluon(PixelShuffle1D(2)), (2, 8, 6), lambda x, shape: (
        mx.sym.FullyConnected(x, num_hidden=shape[2], flatten=False, name="features")))
    assert graph == before
    # excluded by the user (one node of the chain), or no shapes to check it with
    graph = json.loads(_gluon(PixelShuffle2D(2))(_features(mx.sym.var("data"), shape))
                       .tojson())
    before = json.loads(json.dumps(graph))
    names = [n["name"] for n in graph["nodes"] if n["op"] == "transpose"]
    for context in (PassContext(spec=ONEDNN),
                    PassContext(spec=ONEDNN, excluded=frozenset(names),
                                infer_shapes=_mxnet.GraphShapes({"data": shape}))):
        assert pixel_shuffles(graph, context) == {} and graph == before
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": shape}))
    assert names and pixel_shuffles(graph, context) == {} and graph != before


class _Upsampler(nn.HybridBlock):
    """An ESPCN-style super-resolution net (and a DUC head): convolutions, then a pixel
    shuffle of their channels into pixels, then one more convolution."""

    def __init__(self, shuffle, **kwargs):
        super().__init__(**kwargs)
        self.shuffle = shuffle
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(16, 3, padding=1), nn.Activation("relu"),
                          nn.Conv2D(32, 3, padding=1), nn.Activation("relu"))
            self.out = nn.Conv2D(3, 3, padding=1)

    def hybrid_forward(self, F, x):
        x = self.body(x)
        x = self.shuffle(x) if self.shuffle else F.depth_to_space(x, 2)
        return self.out(x)


@pytest.mark.parametrize("shuffle", ["PixelShuffle2D", "depth_to_space"])
def test_a_super_resolution_net_runs_its_shuffle_as_a_deconvolution(shuffle, tmp_path,
                                                                    disable_pass):
    """Its int8 graph has no transpose; the shuffle's values are the ones it had (the
    same int8 net with the pass off agrees to float rounding); it matches fp32 at another
    input size and reloads bit-identically."""
    net = _Upsampler(PixelShuffle2D(2) if shuffle == "PixelShuffle2D" else None)
    net.initialize(mx.init.Xavier(), force_reinit=True)
    calib = [mx.nd.array(RS.uniform(0, 1, (4, 3, 12, 12)).astype("float32"))
             for _ in range(2)]
    qnet = gq.quantize(net, calib)
    rows = [row for row in qnet.report() if "depth-to-space" in row.reason]
    assert [row.op for row in rows] == (["Deconvolution"] if shuffle == "PixelShuffle2D"
                                        else ["Convolution", "Deconvolution"]), \
        qnet.report()
    assert not any(op in row.op for row in qnet.report()
                   for op in ("transpose", "Reshape", "depth_to_space"))
    other = mx.nd.array(RS.uniform(0, 1, (2, 3, 8, 16)).astype("float32"))
    assert_matches_and_reloads(net, qnet, calib[:1] + [other], tmp_path)
    disable_pass("pixel_shuffles")
    plain = gq.quantize(net, calib)
    assert any("transpose" in row.op or "depth_to_space" in row.op
               for row in plain.report())
    np.testing.assert_allclose(plain(calib[0]).asnumpy(), qnet(calib[0]).asnumpy(),
                               atol=1e-5 if shuffle == "PixelShuffle2D" else 0.05)
