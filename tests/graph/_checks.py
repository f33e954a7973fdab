"""Checks the rewrite tests share: an int8 net against its fp32 net and its export."""
import json

import mxnet as mx
import numpy as np

import gluon_quant as gq
from gluon_quant.debug.metrics import cosine
from conftest import PAIRS_SATURATE


def assert_matches_and_reloads(net, qnet, inputs, path, min_cosine=0.999):
    """``qnet`` (int8) agrees with ``net`` (fp32) on every input of ``inputs`` (each one
    array: sizes other than the calibrated one among them) to ``min_cosine``, and its
    export reloaded from ``path`` gives the same values to the bit."""
    qnet.export(str(path / "m"))
    again = gq.QuantizedSymbolBlock.imports(str(path / "m"))
    if PAIRS_SATURATE:      # 7-bit codes where int8 pairs saturate (no VNNI)
        min_cosine = min(min_cosine, 0.997)
    for x in inputs:
        out = qnet(x).asnumpy()
        assert cosine(net(x).asnumpy(), out) > min_cosine
        assert np.array_equal(out, again(x).asnumpy())


def image_batches(net, rs, shape, count, low=0.0):
    """``count`` batches of ``shape`` drawn uniformly from ``[low, 1)`` with ``rs``, the
    BatchNorm statistics of ``net`` (initialized) set from the first, as a trained net's."""
    from gluon_quant.zoo.batchnorm import set_batchnorm_statistics
    batches = [mx.nd.array(rs.uniform(low, 1, shape).astype("float32")) for _ in range(count)]
    set_batchnorm_statistics(net, batches[0])
    return batches


def run_graph(sym, x, params):
    """``sym``'s first output on ``data=x``, its arguments and auxiliary states (BatchNorm's
    running statistics) taken by name from ``params`` (NDArrays), as numpy."""
    args, aux = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    executor = sym.bind(mx.cpu(), args=dict({k: v for k, v in params.items() if k in args},
                                            data=x),
                        aux_states={k: v for k, v in params.items() if k in aux})
    return executor.forward()[0].asnumpy()


def assert_same_after_rewrite(before, graph, context, sizes, rs):
    """The graphs ``before`` and ``graph`` (rewritten by a pass with ``context``) over
    ``data`` and one 1x1 convolution's ``features_weight`` give the same values to the bit
    at each input size of ``sizes``, every output (the rewritten graph reads the pass's
    parameters, computed from the weight)."""
    channels, rank = sizes[0][1], len(sizes[0])
    weight = rs.uniform(-1, 1, (channels,) * 2 + (1,) * (rank - 2)).astype("float32")
    params = {"features_weight": weight}
    for rewrite in context.param_rewrites:
        rewrite.apply(params)
    old, new = (mx.sym.load_json(json.dumps(g)) for g in (before, graph))
    for size in sizes:
        x = mx.nd.array(rs.uniform(-3, 5, size).astype("float32"))
        ref = old.eval(data=x, features_weight=mx.nd.array(weight))
        out = new.eval(data=x, **{k: mx.nd.array(v) for k, v in params.items()})
        assert len(ref) == len(out) and all(
            a.shape == b.shape and np.array_equal(a.asnumpy(), b.asnumpy())
            for a, b in zip(ref, out))
