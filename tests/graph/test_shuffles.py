"""Channel shuffles run as one-hot 1x1 convolutions (graph.shuffles)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.backends import ONEDNN
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.shuffles import channel_shuffles, never_negative, shuffle_permutation

from _checks import assert_matches_and_reloads, assert_same_after_rewrite, image_batches

RS = np.random.RandomState(0)


def _shuffle(x, groups):
    """GluonCV's channel shuffle: reshape to groups, swap them with the channels, merge."""
    x = mx.sym.reshape(x, shape=(0, -4, groups, -1, -2))
    x = mx.sym.swapaxes(x, 1, 2)      # traced as SwapAxis; swapaxes_as_transpose runs first
    return mx.sym.reshape(x, shape=(0, -3, -2))


def _as_transposes(graph, rank):
    """The graph's axis swaps as swapaxes_as_transpose leaves them (``rank``: the data's
    rank; the swap is over the grouped view, one more)."""
    for node in graph["nodes"]:
        if node["op"] == "SwapAxis":
            node.update(op="transpose", attrs={"axes": str((0, 2, 1) + tuple(
                range(3, rank + 1)))})
    return graph


@pytest.mark.parametrize("channels,groups", [(12, 2), (12, 3), (12, 4), (58 * 2, 2)])
def test_the_permutation_is_the_shuffle(channels, groups):
    x = np.arange(channels)
    moved = x.reshape(groups, -1).T.ravel()
    assert np.array_equal(shuffle_permutation(channels, groups), moved)


def _slices(out, channels):
    half = channels // 2
    return mx.sym.Group([mx.sym.slice_axis(out, axis=1, begin=0, end=half),
                         mx.sym.slice_axis(out, axis=-3, begin=half, end=None)])


#: name -> (graph over "data", input shape, another input shape, convolutions after)
FORMS = {
    "a shuffle read by the net's output": (lambda x: _shuffle(x, 3), (2, 12, 5, 4),
                                           (1, 12, 7, 9), 1),
    "ShuffleNet v2: the shuffle's two halves": (
        lambda x: _slices(_shuffle(x, 2), 16), (2, 16, 6, 5), (3, 16, 4, 4), 2),
    "a shuffle of a ReLU, halves": (
        lambda x: _slices(_shuffle(mx.sym.relu(x), 2), 8), (2, 8, 3, 3), (1, 8, 5, 2), 2),
    "1-D maps": (lambda x: _shuffle(x, 4), (2, 8, 7), (3, 8, 10), 1),
    "3-D maps": (lambda x: _shuffle(x, 2), (1, 6, 2, 3, 4), (2, 6, 3, 3, 3), 1),
    "a half and the whole": (
        lambda x: mx.sym.Group([mx.sym.slice_axis(_shuffle(x, 2), axis=1, begin=0, end=3),
                                _shuffle(x, 2) * 2]), (2, 6, 3, 3), (1, 6, 4, 4), 2),
}


def _conv(x, shape):
    """A 1x1 convolution first: the channels' count is the net's, not the input's."""
    return mx.sym.Convolution(x, kernel=(1,) * (len(shape) - 2), num_filter=shape[1],
                              no_bias=True, name="features")


def _rewrite(function, shape, features=_conv):
    graph = json.loads(function(features(mx.sym.var("data"), shape)).tojson())
    graph = _as_transposes(graph, len(shape))
    before = json.loads(json.dumps(graph))
    context = PassContext(spec=ONEDNN, infer_shapes=_mxnet.GraphShapes({"data": shape}))
    assert channel_shuffles(graph, context) == {}
    return before, graph, context


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_shuffle_gives_the_same_values_at_any_size(form):
    """Bit-exact outputs, at the traced shape and another, from one-hot convolutions, with
    no transpose left; a shuffle of a never-negative tensor gets the ReLU that makes
    oneDNN's int8 output uint8."""
    function, shape, other, convs = FORMS[form]
    before, graph, context = _rewrite(function, shape)
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert "transpose" not in ops and ops.count("Convolution") == 1 + convs, ops
    assert ops.count("Activation") == (convs if "ReLU" in form else 0), ops
    assert_same_after_rewrite(before, graph, context, (shape, other), RS)


def test_what_is_not_a_shuffle_or_is_excluded_is_left():
    shape = (2, 12, 3, 3)
    for function in (
            # the swap moves other axes
            lambda x: mx.sym.reshape(mx.sym.transpose(mx.sym.reshape(
                x, shape=(0, -4, 3, -1, -2)), axes=(0, 1, 2, 4, 3)), shape=(0, -3, -2)),
            # the grouped view is read by another layer too
            lambda x: (lambda view: mx.sym.Group([mx.sym.reshape(mx.sym.swapaxes(
                view, 1, 2), shape=(0, -3, -2)), view * 2]))(
                    mx.sym.reshape(x, shape=(0, -4, 3, -1, -2))),
            # the merge does not give the input's shape back
            lambda x: mx.sym.reshape(mx.sym.swapaxes(mx.sym.reshape(
                x, shape=(0, -4, 3, -1, -2)), 1, 2), shape=(0, -3, -3))):
        before, graph, _ = _rewrite(function, shape)
        assert graph == before
    # a shuffle of (N, T, C) data over its time steps: the permutation follows the length
    before, graph, _ = _rewrite(lambda x: _shuffle(x, 2), (2, 6, 5), lambda x, shape: (
        mx.sym.FullyConnected(x, num_hidden=shape[2], flatten=False, name="features")))
    assert graph == before
    # the same shuffle after a convolution (channels first): taken
    before, graph, _ = _rewrite(lambda x: _shuffle(x, 2), (2, 6, 5))
    assert graph != before
    graph = _as_transposes(json.loads(_shuffle(_conv(mx.sym.var("data"), shape), 3)
                                      .tojson()), 4)
    before = json.loads(json.dumps(graph))
    names = [n["name"] for n in graph["nodes"] if n["op"] == "Reshape"]
    for context in (PassContext(spec=ONEDNN),
                    PassContext(spec=ONEDNN, excluded=frozenset(names[:1]),
                                infer_shapes=_mxnet.GraphShapes({"data": shape}))):
        assert channel_shuffles(graph, context) == {} and graph == before


