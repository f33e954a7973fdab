"""int8 kernels that sum pairs of products in saturating int16 (gluon_quant.graph.saturation).

On CPUs without VNNI, oneDNN 2.4.4 multiplies uint8 x int8 with ``vpmaddubsw``: two
neighbouring input channels' products are added into a saturating int16. The probe
(:func:`gluon_quant.kernels.int16_pair_sums`) says whether this process's kernels do; the
tests force it on (the passes then run on any machine: 7-bit codes are exact everywhere)
and check, where the machine saturates, that MXNet's result without them is wrong.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant import _mxnet, kernels
from gluon_quant.graph import saturation

SATURATES = kernels.int16_pair_sums()


@pytest.fixture
def pairs(monkeypatch):
    """Run the saturation passes whether or not this CPU needs them (``True``), or not at
    all (``False``)."""
    def force(value):
        monkeypatch.setattr(kernels, "int16_pair_sums", lambda: value)
    return force


def _final_nodes(qnet):
    return _mxnet.graph_json(qnet._model.symbol)["nodes"]


class Act(nn.HybridBlock):
    def __init__(self, kind, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def hybrid_forward(self, F, x):
        return F.clip(x, 0, 6) if self.kind == "relu6" else F.Activation(x, act_type=self.kind)


def _two_convs(act, scale=1.0):
    """A 1x1 convolution of 16 channels, ``act``, and a 1x1 convolution whose weights and
    (mostly) inputs sit at their largest codes: 16 products of 255 x 127."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 1, in_channels=16, use_bias=False), Act(act),
            nn.Conv2D(4, 1, in_channels=16, use_bias=False))
    net.initialize()
    net[0].weight.set_data(mx.nd.array(np.eye(16).reshape(16, 16, 1, 1) * scale))
    net[2].weight.set_data(mx.nd.ones((4, 16, 1, 1)))
    net.hybridize()
    x = np.ones((2, 16, 3, 3), "float32")
    x[1] *= 0.5
    return net, x


def test_the_probe_agrees_with_an_int8_convolution_at_its_largest_codes():
    # 16 filters: with a number of filters that is not a multiple of 16 the standalone
    # operator runs oneDNN's AVX2 kernel even on a VNNI CPU (measured: 8 filters summed
    # saturated pairs on an AVX-512 VNNI EPYC); the fused convolutions of an int8 graph
    # pad their weights and keep the VNNI kernel for any number of filters.
    data = mx.nd.full((1, 32, 2, 2), 255, dtype="uint8")
    weight = mx.nd.full((16, 32, 1, 1), 127, dtype="int8")
    out = mx.nd.contrib.quantized_conv(
        data, weight, mx.nd.array([0.0]), mx.nd.array([255.0]), mx.nd.array([-127.0]),
        mx.nd.array([127.0]), kernel=(1, 1), num_filter=16, no_bias=True)[0].asnumpy()
    exact = 32 * 255 * 127
    assert (out.max() < exact) == SATURATES
    if SATURATES:       # 16 pairs, each held at 32767
        assert out.max() == 16 * 32767


@pytest.mark.skipif(not SATURATES, reason="this CPU's int8 kernels sum in int32 (VNNI)")
def test_without_the_pass_a_saturating_cpu_halves_the_result(pairs):
    pairs(False)
    net, x = _two_convs("relu")
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    out, ref = qnet(mx.nd.array(x)).asnumpy(), net(mx.nd.array(x)).asnumpy()
    assert out[0].max() < 0.55 * ref[0].max()          # 64 for 128


