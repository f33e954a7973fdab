"""PReLU run as a leaky ReLU or a maximum (gluon_quant.graph.prelu)."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant._mxnet import infer_graph_shapes, param_reader
from gluon_quant.backends import ONEDNN
from gluon_quant.debug.metrics import cosine
from gluon_quant.graph.passes import PassContext
from gluon_quant.graph.prelu import prelu_as_leaky

RS = np.random.RandomState(0)


def _prelu_net(slopes):
    """conv -> BN -> PReLU twice, a dense layer and a PReLU over its (N, C) output; the
    slopes of the first PReLU are set to ``slopes`` (None: Gluon's one shared slope)."""
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1, use_bias=False), nn.BatchNorm(),
                nn.PReLU(in_channels=8) if slopes is not None else nn.PReLU(),
                nn.Conv2D(16, 3, strides=2, padding=1), nn.PReLU(in_channels=16),
                nn.Flatten(), nn.Dense(12), nn.PReLU(in_channels=12))
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(RS.uniform(-1, 1, (4, 3, 10, 10)).astype("float32"))
    net(x)
    for block in net:
        if isinstance(block, nn.PReLU):
            alpha = block.alpha
            alpha.set_data(mx.nd.array(RS.uniform(-0.3, 0.9, alpha.shape)))
    if slopes is not None:
        net[2].alpha.set_data(mx.nd.array(slopes))
    net[1].running_var.set_data(mx.nd.array(RS.uniform(0.5, 2, (8,))))
    return net, x


def _run(graph, arrays):
    sym = mx.sym.load_json(json.dumps(graph))
    run = sym.bind(mx.cpu(), {k: arrays[k] for k in sym.list_arguments()},
                   aux_states={k: arrays[k] for k in sym.list_auxiliary_states()})
    return run.forward()[0].asnumpy()


@pytest.mark.parametrize("slopes, first", [
    (None, "LeakyReLU"),                                   # one slope: leaky
    ([0.2] * 8, "LeakyReLU"),                              # one value in every channel
    (np.linspace(-0.5, 1.0, 8), "broadcast_maximum"),      # all <= 1
    (np.linspace(1.0, 3.0, 8), "broadcast_minimum"),       # all >= 1
    (np.linspace(0.5, 1.5, 8), "LeakyReLU")])              # both sides of 1: left alone
def test_the_rewrite_is_bit_exact(slopes, first):
    """Each form computes what MXNet's PReLU does, to the bit; slopes on both sides of 1
    keep the PReLU."""
    net, x = _prelu_net(slopes)
    graph = json.loads(net(mx.sym.var("data")).tojson())
    params = {p.name: p.data() for p in net.collect_params().values()}
    ref = _run(graph, dict(params, data=x))
    context = PassContext(spec=ONEDNN, param_shapes={k: v.shape for k, v in params.items()},
                          infer_shapes=lambda g: infer_graph_shapes(g, {"data": x.shape}),
                          param_value=param_reader(net))
    assert prelu_as_leaky(graph, context) == {}
    acts = [n for n in graph["nodes"] if n["op"] in (
        "LeakyReLU", "broadcast_maximum", "broadcast_minimum")]
    assert acts[0]["op"] == first and len(acts) == 3, [n["op"] for n in acts]
    if slopes is not None and first == "LeakyReLU":
        assert acts[0]["attrs"]["act_type"] == ("leaky" if np.ptp(slopes) == 0 else "prelu")
    assert [a["op"] for a in acts[1:]] == ["broadcast_maximum"] * 2
    assert len(context.rewritten) == 3 - (first == "LeakyReLU" and slopes is not None
                                          and np.ptp(slopes) > 0)
    for step in context.param_rewrites:     # the slopes shaped (1, C, 1, 1) or (1, C)
        step.apply(params)
    assert len(context.param_rewrites) == sum(a["op"] != "LeakyReLU" for a in acts)
    assert np.array_equal(ref, _run(graph, dict(params, data=x)))


def test_prelu_nets_fuse_and_run_in_int8(tmp_path):
    """conv+BN+PReLU with Gluon's one shared slope ended every int8 region (MXNet's PReLU
    has no int8 kernel and fuses with nothing): it fuses as a leaky ReLU; per-channel
    slopes run as a maximum after the int8 convolution. Excluding a PReLU keeps it."""
    net, x = _prelu_net(None)
    batches = [mx.nd.array(RS.uniform(-1, 1, x.shape).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    rows = list(qnet.report())
    assert rows[0].pattern == "Convolution+BatchNorm+LeakyReLU(leaky)" and rows[0].quantized, \
        qnet.report()
    assert "LeakyReLU(prelu)" not in [r.pattern for r in rows], qnet.report()
    assert any("PReLU with per-channel slopes <= 1 run as maximum" in r.reason for r in rows)
    assert cosine(net(batches[2]).asnumpy(), qnet(batches[2]).asnumpy()) > 0.999
    qnet.export(str(tmp_path / "prelu"))
    back = gq.QuantizedSymbolBlock.imports(str(tmp_path / "prelu"))
    assert np.array_equal(back(batches[2]).asnumpy(), qnet(batches[2]).asnumpy())
    kept = gq.quantize(net, batches[:2], exclude=[net[2].name], progress=False)
    assert "LeakyReLU(prelu)" in [r.pattern for r in kept.report()], kept.report()


def test_per_channel_slopes_before_a_shape_checking_operator():
    """SRGAN's head PReLU comes before a ``depth_to_space``, whose shape function fails on
    an input of unknown shape: the slopes' copy must carry its shape (no broadcast infers
    it), or the fused graph failed MXNet's shape inference ("requires exactly 4D")."""
    class Up(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.head = nn.Conv2D(8, 3, padding=1)
                self.act = nn.PReLU(mx.init.Uniform(0.3), in_channels=8)
                self.conv = nn.Conv2D(32, 3, padding=1)
                self.tail = nn.Conv2D(3, 3, padding=1)

        def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
            return self.tail(F.depth_to_space(self.conv(self.act(self.head(x))), 2))

    net = Up()
    net.initialize(mx.init.Xavier())
    batches = [mx.nd.array(RS.uniform(-1, 1, (2, 3, 8, 8)).astype("float32")) for _ in range(3)]
    qnet = gq.quantize(net, batches[:2], progress=False)
    assert any("maximum(x, slope * x)" in r.reason for r in qnet.report()), qnet.report()
    assert cosine(net(batches[2]).asnumpy(), qnet(batches[2]).asnumpy()) > 0.999
