"""Sequence models: fp32, fused fp32, MXNet's int8 flow and gluon_quant's int8, side by side.

Models (random weights; GluonNLP's BERT needs ``pip install -e ".[nlp]"``, the LSTM models
are written here):

* ``bert``  GluonNLP's BERT-base (``bert_12_768_12``, pooler on), weights N(0, 0.02),
  sequence length 128, GluonNLP-style ``(tokens, token_types, valid_length, label)``
  batches with valid lengths between 64 and 128;
* ``lstm_lm``   a word language model of the size of GluonNLP's ``standard_lstm_lm_200``
  (vocabulary 33,278, embedding 200, 2 LSTM layers of 200, decoder over the vocabulary),
  35 steps;
* ``lstm_clf``  a sentence classifier: embedding 300 (vocabulary 20,000), 2 LSTM layers of
  256, mean over 64 steps, dense 256 + relu, dense 2.

Variants, each with its own copy of the weights:

* ``fp32``   the net hybridized with ``static_alloc`` / ``static_shape``;
* ``fused``  fp32 with oneDNN fusion (``optimize_for(..., backend='MKLDNN')``, or the same
  pass on the traced symbol where that fails);
* ``mxnet``  MXNet's ``quantize_net_v2`` as GluonNLP's ``scripts/bert`` used it for BERT
  (``calib_mode='customize'`` with a min/max collector clipping GELU outputs at 10 and
  LayerNorm outputs at -50 by GluonNLP's layer names, ``quantized_dtype='auto'``,
  ``quantize_mode='smart'``, channel-wise, no excluded layer); for the LSTM models
  ``calib_mode='naive'`` with ``exclude_operators=['RNN']`` (MXNet's int8 LSTM cannot run
  on AVX512-VNNI CPUs, see ``gluon_quant._mxnet.int8_lstm_runs``);
* ``gq``     ``gluon_quant.quantize(net, batches)``, one call, no hints;
* ``gq_fp32``  the fp32 graph gluon_quant calibrates (traced, exact fp32 rewrites such as
  ``fold_parameter_expressions``, oneDNN fusion), to tell the gain of those rewrites from int8's.

Timings are medians over ``--repeat`` rounds; in each round every variant runs once
(round-robin), so slow phases of a shared machine hit all of them alike. ``x fp32`` and
``x fused`` are speed-ups (higher is faster); ``cos`` is each output's cosine with fp32's
(BERT: sequence output, pooled output). ``--profile`` prints, per model, the share of the
int8 graph's time each operator takes (``mx.profiler``, operator bulking off), which says
what limits the speed-up.

Set ``OMP_NUM_THREADS`` to the number of cores the run may use alone: on a machine shared
with other work, oversubscribed OpenMP threads wait at every barrier, and an LSTM (hundreds
of small steps) then swings from 30 ms to 800 ms per call; one thread gives stable numbers.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/nlp.py   # everything (BERT-base: many minutes)
    python benchmarks/nlp.py --quick          # fewer rounds and calibration batches
    python benchmarks/nlp.py --models lstm_lm lstm_clf --batch-sizes 1 8 32
    python benchmarks/nlp.py --models bert --batch-sizes 8 --profile
"""
import argparse
import collections
import os
import sys
import time

if "--profile" in sys.argv:     # per-operator times: MXNet must not bulk operators together
    os.environ["MXNET_EXEC_BULK_EXEC_INFERENCE"] = "0"

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet.contrib import quantization as mxq  # noqa: E402
from mxnet.gluon import HybridBlock, nn, rnn  # noqa: E402

import gluon_quant as gq  # noqa: E402
from gluon_quant import _mxnet, pipeline  # noqa: E402

MODELS = ("bert", "lstm_lm", "lstm_clf")
VARIANTS = ("fp32", "fused", "mxnet", "gq", "gq_fp32")
#: Targets from issue #14: (speed-up over fp32 at batch 8, cosine).
TARGETS = {"bert": (1.6, 0.99), "lstm_lm": (1.3, 0.99), "lstm_clf": (1.3, 0.99)}


# ----------------------------------------------------------------------------- models

