"""ReLU and ReLU6 spelled with scalar bounds run as relu/clip (gluon_quant.graph.clamps)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.backends import ONEDNN
from gluon_quant.debug.metrics import cosine
from gluon_quant.graph.clamps import clamps_as_activations, hard_sigmoids
from gluon_quant.graph.passes import PassContext
from _checks import image_batches

RS = np.random.RandomState(0)

FORMS = {
    "maximum(x, 0)": (lambda F, x: F.maximum(x, 0), ["relu"]),
    "minimum(relu(x), 6)": (lambda F, x: F.minimum(F.relu(x), 6), ["clip"]),
    "minimum(maximum(x, 0), 6)": (lambda F, x: F.minimum(F.maximum(x, 0), 6), ["clip"]),
    "relu(minimum(x, 6))": (lambda F, x: F.relu(F.minimum(x, 6.0)), ["clip"]),
    "clip(relu(x), 0, 6)": (lambda F, x: F.clip(F.relu(x), 0, 6), ["clip"]),
    "clip(Activation(relu), -1, 2)": (
        lambda F, x: F.clip(F.Activation(x, act_type="relu"), -1, 2), ["clip"]),
    # left alone: a negative upper bound, a bound below a ReLU's other reader, a maximum
    # with another value, a minimum before a clip
    "minimum(relu(x), -1)": (lambda F, x: F.minimum(F.relu(x), -1), ["relu", "_minimum_scalar"]),
    "relu read twice": (lambda F, x: (lambda r: F.minimum(r, 6) + r)(F.relu(x)),
                        ["relu", "_minimum_scalar", "elemwise_add"]),
    "maximum(x, 0.5)": (lambda F, x: F.maximum(x, 0.5), ["_maximum_scalar"]),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_spelling_computes_what_it_did(form):
    """The rewritten graph gives the traced graph's values (inputs without NaN)."""
    function, expected = FORMS[form]
    x = mx.sym.var("data")
    graph = json.loads(function(mx.sym, x).tojson())
    data = mx.nd.array(RS.uniform(-9, 9, (4, 3, 5, 5)).astype("float32"))
    ref = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    assert clamps_as_activations(graph, PassContext(spec=ONEDNN)) == {}
    assert [n["op"] for n in graph["nodes"] if n["op"] != "null"] == expected
    out = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    assert np.array_equal(ref, out)


def test_relu6_spelled_with_bounds_fuses_into_the_convolution():
    """conv+BN+``F.minimum(F.relu(x), 6)`` left an fp32 ``_minimum_scalar`` after every
    fused convolution (a 6-layer net at batch 16, 112 px: 3.30x fp32 in int8; 5.77x
    fused); ``exclude`` keeps a spelling as it is."""
    net = nn.HybridSequential()
    for channels in (8, 16):
        net.add(nn.Conv2D(channels, 3, padding=1), nn.BatchNorm(),
                nn.HybridLambda(lambda F, x: F.minimum(F.relu(x), 6)))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(4))
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (4, 3, 10, 10)).astype("float32"))
               for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    patterns = [r.pattern for r in qnet.report()]
    assert patterns[:2] == ["Convolution+BatchNorm+clip(0,6)"] * 2, qnet.report()
    assert "_minimum_scalar" not in patterns
    assert cosine(net(batches[2]).asnumpy(), qnet(batches[2]).asnumpy()) > 0.999
    kept = gq.quantize(net, batches[:2], exclude=["_minimum_scalar"], progress=False)
    assert "_minimum_scalar" in [r.op for r in kept.report()], kept.report()


