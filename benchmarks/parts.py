"""A model whose own code does not trace: ``quantize_parts`` against fp32 and MXNet's flow.

The model is a translator written as Gluon users write one: a ``gluon.Block`` whose
``forward`` runs greedy decoding in Python (a loop, ``argmax``, an early stop read with
``.asnumpy()``), around two HybridBlocks, a 4-layer transformer encoder (512 units, FFN
2048, 8 heads, vocabulary 8,000) and a decoding step (cross-attention, FFN 2048, output
layer over the vocabulary). ``quantize()`` refuses such a model; MXNet's
``quantize_net_v2`` needs one HybridBlock too.

Variants, each with its own copy of the weights (random, Xavier):

* ``fp32``   the model with its two blocks hybridized (``static_alloc``, ``static_shape``);
* ``gq``     ``gluon_quant.quantize_parts(model, batches)``: one call, the blocks found,
  calibrated on their own calls and put in place;
* ``mxnet``  what an MXNet user can do by hand: ``quantize_net_v2`` (``calib_mode='naive'``,
  ``quantized_dtype='auto'``) of each block on its recorded calls, swapped in.

Timings are medians over ``--repeat`` rounds of greedy decoding of one batch, variants
round-robin in each round. ``cos`` is the cosine of the teacher-forced logits with fp32's
(every step fed the same tokens, so that a flipped near-tie does not change the rest);
``tokens`` the share of greedy tokens equal to fp32's.

Usage::

    python benchmarks/parts.py             # batch 16, 24 source tokens, 16 steps
    python benchmarks/parts.py --quick
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gluon_quant as gq  # noqa: E402

VOCAB, UNITS, HIDDEN, HEADS = 8000, 512, 2048, 8


class Attention(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.query = nn.Dense(UNITS, flatten=False)
        self.key = nn.Dense(UNITS, flatten=False)
        self.value = nn.Dense(UNITS, flatten=False)
        self.out = nn.Dense(UNITS, flatten=False)

    def _heads(self, F, x):             # (N, T, C) -> (N * H, T, C / H)
        x = x.reshape((0, 0, HEADS, -1)).transpose((0, 2, 1, 3))
        return x.reshape((-3, 0, 0))

    def hybrid_forward(self, F, x, memory):
        q, k, v = (self._heads(F, layer(src)) for layer, src in
                   ((self.query, x), (self.key, memory), (self.value, memory)))
        weights = F.softmax(F.batch_dot(q, k, transpose_b=True) / np.sqrt(UNITS // HEADS))
        context = F.batch_dot(weights, v).reshape((-4, -1, HEADS, 0, 0))
        return self.out(context.transpose((0, 2, 1, 3)).reshape((0, 0, -3)))


class FFN(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = nn.Dense(HIDDEN, activation="relu", flatten=False)
        self.outer = nn.Dense(UNITS, flatten=False)
        self.norm = nn.LayerNorm()

    def hybrid_forward(self, F, x):
        return self.norm(x + self.outer(self.inner(x)))


class EncoderLayer(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = Attention()
        self.norm = nn.LayerNorm()
        self.ffn = FFN()

    def hybrid_forward(self, F, x):
        return self.ffn(self.norm(x + self.attention(x, x)))


class Encoder(nn.HybridBlock):
    def __init__(self, layers=4, **kwargs):
        super().__init__(**kwargs)
        self.embed = nn.Embedding(VOCAB, UNITS)
        self.layers = nn.HybridSequential()
        for _ in range(layers):
            self.layers.add(EncoderLayer())

    def hybrid_forward(self, F, tokens):
        return self.layers(self.embed(tokens))


class Step(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = Attention()
        self.norm = nn.LayerNorm()
        self.ffn = FFN()
        self.vocab = nn.Dense(VOCAB)

    def hybrid_forward(self, F, prev, memory):
        x = prev.expand_dims(1)
        x = self.ffn(self.norm(x + self.attention(x, memory)))
        return self.vocab(x.reshape((0, -1)))


class Translator(gluon.Block):
    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps
        self.encoder = Encoder()
        self.embed = nn.Embedding(VOCAB, UNITS)
        self.step = Step()

    def forward(self, tokens, targets=None):
        memory = self.encoder(tokens)
        prev = self.embed(nd.ones((tokens.shape[0],)))
        logits = []
        for t in range(self.steps):
            out = self.step(prev, memory)
            logits.append(out)
            best = out.argmax(axis=1) if targets is None else targets[:, t]
            if (best.asnumpy() == 0).all():     # every sentence ended
                break
            prev = self.embed(best)
        return nd.stack(*logits, axis=1)


def _model(steps, weights):
    model = Translator(steps)
    model.load_parameters(weights)
    model.encoder.hybridize(static_alloc=True, static_shape=True)
    model.step.hybridize(static_alloc=True, static_shape=True)
    return model


def _mxnet_parts(model, batches):
    """MXNet's own flow by hand: each block quantized on the calls it got, swapped in."""
    from mxnet.contrib import quantization as mxq
    calls = {"encoder": [], "step": []}
    hooks = [getattr(model, name).register_forward_pre_hook(
        lambda block, args, name=name: calls[name].append([a.copy() for a in args]))
        for name in calls]
    for tokens in batches:
        model(tokens)
    for hook in hooks:
        hook.detach()
    for name, got in calls.items():
        block = getattr(model, name)
        arrays = [nd.concat(*column, dim=0) for column in zip(*got)]
        names = ["data"] if len(arrays) == 1 else ["data%d" % i for i in range(len(arrays))]
        batch = got[0][0].shape[0]
        it = mx.io.NDArrayIter(data=dict(zip(names, arrays)), batch_size=batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qblock = mxq.quantize_net_v2(
                block, quantized_dtype="auto", quantize_mode="full", calib_data=it,
                data_shapes=[mx.io.DataDesc(n, (batch,) + a.shape[1:])
                             for n, a in zip(names, arrays)],
                calib_mode="naive", num_calib_examples=arrays[0].shape[0], ctx=mx.cpu(),
                logger=None)
        qblock.hybridize(static_alloc=True, static_shape=True)
        # Gluon refuses a SymbolBlock in an Encoder attribute's place: swapped by hand
        model._children[name] = qblock            # pylint: disable=protected-access
        object.__setattr__(model, name, qblock)
    return model


def _cosine(a, b):
    a, b = a.asnumpy().ravel().astype("f8"), b.asnumpy().ravel().astype("f8")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=24, help="source tokens")
    parser.add_argument("--steps", type=int, default=16, help="decoding steps")
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 calibration batches, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.calib_batches, args.repeat = 2, 3
    rng = np.random.RandomState(0)
    batches = [nd.array(rng.randint(2, VOCAB, size=(args.batch, args.length)))
               for _ in range(args.calib_batches + 1)]
    calib, held_out = batches[:-1], batches[-1]
    targets = nd.array(rng.randint(2, VOCAB, size=(args.batch, args.steps)))
    mx.random.seed(0)
    source = Translator(args.steps)
    source.initialize(mx.init.Xavier())
    source(held_out)
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "fp32.params")
        source.save_parameters(weights)
        variants = {"fp32": _model(args.steps, weights)}
        start = time.perf_counter()
        gq_model = _model(args.steps, weights)
        result = gq.quantize_parts(gq_model, calib)
        gq_seconds = time.perf_counter() - start
        variants["gq"] = gq_model
        try:
            start = time.perf_counter()
            variants["mxnet"] = _mxnet_parts(_model(args.steps, weights), calib)
            mx_seconds = time.perf_counter() - start
        except Exception as err:    # report MXNet's failure beside the other numbers
            print("mxnet: quantize_net_v2 per block failed: %s: %s"
                  % (type(err).__name__, str(err).splitlines()[0][:200]))
    print(result.report())
    print("quantize_parts: %.1f s; MXNet by hand: %s" % (
        gq_seconds, "%.1f s" % mx_seconds if "mxnet" in variants else "failed"))
    reference = variants["fp32"](held_out, targets)
    greedy = variants["fp32"](held_out).argmax(axis=2)
    times = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, model in variants.items():
            begin = time.perf_counter()
            model(held_out).wait_to_read()
            times[name].append(time.perf_counter() - begin)
    base = statistics.median(times["fp32"])
    print("\nbatch %d, %d source tokens, %d greedy steps, %d thread(s) of %s"
          % (args.batch, args.length, args.steps, int(os.environ.get("OMP_NUM_THREADS", 0))
             or os.cpu_count(), "this CPU"))
    print("%-6s %9s %8s %8s %7s" % ("", "seconds", "x fp32", "cos", "tokens"))
    for name, model in variants.items():
        seconds = statistics.median(times[name])
        out = model(held_out, targets)
        tokens = model(held_out).argmax(axis=2)
        same = float((tokens == greedy).mean().asscalar()) if tokens.shape == greedy.shape \
            else float("nan")
        print("%-6s %9.4f %7.2fx %8.4f %6.1f%%" % (name, seconds, base / seconds,
                                                   _cosine(reference, out), 100 * same))


if __name__ == "__main__":
    main()