@pytest.mark.parametrize("filters", [4, 8, 16, 24, 40])
def test_fused_int8_convolutions_sum_right_for_any_number_of_filters(filters):
    # The process's own decision (nothing forced): 32 input channels at their largest
    # uint8 code times weights at 127 must give 32, not the 16 of saturated pairs, whether
    # oneDNN runs VNNI (any number of filters) or its AVX2 kernel (7-bit inputs).
    net = nn.HybridSequential()
    net.add(nn.Conv2D(32, 1, in_channels=32, use_bias=False), Act("relu"),
            nn.Conv2D(filters, 1, in_channels=32, use_bias=False))
    net.initialize()
    net[0].weight.set_data(mx.nd.array(np.eye(32).reshape(32, 32, 1, 1)))
    net[2].weight.set_data(mx.nd.ones((filters, 32, 1, 1)))
    net.hybridize()
    x = np.ones((2, 32, 3, 3), "float32")
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    out = qnet(mx.nd.array(x)).asnumpy()
    assert sum(n["op"] == "_sg_mkldnn_conv" and n["attrs"].get("quantized") == "true"
               for n in _final_nodes(qnet)) == 2
    np.testing.assert_allclose(out, 32.0, rtol=0.02)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "relu6"])
def test_uint8_inputs_of_pair_summing_layers_get_7_bit_codes(pairs, act):
    pairs(True)
    net, x = _two_convs(act, scale=8.0 if act == "relu6" else 1.0)
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    out, ref = qnet(mx.nd.array(x)).asnumpy(), net(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(out, ref, rtol=0.02)
    nodes = _final_nodes(qnet)
    copies = [n for n in nodes if n["name"].endswith("_7bit")]
    if act == "relu6":
        # the clip is the convolution's output range (MXNet): the reader gets a copy
        assert len(copies) == 1 and copies[0]["op"] == "_contrib_quantize_v2"
        assert float(copies[0]["attrs"]["max_calib_range"]) == pytest.approx(6 * 255 / 127)
    else:       # widened where it is set: the first convolution, the quantize after sigmoid
        second = [n for n in nodes if n["op"] == "_sg_mkldnn_conv"][-1]
        setter = nodes[second["inputs"][0][0]]
        assert not copies
        assert float(setter["attrs"]["max_calib_range"]) == pytest.approx(
            float(ref.max() / 16) * 255 / 127, rel=1e-5)


def test_a_clip_cut_off_by_its_range_keeps_its_bound(pairs):
    """Widening a ReLU6 convolution's range would let values above 6 through."""
    pairs(True)
    net, x = _two_convs("relu6", scale=10.0)     # 10 and 5 before the clip: 6 and 5
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    x[0] = 2.0                                   # 20: still cut to 6, not to 12
    out, ref = qnet(mx.nd.array(x)).asnumpy(), net(mx.nd.array(x)).asnumpy()
    assert ref[0].max() == 96
    np.testing.assert_allclose(out, ref, rtol=0.02)


def test_a_depthwise_reader_leaves_its_input_8_bit(pairs):
    pairs(True)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 1, in_channels=16, activation="relu"),
            nn.Conv2D(16, 3, padding=1, groups=16, in_channels=16))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = np.random.RandomState(0).randn(2, 16, 6, 6).astype("float32")
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    first = next(n for n in _final_nodes(qnet) if n["op"] == "_sg_mkldnn_conv")
    fp32 = net[0](mx.nd.array(x)).asnumpy()
    assert float(first["attrs"]["max_calib_range"]) == pytest.approx(float(fp32.max()), rel=1e-4)


def test_dense_layers_with_signed_inputs_read_them_shifted_into_uint8(pairs, tmp_path):
    """oneDNN shifts an int8 input of a dense layer to uint8 itself, where no range keeps
    the pairs from saturating: the input is shifted by its range first (x + T, 7-bit
    uint8 codes) and the bias takes it back (b - T * sum of each row of W)."""
    pairs(True)
    net = nn.HybridSequential()
    net.add(nn.Dense(64, in_units=64), nn.Dense(16, in_units=64))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = np.random.RandomState(0).randn(256, 64).astype("float32")
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    assert all(r.quantized for r in qnet.report())
    nodes = _final_nodes(qnet)
    shifts = [n for n in nodes if n["op"] == "_plus_scalar"]
    assert len(shifts) == 2
    assert float(shifts[0]["attrs"]["scalar"]) == pytest.approx(float(np.abs(x).max()), 1e-3)
    biases = [n["name"] for n in nodes if n["name"].endswith("_shifted_bias")]
    assert len(biases) == 2
    out, ref = qnet(mx.nd.array(x)).asnumpy(), net(mx.nd.array(x)).asnumpy()
    cos = float((out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref))
    assert cos > 0.999
    qnet.export(str(tmp_path / "shifted"))
    loaded = gq.QuantizedSymbolBlock.imports(str(tmp_path / "shifted"))
    assert np.array_equal(loaded(mx.nd.array(x)).asnumpy(), out)