HARD_SIGMOIDS = {
    "clip(x + 3, 0, 6) / 6 (GluonCV)": (lambda F, x: F.clip(x + 3, 0, 6) / 6, True),
    "clip(x + 3, 0, 6) * (1/6)": (lambda F, x: F.clip(x + 3, 0, 6) * (1 / 6.0), True),
    "hard swish": (lambda F, x: x * (F.clip(x + 3, 0, 6) / 6), True),
    "hard swish left to right": (lambda F, x: x * F.clip(x + 3, 0, 6) / 6, True),
    "hard swish left to right, * (1/6)": (
        lambda F, x: x * F.clip(x + 3, 0, 6) * (1 / 6.0), True),
    "hard swish, clip first": (lambda F, x: F.clip(x + 3, 0, 6) * x / 6, True),
    "hard swish of another tensor": (
        lambda F, x: F.broadcast_mul(x + 1, F.clip(x + 3, 0, 6)) / 6, True),
    # left alone: a bound that is not the divisor, a clip read twice
    "clip(x + 3, 0, 6) / 3": (lambda F, x: F.clip(x + 3, 0, 6) / 3, False),
    "clip read twice": (lambda F, x: (lambda c: c / 6 + c)(F.clip(x + 3, 0, 6)), False),
    "product read twice": (
        lambda F, x: (lambda p: p / 6 + p)(x * F.clip(x + 3, 0, 6)), False),
}


@pytest.mark.parametrize("form", sorted(HARD_SIGMOIDS))
def test_hard_sigmoid_spellings_run_as_one_hard_sigmoid(form):
    """``clip(x + b, 0, c) / c`` is ``hard_sigmoid(x, 1/c, b/c)``, rounded once."""
    function, rewritten = HARD_SIGMOIDS[form]
    graph = json.loads(function(mx.sym, mx.sym.var("data")).tojson())
    before = json.loads(json.dumps(graph))
    data = mx.nd.array(RS.uniform(-9, 9, (4, 3, 5, 5)).astype("float32"))
    assert hard_sigmoids(graph, PassContext(spec=ONEDNN)) == {}
    ops = [n["op"] for n in graph["nodes"] if n["op"] != "null"]
    assert ("hard_sigmoid" in ops) == rewritten and ("clip" in ops) != rewritten, ops
    assert rewritten or graph == before
    ref = mx.sym.load_json(json.dumps(before)).eval(data=data)[0].asnumpy()
    out = mx.sym.load_json(json.dumps(graph)).eval(data=data)[0].asnumpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("swish", [lambda F, x: x * (F.clip(x + 3, 0, 6) / 6),
                                   lambda F, x: x * F.clip(x + 3, 0, 6) / 6],
                         ids=["GluonCV", "left to right"])
def test_mobilenetv3_hard_swish_is_one_pass(swish):
    """GluonCV's MobileNetV3 hard sigmoid/swish ran ``+ 3``, ``clip``, ``/ 6`` in fp32
    between int8 convolutions (random-weight mobilenetv3_small, batch 16 at 224 px: 1.52x
    fp32 in int8; 2.19x as ``hard_sigmoid``; large: 1.88x -> 2.37x); so did the hard
    swish written left to right, ``x * F.clip(x + 3, 0, 6) / 6``."""
    net = nn.HybridSequential()
    for channels in (8, 16):
        net.add(nn.Conv2D(channels, 3, padding=1, use_bias=False), nn.BatchNorm(),
                nn.HybridLambda(swish))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(4))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    batches = image_batches(net, rs, (4, 3, 10, 10), 3, low=-1.0)
    qnet = gq.quantize(net, batches[:2], progress=False)
    ops = [r.op for r in qnet.report()]
    assert ops.count("hard_sigmoid") == 2 and not {"clip", "_plus_scalar",
                                                    "_div_scalar"} & set(ops), ops
    assert all(r.quantized for r in qnet.report() if r.op == "Convolution")
    assert cosine(net(batches[2]).asnumpy(), qnet(batches[2]).asnumpy()) > 0.999
    kept = gq.quantize(net, batches[:2], exclude=["_div_scalar"], progress=False)
    assert [r.op for r in kept.report()].count("clip") == 2