def test_never_negative_follows_what_keeps_the_sign():
    x = mx.sym.var("data")
    relu = mx.sym.relu(x, name="r")
    graph = json.loads(mx.sym.Group([
        mx.sym.concat(mx.sym.slice_axis(relu, axis=1, begin=0, end=2, name="s"),
                      mx.sym.clip(x, 0, 6, name="c"), name="cat"),
        mx.sym.concat(relu, x, name="mixed"),
        mx.sym.clip(x, -1, 1, name="signed_clip"),
        mx.sym.Activation(x, act_type="tanh", name="tanh")]).tojson())
    names = {graph["nodes"][i]["name"] for i in never_negative(graph["nodes"])}
    assert names == {"r", "s", "c", "cat"}
    # NumPy mode's concatenation and sums, as traced (before their own rewrites)
    numpy = [{"op": "null", "name": "data", "inputs": []},
             {"op": "Activation", "name": "r", "attrs": {"act_type": "relu"},
              "inputs": [[0, 0, 0]]},
             {"op": "_npi_concatenate", "name": "cat", "inputs": [[1, 0, 0], [1, 0, 0]]},
             {"op": "_npi_add", "name": "mixed", "inputs": [[0, 0, 0], [2, 0, 0]]},
             {"op": "_npi_add", "name": "sum", "inputs": [[1, 0, 0], [2, 0, 0]]}]
    assert {numpy[i]["name"] for i in never_negative(numpy)} == {"r", "cat", "sum"}


class _ShuffleUnit(nn.HybridBlock):
    """ShuffleNet v2's unit as GluonCV writes it: half the channels pass, the other half
    goes through 1x1, depthwise 3x3 and 1x1 convolutions; concatenation; shuffle."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self._half = channels // 2
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(self._half, 1, use_bias=False), nn.BatchNorm(),
                          nn.Activation("relu"),
                          nn.Conv2D(self._half, 3, padding=1, groups=self._half,
                                    use_bias=False), nn.BatchNorm(),
                          nn.Conv2D(self._half, 1, use_bias=False), nn.BatchNorm(),
                          nn.Activation("relu"))

    def hybrid_forward(self, F, x):
        left = F.slice_axis(x, axis=1, begin=0, end=self._half)
        right = F.slice_axis(x, axis=1, begin=self._half, end=2 * self._half)
        x = F.concat(left, self.body(right), dim=1)
        x = F.reshape(x, shape=(0, -4, 2, -1, -2))
        return F.reshape(F.swapaxes(x, 1, 2), shape=(0, -3, -2))


def _shufflenet():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(48, 3, strides=2, padding=1, use_bias=False), nn.BatchNorm(),
            nn.Activation("relu"))
    for _ in range(3):
        net.add(_ShuffleUnit(48))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    return net


def test_shufflenet_units_run_int8_from_end_to_end(tmp_path):
    """GluonCV's shufflenet_v2 (batch 8, 160 px): int8 1.66x -> 2.81x fused fp32 (a 5-D
    fp32 transpose, a dequantize and two quantizes per unit gone), held-out cosine 0.9818
    -> 0.9814; shufflenet_v1 2.10x -> 2.68x. Here: every shuffle half is an int8 uint8
    convolution, nothing runs fp32 between the stem and the pooling, the int8 net matches
    fp32 at another input size and reloads bit-identically, and ``exclude`` keeps a
    shuffle as it was."""
    net = _shufflenet()
    batches = image_batches(net, RS, (4, 3, 32, 32), 3)
    qnet = gq.quantize(net, batches[:2], progress=False)
    report = qnet.report()
    halves = [r for r in report if "channel shuffle" in r.reason]
    assert len(halves) == 2 * 2 + 1, report     # two units read the halves, the last whole
    assert all(r.quantized and r.op == "Convolution" for r in halves), report
    assert all(r.dtype == "uint8" and r.pattern == "Convolution+Activation(relu)"
               for r in halves), report
    moved = [r.layer for r in report if r.op in ("transpose", "Reshape", "slice_axis")]
    assert moved == [], report
    # the first unit's halves of the stem's output: the stem as two convolutions
    assert len([r for r in report if "channel slices" in r.reason]) == 2, report
    assert_matches_and_reloads(net, qnet, (
        batches[2], mx.nd.array(RS.uniform(0, 1, (2, 3, 40, 24)).astype("float32"))),
        tmp_path, min_cosine=0.995)
    kept = gq.quantize(net, batches[:2], progress=False, exclude=["*unit1_swapaxes0"])
    ops = [r.op for r in kept.report()]
    assert ops.count("SwapAxis") == 1 and ops.count("Reshape") == 2, kept.report()