def test_a_dense_layer_without_bias_and_signed_input_stays_fp32_and_says_why(pairs):
    pairs(True)
    net = nn.HybridSequential()
    net.add(nn.Dense(256, in_units=256, activation="relu"),
            nn.Dense(256, in_units=256, use_bias=False))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = np.random.RandomState(0).randn(64, 256).astype("float32")
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    first, second = [r for r in qnet.report() if r.op == "FullyConnected"]
    assert first.quantized                                # shifted: it has a bias
    assert second.quantized                               # reads a relu: no shift needed
    net2 = nn.HybridSequential()
    net2.add(nn.Dense(256, in_units=256), nn.Dense(256, in_units=256, use_bias=False))
    net2.initialize(mx.init.Xavier())
    qnet2 = gq.quantize(net2, [x], calibrator="minmax", progress=False)
    last = [r for r in qnet2.report() if r.op == "FullyConnected"][-1]
    assert last.reason == saturation.SIGNED_DENSE_REASON and not last.quantized


def test_the_same_net_without_saturation_keeps_every_dense_layer_int8(pairs):
    pairs(False)
    net = nn.HybridSequential()
    net.add(nn.Dense(256, in_units=256, activation="relu"), nn.Dense(256, in_units=256))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = np.random.RandomState(0).randn(64, 256).astype("float32")
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    assert all(r.quantized for r in qnet.report() if r.op == "FullyConnected")
    assert not [n for n in _final_nodes(qnet) if n["op"] == "_plus_scalar"]


def test_non_negative_inputs_are_proved_through_sign_keeping_operators():
    g = {"nodes": [{"op": "null", "name": "x", "inputs": []},
                   {"op": "Activation", "name": "r", "attrs": {"act_type": "relu"},
                    "inputs": [[0, 0, 0]]},
                   {"op": "Pooling", "name": "p", "inputs": [[1, 0, 0]]},
                   {"op": "Flatten", "name": "f", "inputs": [[2, 0, 0]]},
                   {"op": "Activation", "name": "t", "attrs": {"act_type": "tanh"},
                    "inputs": [[0, 0, 0]]},
                   {"op": "Concat", "name": "c", "inputs": [[3, 0, 0], [4, 0, 0]]}]}
    seen = {}
    assert saturation._non_negative(g["nodes"], 3, seen)
    assert not saturation._non_negative(g["nodes"], 5, seen)     # tanh can be negative
    assert not saturation._non_negative(g["nodes"], 0, seen)     # an input: unknown


def test_a_model_built_for_vnni_warns_when_loaded_where_pairs_saturate(pairs, tmp_path, caplog):
    net, x = _two_convs("relu")
    pairs(False)
    qnet = gq.quantize(net, [x], calibrator="minmax", progress=False)
    qnet.export(str(tmp_path / "vnni"))
    pairs(True)
    qnet2 = gq.quantize(net, [x], calibrator="minmax", progress=False)
    qnet2.export(str(tmp_path / "here"))
    with caplog.at_level("WARNING", logger="gluon_quant.symbol_block"):
        gq.QuantizedSymbolBlock.imports(str(tmp_path / "here"))
        assert "VNNI" not in caplog.text
        gq.QuantizedSymbolBlock.imports(str(tmp_path / "vnni"))
    assert "no VNNI" in caplog.text and "Quantize on this machine" in caplog.text
