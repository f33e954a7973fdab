"""fp32 max poolings of dequantized int8 tensors run as int8 poolings (graph/maxpools.py)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.graph.maxpools import _never_decreases
from _checks import image_batches

RS = np.random.RandomState(3)

#: The function between the heatmap's convolution and its peak picking, and whether the
#: pooling then runs in int8.
FUNCTIONS = {
    "sigmoid (CenterNet)": (lambda F, h: F.sigmoid(h), True),
    "none": (lambda F, h: h, True),
    "tanh then ELU": (lambda F, h: F.LeakyReLU(F.tanh(h), act_type="elu"), True),
    "hard sigmoid": (lambda F, h: F.hard_sigmoid(h), True),
    # left alone: functions that decrease somewhere
    "GELU": (lambda F, h: F.LeakyReLU(h, act_type="gelu"), False),
    "leaky, negative slope": (lambda F, h: F.LeakyReLU(h, act_type="leaky", slope=-0.5), False),
}


class PeakNet(nn.HybridBlock):
    """A CenterNet-style head written by hand: peaks of a heatmap by comparing it with
    its own 3x3 max pooling, and the heatmap's logits as a second output."""

    def __init__(self, function, **kwargs):
        super().__init__(**kwargs)
        self.function = function
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(16, 3, strides=2, padding=1, use_bias=False),
                          nn.BatchNorm(), nn.Activation("relu"),
                          nn.Conv2D(16, 3, padding=1, use_bias=False), nn.BatchNorm(),
                          nn.Activation("relu"))
            self.heatmap = nn.Conv2D(4, 1)

    def hybrid_forward(self, F, x):
        logits = self.heatmap(self.body(x))
        heat = self.function(F, logits)
        pooled = F.Pooling(heat, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="max")
        return heat * F.broadcast_equal(pooled, heat), logits


def _net(function):
    net = PeakNet(function)
    net.initialize(mx.init.Xavier(magnitude=3))
    return net, image_batches(net, RS, (2, 3, 48, 48), 3, low=-1.0)


def _pool_row(qnet):
    return next(r for r in qnet.report() if r.pattern == "Pooling(max)")


@pytest.mark.parametrize("form", sorted(FUNCTIONS))
def test_peak_picking_pools_in_int8_with_the_same_values(form, tmp_path, disable_pass):
    """The pooling runs as ``_contrib_quantized_pooling`` on the convolution's int8
    output (then the function again) and every output is bit-identical to the int8 net
    without the pass, at the calibrated size and at a 2.5x larger one (a map of 120x120,
    where oneDNN's fp32 pooling of a plain array is its reference kernel), and after
    export; the functions that decrease somewhere keep the fp32 pooling."""
    function, rewritten = FUNCTIONS[form]
    net, batches = _net(function)
    qnet = gq.quantize(net, batches[:2], progress=False)
    row = _pool_row(qnet)
    ops = {n["name"]: n["op"] for n in _mxnet.graph_json(qnet.quantized_graph)["nodes"]}
    assert (ops.get("quantized_" + row.node) == "_contrib_quantized_pooling") == rewritten
    assert (ops.get(row.node) == "Pooling") != rewritten
    assert row.quantized == rewritten, qnet.report()
    assert row.reason.startswith("int8 max pooling of its input's int8 values") == rewritten
    disable_pass("int8_max_pools")
    without = gq.quantize(net, batches[:2], progress=False)
    # the doctor reads the moved pooling's values after the function, as fp32 has them
    errors = [{r.node: r.sqnr_db for r in gq.debug.compare(q, batches[2:], num_batches=1)}
              for q in (qnet, without)]
    assert errors[0][row.node] == errors[1][row.node]
    qnet.export(str(tmp_path / "m"))
    again = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    large = mx.nd.array(RS.uniform(-1, 1, (1, 3, 240, 240)).astype("float32"))
    for x in (batches[2], large):
        outs = [qnet(x), without(x), again(x)]
        for got in outs[1:]:
            assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(outs[0], got))
        peaks = (outs[0][0].asnumpy() != 0).sum()
        assert 0 < peaks < outs[0][0].size / 4     # local maxima only, some in every map


def test_an_excluded_pooling_stays_fp32():
    """``exclude`` names the pooling: it stays the fp32 ``Pooling`` it was."""
    net, batches = _net(FUNCTIONS["sigmoid (CenterNet)"][0])
    name = _pool_row(gq.quantize(net, batches[:2], progress=False)).node
    kept = gq.quantize(net, batches[:2], exclude=[name], progress=False)
    ops = {n["name"]: n["op"] for n in _mxnet.graph_json(kept.quantized_graph)["nodes"]}
    assert ops[name] == "Pooling" and "quantized_" + name not in ops
    assert _pool_row(kept).reason.startswith("excluded by user")


@pytest.mark.parametrize("op, attrs, expected", [
    ("Activation", {"act_type": "sigmoid"}, True),
    ("Activation", {"act_type": "softrelu"}, False),     # monotone, but not its kernel
    ("LeakyReLU", {"act_type": "elu"}, True),
    ("LeakyReLU", {"act_type": "leaky", "slope": "0.1"}, True),
    ("LeakyReLU", {"act_type": "leaky", "slope": "-0.1"}, False),
    ("LeakyReLU", {"act_type": "gelu"}, False),
    ("LeakyReLU", {"act_type": "prelu"}, False),
    ("hard_sigmoid", {"alpha": "-1"}, False),
    ("clip", {"a_min": "0", "a_max": "6"}, True),
    ("exp", {}, False),
])
def test_which_functions_never_decrease(op, attrs, expected):
    node = json.loads(json.dumps({"op": op, "name": "f", "attrs": attrs, "inputs": [[0, 0, 0]]}))
    assert _never_decreases(node) == expected


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "softsign"])
def test_the_kernels_never_decrease_on_int8_grid_values(act):
    """What bit-exactness rests on: oneDNN's fp32 kernel, fed the values a dequantize
    makes (int8 and uint8 levels times a scale, ranges 0.5 to 60), never steps down; its
    softrelu does, and is not taken."""
    def steps_down(act_type):
        down = 0
        for top in np.linspace(0.5, 60, 240):
            for low, levels in ((-127, 127), (0, 255)):
                x = (np.arange(low, levels + 1, dtype=np.float32) * np.float32(top / levels))
                y = mx.nd.Activation(mx.nd.array(x.reshape(1, 1, 1, -1)),
                                     act_type=act_type).asnumpy().ravel()
                down += int((np.diff(y) < 0).sum())
        return down
    assert steps_down(act) == 0
    assert steps_down("softrelu") > 0
