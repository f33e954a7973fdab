"""The safety net: an int8 layer that fails when the graph first runs is kept fp32."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import fallback
from gluon_quant.debug.metrics import all_outputs, cosine
from conftest import PAIRS_SATURATE, coverage


class IntegerProducts(nn.HybridBlock):
    """A head multiplying int64 top-k indices, as CenterNet's decoder does: MXNet quantizes
    the product, and its quantize node refuses int64 data only when the graph runs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(4, 3, padding=1, in_channels=3)
            self.dense = nn.Dense(5)

    def hybrid_forward(self, F, x):
        feat = self.conv(x)
        idx = F.topk(F.reshape(x, (0, -1)), k=8, ret_typ="indices", dtype="int64")
        rows, cols = F.split(idx, num_outputs=2, axis=1)
        return self.dense(feat), rows * cols


@pytest.fixture
def integer_net(disable_pass, int8_products):
    """The net, with what keeps its product fp32 switched off (the integer-inputs pass,
    and the spec's rule for elemwise_mul): the safety net is for the failures no pass
    knows yet."""
    disable_pass("integer_inputs")
    mx.random.seed(2)
    net = IntegerProducts()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(2).rand(8, 3, 6, 6).astype("float32"))
    net(x)
    return net, x


def _check(net, qnet, x):
    ref, out = all_outputs(net(x)), all_outputs(qnet(x))
    assert cosine(ref[0].asnumpy(), out[0].asnumpy()) > 0.99
    assert np.array_equal(ref[1].asnumpy(), out[1].asnumpy())      # integers, exactly
    product = [r for r in qnet.report() if r.op == "elemwise_mul"]
    assert len(product) == 1 and not product[0].quantized
    assert product[0].reason.startswith("its int8 kernel failed at the first run: ")
    assert "quantize" in product[0].reason                    # MXNet's own words
    conv = [r for r in qnet.report() if r.op == "Convolution"]
    assert conv and all(r.quantized for r in conv)            # the rest stays int8


def test_layer_named_by_mxnet_goes_back_to_fp32(integer_net, caplog):
    net, x = integer_net
    qnet = gq.quantize(net, [x[:4], x[4:]], progress=False)
    _check(net, qnet, x)
    assert "failed at the first run" in caplog.text and "kept fp32" in caplog.text


def test_bisection_finds_the_layer_when_mxnet_names_none(integer_net, monkeypatch, caplog):
    net, x = integer_net
    monkeypatch.setattr(fallback, "_named_layers", lambda model, error: set())
    qnet = gq.quantize(net, [x[:4], x[4:]], progress=False)
    _check(net, qnet, x)
    # Its first trial keeps every int8 layer fp32: not the user's net, no warning about it
    assert "kept fp32" in caplog.text and "No layer of" not in caplog.text


def test_gives_up_with_mxnets_words_not_blaming_the_data(integer_net, monkeypatch):
    net, x = integer_net
    monkeypatch.setattr(fallback, "MAX_FALLBACKS", 0)
    with pytest.raises(gq.ModelExecutionError,
                       match="fails inside MXNet when it runs.*not a problem with your data"):
        gq.quantize(net, [x[:4], x[4:]], progress=False)


def test_the_integer_inputs_pass_prevents_it_before_mxnet_runs(int8_products):
    mx.random.seed(2)
    net = IntegerProducts()
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(np.random.RandomState(2).rand(8, 3, 6, 6).astype("float32"))
    qnet = gq.quantize(net, [x], progress=False)
    product = next(r for r in qnet.report() if r.op == "elemwise_mul")
    assert product.reason == "reads int64 tensors; int8 quantization is for float tensors"


def test_a_graph_mxnet_cannot_run_with_static_memory_runs_without_it(tmp_path, caplog):
    """resnet18_v1 on 8x8 inputs (1x1 feature maps from its third stage on): MXNet's static
    CachedOp fails at the second call ("We can't generate TBlob for MKLDNN data") with
    every convolution and dense layer in fp32 as well, so no layer is to blame, and
    quantize() raised ModelExecutionError. Without static memory the graph runs."""
    from gluoncv.model_zoo import get_model
    mx.random.seed(0)
    net = get_model("resnet18_v1", pretrained=False, classes=10)
    net.initialize(mx.init.Xavier())
    rs = np.random.RandomState(0)
    x, *more = [mx.nd.array(rs.rand(4, 3, 8, 8).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, [x] + more, progress=False)
    # The calibration pass (the fused fp32 graph, second batch) and the int8 graph both
    # fall back to running without static memory (oneDNN's AVX-512 layouts: its AVX2
    # kernels, where int8 pairs saturate, fail elsewhere, and the fallback handles that)
    if not PAIRS_SATURATE:
        assert "the fp32 graph with static memory" in caplog.text
        assert "runs without static memory" in caplog.text
    assert coverage(qnet.report()) == (21, 21)
    outs = [qnet(x).asnumpy() for _ in range(3)]
    assert all(np.array_equal(out, outs[0]) for out in outs)
    assert cosine(net(x).asnumpy(), outs[0]) > 0.99
    qnet.export(str(tmp_path / "m"))       # the mark travels with the graph
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "m"))
    for _ in range(3):
        np.testing.assert_array_equal(loaded(x).asnumpy(), outs[0])
    # The doctor's timing runs the fused fp32 graph as the int8 one runs (it failed too).
    assert qnet.report(timing=x).totals[0] > 0
    for block in (qnet, loaded):    # a user's hybridize() keeps the graph's own setting
        block.hybridize(static_alloc=True, static_shape=True)
        for _ in range(3):
            np.testing.assert_array_equal(block(x).asnumpy(), outs[0])
