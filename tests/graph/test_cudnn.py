"""backend='cudnn': the int8 graph of MXNet 1.9.1's GPU builds, checked on CPU by structure."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.graph.cudnn import quantize_graph


def _graph(qnet):
    """Nodes of the final graph, round-tripped through JSON as a GPU build would load it."""
    sym = mx.sym.load_json(qnet.quantized_graph.tojson())
    return sym, json.loads(sym.tojson())["nodes"]


def _by_op(nodes, op):
    return [n for n in nodes if n["op"] == op]


def _input_names(node, nodes):
    return [nodes[i[0]]["name"] for i in node["inputs"]]


def _dtypes(sym, **inputs):
    internals = sym.get_internals()
    _, out_types, _ = internals.infer_type(**inputs)
    return {n: np.dtype(t).name for n, t in zip(internals.list_outputs(), out_types)}


def _check_ranges(nodes, table):
    """Every quantize/requantize carries its calibrated range from the table, exactly."""
    for node in _by_op(nodes, "_contrib_quantize_v2") + _by_op(nodes, "_contrib_requantize"):
        attrs = node["attrs"]
        assert attrs["out_type"] == "int8"
        if node["op"] == "_contrib_requantize":
            key = node["name"][len("requantize_"):] + "_output"
        else:
            src = nodes[node["inputs"][0][0]]
            key = src["name"] if src["op"] == "null" else src["name"] + "_output"
        lo, hi = (np.float32(v) for v in table[key])
        assert np.float32(attrs["min_calib_range"]) == lo
        assert np.float32(attrs["max_calib_range"]) == hi


def _check_int8_weights(qnet, names):
    """Offline int8 weights: the fp32 ones rounded symmetrically to 127 steps of max|w|."""
    params = {p.name: p.data() for p in qnet.collect_params().values()}
    fp32 = {p.name: p.data() for p in qnet.net.collect_params().values()}
    for name in names:
        q = params[name + "_quantize"]
        assert q.dtype == np.int8
        w = fp32[name].asnumpy()
        amax = np.float32(np.abs(w).max())
        assert params[name + "_quantize_min"].asscalar() == -amax
        assert params[name + "_quantize_max"].asscalar() == amax
        if amax == 0:            # all-zero bias: range 0, so it dequantizes to 0
            continue
        expected = np.sign(w) * np.floor(np.abs(w) * (np.float32(127) / amax) + np.float32(0.5))
        # Same maths in another float32 operation order: a value exactly on a rounding
        # boundary may land one step away, nothing else.
        diff = np.abs(q.asnumpy().astype(np.int32) - expected.astype(np.int32))
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-4


def test_small_cnn_graph_is_the_gpu_int8_graph(tiny_cnn, tiny_batches):
    qnet = gq.quantize(tiny_cnn, tiny_batches, backend="cudnn", calibrator="minmax",
                       progress=False)
    sym, nodes = _graph(qnet)
    assert "_sg_mkldnn" not in qnet.quantized_graph.tojson()
    # cuDNN int8 needs channel counts that are multiples of 4: conv0 reads 1 channel and
    # dense1 has 10 outputs, so both stay fp32; the other conv and dense go int8.
    assert [n["name"] for n in _by_op(nodes, "_contrib_quantized_conv")] == [
        "quantized_cnn_conv1_fwd"]
    assert [n["name"] for n in _by_op(nodes, "Convolution")] == ["cnn_conv0_fwd"]
    assert [n["name"] for n in _by_op(nodes, "_contrib_quantized_fully_connected")] == [
        "quantized_cnn_dense0_fwd"]
    assert [n["name"] for n in _by_op(nodes, "FullyConnected")] == ["cnn_dense1_fwd"]
    # int8 enters after the fp32 pooling/flatten (cheaper than before them) ...
    quantize = _by_op(nodes, "_contrib_quantize_v2")
    assert [_input_names(n, nodes)[0] for n in quantize] == [
        "cnn_pool0_fwd", "cnn_flatten0_flatten0"]
    # ... and leaves through requantize + dequantize before the fp32 BatchNorm/ReLU.
    assert [n["name"] for n in _by_op(nodes, "_contrib_dequantize")] == [
        "cnn_conv1_fwd_dequantize", "cnn_dense0_fwd_dequantize"]
    by_name = {n["name"]: n for n in nodes}
    assert _input_names(by_name["cnn_batchnorm1_fwd"], nodes)[0] == "cnn_conv1_fwd_dequantize"
    assert _input_names(by_name["cnn_conv1_fwd_dequantize"], nodes) == [
        "requantize_cnn_conv1_fwd"] * 3
    assert _input_names(by_name["cnn_dense0_relu_fwd"], nodes) == ["cnn_dense0_fwd_dequantize"]
    assert len(_by_op(nodes, "BatchNorm")) == 2          # BatchNorm stays fp32 on GPU
    table = qnet.calibration_table
    assert set(table) == {"cnn_pool0_fwd_output", "cnn_conv1_fwd_output",
                          "cnn_flatten0_flatten0_output", "cnn_dense0_fwd_output"}
    _check_ranges(nodes, table)
    _check_int8_weights(qnet, ["cnn_conv1_weight", "cnn_conv1_bias", "cnn_dense0_weight",
                               "cnn_dense0_bias"])
    _, out_shapes, _ = sym.infer_shape(data=(8, 1, 28, 28))
    assert out_shapes == [(8, 10)]
    dtypes = _dtypes(sym, data="float32")
    assert dtypes["cnn_pool0_fwd_quantize_output0"] == "int8"
    assert dtypes["quantized_cnn_conv1_fwd_output"] == "int32"
    assert dtypes["requantize_cnn_conv1_fwd_output0"] == "int8"
    assert dtypes["cnn_conv1_fwd_dequantize_output"] == "float32"
    assert dtypes["cnn_dense1_fwd_output"] == "float32"
    report = qnet.report()
    assert {r.layer for r in report if r.quantized} == {"cnn_conv1", "cnn_dense0"}
    with pytest.raises(gq.GraphError, match="GPU"):
        qnet(mx.nd.array(tiny_batches[0]))


def _aligned_net():
    """Channel counts that are multiples of 4 and no BatchNorm: an int8 chain end to end."""
    net = nn.HybridSequential(prefix="al_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1, in_channels=4), nn.MaxPool2D(2),
                nn.Conv2D(16, 3, padding=1, in_channels=8), nn.Flatten(),
                nn.Dense(12, in_units=16 * 4 * 4), nn.Dense(4, in_units=12))
    net.initialize(mx.init.Xavier())
    return net


def test_int8_chain_without_fp32_islands():
    net = _aligned_net()
    rs = np.random.RandomState(3)
    batches = [rs.randn(2, 4, 8, 8).astype("float32") for _ in range(3)]
    qnet = gq.quantize(net, batches, backend="cudnn", calibrator="minmax", progress=False)
    sym, nodes = _graph(qnet)
    ops = [n["op"] for n in nodes if n["op"] != "null"]
    assert ops == ["_contrib_quantize_v2",
                   "_contrib_quantized_conv", "_contrib_requantize",
                   "_contrib_quantized_pooling",
                   "_contrib_quantized_conv", "_contrib_requantize",
                   "_contrib_quantized_flatten",
                   "_contrib_quantized_fully_connected", "_contrib_requantize",
                   "_contrib_quantized_fully_connected", "_contrib_requantize",
                   "_contrib_dequantize"]
    assert set(qnet.calibration_table) == {
        "data", "al_conv0_fwd_output", "al_conv1_fwd_output", "al_dense0_fwd_output",
        "al_dense1_fwd_output"}
    _check_ranges(nodes, qnet.calibration_table)
    _check_int8_weights(qnet, ["al_conv0_weight", "al_conv1_weight", "al_dense0_weight",
                               "al_dense1_bias"])
    assert sym.infer_shape(data=(2, 4, 8, 8))[1] == [(2, 4)]
    dtypes = _dtypes(sym, data="float32")
    assert dtypes["quantized_al_pool0_fwd_output"] == "int8"
    assert dtypes["quantized_al_flatten0_flatten0_output"] == "int8"


def test_exclusions_and_settings(tiny_cnn, tiny_batches):
    qnet = gq.quantize(tiny_cnn, tiny_batches, backend="cudnn", exclude=["cnn_conv1"],
                       progress=False)
    _, nodes = _graph(qnet)
    assert not _by_op(nodes, "_contrib_quantized_conv")
    assert len(_by_op(nodes, "_contrib_quantized_fully_connected")) == 1
    assert "cnn_conv1_fwd_output" not in qnet.calibration_table
    layer = next(r for r in qnet.report() if r.layer == "cnn_conv1")
    assert not layer.quantized and layer.reason.startswith("excluded by user")
    with pytest.raises(gq.UnsupportedDtypeError, match="uint8.*cudnn"):
        gq.quantize(tiny_cnn, tiny_batches, backend="cudnn", dtype="uint8", progress=False)
    with pytest.raises(gq.ConfigError, match="granularity='channel'"):
        gq.quantize(tiny_cnn, tiny_batches, backend="cudnn", granularity="channel")


@pytest.mark.parametrize("conv, why", [
    (dict(channels=8, kernel_size=3, in_channels=8, groups=2), "num_group"),
    (dict(channels=8, kernel_size=3, in_channels=8, dilation=2), "dilat"),
    (dict(channels=6, kernel_size=3, in_channels=8), "num_filter 6"),
    (dict(channels=8, kernel_size=3, in_channels=3), "input channels 3"),
])
def test_convolutions_cudnn_cannot_run_stay_fp32(conv, why):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(**conv))
    net.initialize()
    sym = net(mx.sym.var("data"))
    shapes = {p.name: p.shape for p in net.collect_params().values()}
    graph, calib, kept = quantize_graph(json.loads(sym.tojson()), param_shapes=shapes)
    assert calib == [] and [n["op"] for n in graph["nodes"] if n["op"] != "null"] == [
        "Convolution"]
    assert why in next(iter(kept.values()))


def test_unknown_weight_shapes_stay_fp32_with_a_warning(caplog):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3))            # in_channels deferred until the first forward
    net.initialize()
    sym = net(mx.sym.var("data"))
    shapes = {p.name: p.shape for p in net.collect_params().values()}
    _, calib, kept = quantize_graph(json.loads(sym.tojson()), param_shapes=shapes)
    assert calib == [] and "weight shape unknown" in next(iter(kept.values()))
    assert "deferred initialization" in caplog.text


def test_net_never_run_gets_its_weight_shapes_from_the_calibration_batch(caplog):
    # quantize() traces a net never run; its deferred weight shapes come from the first
    # batch's shapes (they were "weight shape unknown": nothing ran in int8 on the GPU).
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, activation="relu"), nn.Conv2D(16, 3), nn.GlobalAvgPool2D(),
            nn.Dense(12))
    net.initialize()
    x = np.random.RandomState(0).rand(4, 3, 16, 16).astype("float32")
    rows = [r for r in gq.quantize(net, [x], backend="cudnn", progress=False).report()
            if r.op in ("Convolution", "FullyConnected")]
    assert [r.quantized for r in rows] == [False, True, True]
    assert rows[0].reason == "input channels 3 is not a multiple of 4"
    assert "deferred initialization" not in caplog.text


@pytest.fixture(scope="module")
def resnet18_cudnn():
    from gluoncv.model_zoo import get_model
    from gluon_quant.zoo.batchnorm import reestimate_batchnorm
    mx.random.seed(0)
    net = get_model("resnet18_v1", pretrained=False, prefix="resnetv10_")  # order-proof names
    net.initialize(mx.init.Xavier())
    x = np.random.RandomState(0).rand(2, 3, 224, 224).astype("float32")
    reestimate_batchnorm(net, mx.nd.array(x))
    return gq.quantize(net, [x], backend="cudnn", calibrator="minmax", progress=False)


def test_resnet18_v1_structure(resnet18_cudnn):
    qnet = resnet18_cudnn
    sym, nodes = _graph(qnet)
    assert "_sg_mkldnn" not in qnet.quantized_graph.tojson()
    convs = _by_op(nodes, "_contrib_quantized_conv")
    # Every convolution but the first (3 RGB channels, not a multiple of 4) is int8.
    assert len(convs) == 19
    assert [n["name"] for n in _by_op(nodes, "Convolution")] == ["resnetv10_conv0_fwd"]
    assert len(_by_op(nodes, "_contrib_quantized_fully_connected")) == 1
    assert not _by_op(nodes, "FullyConnected")
    assert len(_by_op(nodes, "_contrib_requantize")) == 20
    assert len(_by_op(nodes, "_contrib_dequantize")) == 20
    assert len(_by_op(nodes, "BatchNorm")) == 20
    for conv in convs:           # data comes from an int8 quantize, weights are int8
        src = nodes[conv["inputs"][0][0]]
        assert src["op"] == "_contrib_quantize_v2"
        assert _input_names(conv, nodes)[1].endswith("_weight_quantize")
    _check_ranges(nodes, qnet.calibration_table)
    names = [n["name"][len("quantized_"):-len("_fwd")] + "_weight" for n in convs]
    _check_int8_weights(qnet, names[:3] + ["resnetv10_dense0_weight", "resnetv10_dense0_bias"])
    assert sym.infer_shape(data=(1, 3, 224, 224))[1] == [(1, 1000)]
    dtypes = _dtypes(sym, data="float32")
    for node in _by_op(nodes, "_contrib_requantize") + _by_op(nodes, "_contrib_quantize_v2"):
        assert dtypes[node["name"] + "_output0"] == "int8"
    report = qnet.report()
    assert sum(r.quantized for r in report) == 20
    with pytest.raises(gq.GraphError, match="GPU"):
        qnet(mx.nd.zeros((1, 3, 224, 224)))