class LSTMLanguageModel(HybridBlock):
    """Tokens (length, batch) -> embedding -> 2-layer LSTM -> decoder over the vocabulary."""

    def __init__(self, vocab=33278, embed=200, hidden=200, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embedding = nn.Embedding(vocab, embed)
            self.encoder = rnn.LSTM(hidden, num_layers=2, layout="TNC", input_size=embed)
            self.decoder = nn.Dense(vocab, flatten=False, in_units=hidden)

    def hybrid_forward(self, F, x):
        return self.decoder(self.encoder(self.embedding(x)))


class LSTMClassifier(HybridBlock):
    """Tokens (batch, length) -> embedding -> 2-layer LSTM -> mean -> dense + relu -> dense."""

    def __init__(self, vocab=20000, embed=300, hidden=256, classes=2, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embedding = nn.Embedding(vocab, embed)
            self.encoder = rnn.LSTM(hidden, num_layers=2, layout="NTC", input_size=embed)
            self.hidden = nn.Dense(hidden, activation="relu", in_units=hidden)
            self.output = nn.Dense(classes, in_units=hidden)

    def hybrid_forward(self, F, x):
        return self.output(self.hidden(F.mean(self.encoder(self.embedding(x)), axis=1)))


def _bert(vocab_size=30522):
    import gluonnlp as nlp      # the "nlp" extra
    vocab = nlp.vocab.BERTVocab(nlp.data.count_tokens(
        ["w%d" % i for i in range(vocab_size - 5)]))     # BERTVocab adds 5 special tokens
    net, _ = nlp.model.get_model("bert_12_768_12", dataset_name=None, vocab=vocab,
                                 pretrained=False, use_pooler=True, use_decoder=False,
                                 use_classifier=False)
    net.initialize(mx.init.Normal(0.02))
    return net, len(vocab)


class Model:
    """One benchmarked model: a factory of identical nets and its batches."""

    def __init__(self, name):
        self.name = name
        rs = np.random.RandomState(0)
        mx.random.seed(0)
        if name == "bert":
            self.source, vocab = _bert()
            self.length = 128
        elif name == "lstm_lm":
            self.source, vocab, self.length = LSTMLanguageModel(), 33278, 35
            self.source.initialize(mx.init.Xavier())
        else:
            self.source, vocab, self.length = LSTMClassifier(), 20000, 64
            self.source.initialize(mx.init.Xavier())
        self.vocab = vocab
        self.rs = rs
        self.source(*self.inputs(1))               # finish deferred shapes

    def batch(self, size):
        """One batch as the family's data loaders yield it (inputs, then a label)."""
        rs = self.rs
        if self.name == "bert":
            valid = rs.randint(self.length // 2, self.length + 1, size=size)
            tokens = rs.randint(5, self.vocab, size=(size, self.length))
            tokens[np.arange(self.length)[None, :] >= valid[:, None]] = 1
            types = (np.arange(self.length)[None, :] >= (valid // 2)[:, None])
            return tuple(mx.nd.array(a) for a in (tokens, types, valid, rs.randint(0, 2, size)))
        shape = (self.length, size) if self.name == "lstm_lm" else (size, self.length)
        return (mx.nd.array(rs.randint(0, self.vocab, size=shape)),
                mx.nd.array(rs.randint(0, 2, size=size)))

    def inputs(self, size):
        batch = self.batch(size)
        return batch[:3] if self.name == "bert" else batch[:1]

    def copy(self):
        """A new net with the source's weights (each variant hybridizes its own)."""
        if self.name == "bert":
            net, _ = _bert()
        else:
            net = type(self.source)()
            net.initialize()
        net(*self.inputs(1))
        for dst, src in zip(net.collect_params().values(), self.source.collect_params().values()):
            dst.set_data(src.data())
        return net


# --------------------------------------------------------------------------- variants

class GluonNLPCollector:
    """The min/max collector GluonNLP's ``scripts/bert`` passes to ``quantize_net_v2``
    (``BertLayerCollector(clip_min=-50, clip_max=10)``): ranges of every ``*_output``, GELU
    outputs capped at 10 and LayerNorm outputs floored at -50, matched by GluonNLP's layer
    names. MXNet 1.9.1 collects on the fused graph, where a GELU is inside a fused dense
    node named ``sg_mkldnn_fully_connected_eltwise_*``, so only the LayerNorm rule matches."""

    def __init__(self, clip_min=-50.0, clip_max=10.0):
        self.min_max_dict = {}
        self.clip_min, self.clip_max = clip_min, clip_max

    def collect(self, name, arr):
        name = mx.base.py_str(name)
        if not name.endswith("_output"):
            return
        arr = mx.nd.NDArray(mx.base.ctypes.cast(arr, mx.base.NDArrayHandle), writable=False)
        lo, hi = float(arr.min().asscalar()), float(arr.max().asscalar())
        if "gelu0_leakyrelu0" in name:
            hi = min(hi, self.clip_max)
        if "layernorm0_layernorm0" in name:
            lo = max(lo, self.clip_min)
        old = self.min_max_dict.get(name, (lo, hi))
        self.min_max_dict[name] = (min(old[0], lo), max(old[1], hi))


def mxnet_int8(model, net, calib):
    """MXNet's own int8 flow on ``net`` (see the module docstring)."""
    # MXNet reads any iterable of batches (tuples of its inputs); no label, or MXNet
    # would feed it to BERT as masked_positions.
    batches = [tuple(b[:3] if model.name == "bert" else b[:1]) for b in calib]
    options = dict(quantized_dtype="auto", quantize_granularity="channel-wise",
                   calib_data=batches, num_calib_examples=None, ctx=mx.cpu())
    if model.name == "bert":
        options.update(quantize_mode="smart", calib_mode="customize",
                       LayerOutputCollector=GluonNLPCollector(), exclude_layers=[])
    else:
        options.update(quantize_mode="full", calib_mode="naive", exclude_operators=["RNN"])
    qnet = mxq.quantize_net_v2(net, **options)
    qnet.hybridize(static_alloc=True, static_shape=True)
    return qnet


def fused_fp32(net, inputs):
    """``net`` with oneDNN's fp32 fusion: ``optimize_for``, else the pass on the symbol."""
    try:
        net.optimize_for(*inputs, backend="MKLDNN", static_alloc=True, static_shape=True)
        return net
    except mx.base.MXNetError as err:
        print("note: optimize_for failed (%s); fusing the traced symbol instead"
              % str(err).splitlines()[0][:100])
    data = [mx.sym.var("data%d" % i) for i in range(len(inputs))]
    out = net(*data)
    out = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    block = mx.gluon.SymbolBlock(out.get_backend_symbol("MKLDNN"), data,
                                 params=net.collect_params())
    block.hybridize(static_alloc=True, static_shape=True)
    return block


def build_variants(model, calib):
    """``{variant: block}`` for one model; every block takes the model's inputs."""
    variants = {}
    fp32 = model.copy()
    fp32.hybridize(static_alloc=True, static_shape=True)
    variants["fp32"] = fp32
    variants["fused"] = fused_fp32(model.copy(), model.inputs(1))
    start = time.perf_counter()
    variants["mxnet"] = mxnet_int8(model, model.copy(), calib)
    mxnet_seconds = time.perf_counter() - start
    start = time.perf_counter()
    qnet = variants["gq"] = gq.quantize(model.source, calib, progress=False)
    print("  quantized in %.0f s (MXNet's flow: %.0f s)" % (time.perf_counter() - start,
                                                           mxnet_seconds))
    params = pipeline.fp32_params(model.source, qnet.fused, mx.cpu())
    rewritten = _mxnet.symbol_block(qnet.fused_graph, qnet.input_names, params, mx.cpu())
    rewritten.hybridize(static_alloc=True, static_shape=True)
    variants["gq_fp32"] = rewritten
    return variants


# -------------------------------------------------------------------------- measuring

def _outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _sync(out):
    for o in _outputs(out):
        o.wait_to_read()


def _cosine(a, b):
    a, b = (x.asnumpy().astype(np.float64).ravel() for x in (a, b))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def agreement(variants, inputs):
    """Per int8 variant, the cosine of each of its outputs with fp32's."""
    reference = _outputs(variants["fp32"](*inputs))
    return {key: [_cosine(r, o) for r, o in zip(reference, _outputs(variants[key](*inputs)))]
            for key in variants if key not in ("fp32", "fused", "gq_fp32")}


def time_variants(variants, inputs, repeat, min_seconds=0.2):
    """Median seconds per call of each variant, measured round-robin."""
    inner = {}
    for key, block in variants.items():
        _sync(block(*inputs))                       # warm up this shape
        start = time.perf_counter()
        _sync(block(*inputs))
        inner[key] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    samples = collections.defaultdict(list)
    for _ in range(repeat):
        for key, block in variants.items():
            start = time.perf_counter()
            for _ in range(inner[key]):
                out = block(*inputs)
            _sync(out)
            samples[key].append((time.perf_counter() - start) / inner[key])
    return {key: float(np.median(values)) for key, values in samples.items()}


def operator_shares(block, inputs, calls=3):
    """``[(operator, share of the time)]`` of ``block`` over ``calls`` calls, largest first."""
    _sync(block(*inputs))
    mx.profiler.set_config(profile_all=True, aggregate_stats=True,
                           filename="/tmp/gluon_quant_nlp_profile.json")
    mx.profiler.set_state("run")
    for _ in range(calls):
        _sync(block(*inputs))
    mx.profiler.set_state("stop")
    lines = mx.profiler.dumps(reset=True).splitlines()
    times, section = collections.Counter(), None
    for line, underline in zip(lines, lines[1:] + [""]):
        if underline.startswith("==="):          # a section title: "operator", "MXNET_C_API"
            section = line.strip()
            continue
        fields = line.split()   # name, total count, total/min/max/average time (ms)
        if section == "operator" and len(fields) >= 6 and fields[0] not in ("Name", "----"):
            try:
                times[" ".join(fields[:-5])] += float(fields[-4])
            except ValueError:
                continue
    total = sum(times.values()) or 1.0
    return [(op, t / total) for op, t in times.most_common()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--calib-batches", type=int, default=4,
                        help="calibration batches of 8 (default 4)")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, 2 calibration batches")
    parser.add_argument("--profile", action="store_true",
                        help="also print each operator's share of the int8 and fp32 time")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.calib_batches = 3, 2
    print("MXNet %s, gluon_quant %s, OMP_NUM_THREADS=%s; oneDNN int8 kernels: %s"
          % (mx.__version__, gq.__version__, os.environ.get("OMP_NUM_THREADS", "unset"),
             gq.kernels.describe()))
    rows = []
    for name in args.models:
        try:
            model = Model(name)
        except ImportError as err:
            print("%s: skipped (%s; pip install -e \".[nlp]\")" % (name, err))
            continue
        print("%s:" % name)
        calib = [model.batch(8) for _ in range(args.calib_batches)]
        variants = build_variants(model, calib)
        for size in args.batch_sizes:
            inputs = model.inputs(size)
            seconds = time_variants(variants, inputs, args.repeat)
            cosines = agreement(variants, inputs)
            rows.append((name, size, seconds, cosines))
            print("  batch %d: %s" % (size, "  ".join(
                "%s %.1f ms" % (k, 1e3 * seconds[k]) for k in VARIANTS)))
            if args.profile:
                for key in ("gq", "fp32"):
                    shares = operator_shares(variants[key], inputs)
                    print("    %s time by operator: %s" % (key, ", ".join(
                        "%s %.0f%%" % (op, 100 * share) for op, share in shares[:10])))
    print("\nspeed-ups (higher is faster); gq_fp32: gluon_quant's fp32 graph, no int8")
    print("model     batch  x fp32: gq  mxnet  gq_fp32   x fused: gq  mxnet   cos gq"
          "           cos mxnet        target")
    for name, size, seconds, cosines in rows:
        speed, agree = TARGETS[name]
        fp32, fused = seconds["fp32"], seconds["fused"]
        print("%-9s %5d         %5.2f  %5.2f  %5.2f            %5.2f  %5.2f   %-16s %-16s "
              ">= %.1fx, cos >= %.2f" % (
                  name, size, fp32 / seconds["gq"], fp32 / seconds["mxnet"],
                  fp32 / seconds["gq_fp32"], fused / seconds["gq"], fused / seconds["mxnet"],
                  " ".join("%.4f" % c for c in cosines["gq"]),
                  " ".join("%.4f" % c for c in cosines["mxnet"]), speed, agree))

if __name__ == "__main__":
    main()
