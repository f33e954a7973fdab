"""Inference speed: fp32, fused fp32, MXNet's int8 and gluon_quant's int8, side by side.

For each GluonCV model (``pretrained=False``, BatchNorm statistics re-estimated on crops of
real photos so that activations are realistic) and batch size, this times:

* ``fp32``      the net hybridized with ``static_alloc`` / ``static_shape``;
* ``fused``     fp32 with oneDNN fusion (``optimize_for(x, backend='MKLDNN')``; no
  environment variable is read or set);
* ``mxnet``     MXNet's own ``quantize_net_v2`` int8 (``calib_mode='naive'``, calibrated);
* ``gq``        ``gluon_quant.quantize`` int8 (a :class:`QuantizedHybridBlock`);
* ``raw``       the SymbolBlock inside the ``QuantizedHybridBlock``, called directly (the
  difference to ``gq`` is the wrapper's per-call overhead; at batch 1 it is measured in a
  separate tight gq/raw loop, where a few microseconds are not lost in the noise).

Each variant has its own copy of the weights, so no variant re-hybridizes another's net.
Timings are medians over ``--repeat`` rounds; in each round every variant runs once
(round-robin), so slow phases of a shared machine hit all of them alike. Ratios are
speed-ups over fused fp32 (higher is faster).

Usage::

    python benchmarks/inference.py
    python benchmarks/inference.py --models resnet18_v1 --batch-sizes 1 --repeat 20
"""
import argparse
import logging
import statistics
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as mxq
from _common import zoo_net

import gluon_quant as gq
from gluon_quant.zoo.batchnorm import reestimate_batchnorm
from gluon_quant.zoo.gluoncv import sample_batches

MODELS = ("resnet18_v1", "resnet50_v1", "mobilenet1.0", "mobilenetv2_1.0")
VARIANTS = ("fp32", "fused", "mxnet", "gq", "raw")
#: Targets from the issue.
TARGET_SPEEDUP = ("resnet50_v1", 16, 4.0)
TARGET_VS_MXNET = 0.97
TARGET_OVERHEAD = 0.02


def build_variants(name, calib, batch_sizes):
    """Every variant of ``name``, each a callable taking one NDArray."""
    net = zoo_net(name)
    reestimate_batchnorm(net, mx.nd.array(np.concatenate(calib)))
    variants = {}

    fp32 = zoo_net(name, net)
    fp32.hybridize(static_alloc=True, static_shape=True)
    variants["fp32"] = fp32

    fused = zoo_net(name, net)
    fused.optimize_for(mx.nd.array(calib[0][:1]), backend="MKLDNN",
                       static_alloc=True, static_shape=True)
    variants["fused"] = fused

    theirs = zoo_net(name, net)
    data = np.concatenate(calib)
    it = mx.io.NDArrayIter(data, batch_size=len(calib[0]))
    mxnet_int8 = mxq.quantize_net_v2(theirs, quantized_dtype="auto", quantize_mode="full",
                                     calib_mode="naive", calib_data=it,
                                     num_calib_examples=len(data), ctx=mx.cpu())
    mxnet_int8.hybridize(static_alloc=True, static_shape=True)
    variants["mxnet"] = mxnet_int8

    qnet = gq.quantize(net, calib, progress=False)
    variants["gq"] = qnet
    # The QuantizedHybridBlock's own graph, without the wrapper (benchmark-only access).
    raw = qnet._qnet                             # pylint: disable=protected-access
    raw.hybridize(static_alloc=True, static_shape=True)   # the same flags as the wrapper's
    variants["raw"] = raw
    for batch in batch_sizes:                    # warm up every shape once
        x = mx.nd.array(np.resize(data, (batch, 3, 224, 224)))
        for block in variants.values():
            _sync(block(x))
    return variants


def _sync(out):
    for o in (out if isinstance(out, (list, tuple)) else [out]):
        o.wait_to_read()


def time_variants(variants, x, repeat, min_seconds=0.05):
    """Median seconds per call of each variant, measured round-robin."""
    inner = {}
    for key, block in variants.items():         # calls per sample so that each sample
        start = time.perf_counter()             # lasts at least ``min_seconds``
        _sync(block(x))
        elapsed = time.perf_counter() - start
        inner[key] = max(1, int(min_seconds / max(elapsed, 1e-6)))
    samples = {key: [] for key in variants}
    for _ in range(repeat):
        for key, block in variants.items():
            start = time.perf_counter()
            for _ in range(inner[key]):
                out = block(x)
            _sync(out)
            samples[key].append((time.perf_counter() - start) / inner[key])
    return {key: statistics.median(values) for key, values in samples.items()}


def wrapper_overhead(variants, x, rounds=15, calls=40):
    """Relative per-call cost of the QuantizedHybridBlock over its raw cached graph.

    Measured on its own, the two alternating in tight loops, since a difference of a
    few microseconds drowns in the noise of the five-way round robin above.
    """
    pair = {"gq": variants["gq"], "raw": variants["raw"]}
    samples = {key: [] for key in pair}
    for _ in range(rounds):
        for key, block in pair.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = block(x)
            _sync(out)
            samples[key].append((time.perf_counter() - start) / calls)
    return statistics.median(samples["gq"]) / statistics.median(samples["raw"]) - 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--calib-batches", type=int, default=4,
                        help="calibration batches of 16 images (default 4)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # optimize_for traces with untyped inputs; the warning is about that trace only.
    warnings.filterwarnings("ignore", message="Cannot decide type")
    calib = sample_batches(args.calib_batches, 16)
    header = ("%-16s %5s" + " %9s" * 5 + " %8s" * 4 + " %9s") % (
        "model", "batch", "fp32 ms", "fused ms", "mxnet ms", "gq ms", "raw ms",
        "fp32 x", "mxnet x", "gq x", "gq/mxnet", "wrapper")
    print("mxnet %s, gluon_quant %s; ratios = speed-up over fused fp32 (higher is faster); "
          "medians of %d rounds" % (mx.__version__, gq.__version__, args.repeat))
    print(header)
    print("-" * len(header))
    results = {}
    for name in args.models:
        variants = build_variants(name, calib, args.batch_sizes)
        for batch in args.batch_sizes:
            x = mx.nd.array(np.resize(np.concatenate(calib), (batch, 3, 224, 224)))
            t = time_variants(variants, x, args.repeat)
            t["overhead"] = wrapper_overhead(variants, x) if batch == 1 else \
                t["gq"] / t["raw"] - 1
            results[(name, batch)] = t
            print(("%-16s %5d" + " %9.2f" * 5 + " %8.2f" * 4 + " %+8.1f%%") % (
                name, batch, *(t[k] * 1e3 for k in VARIANTS),
                t["fused"] / t["fp32"], t["fused"] / t["mxnet"], t["fused"] / t["gq"],
                t["mxnet"] / t["gq"], 100 * t["overhead"]))
        print("%-16s %5s  throughput img/s: %s" % ("", "", ", ".join(
            "batch %d: fused %.0f, mxnet %.0f, gq %.0f" % (
                b, b / results[(name, b)]["fused"], b / results[(name, b)]["mxnet"],
                b / results[(name, b)]["gq"]) for b in args.batch_sizes)))
        del variants
    print()
    model, batch, target = TARGET_SPEEDUP
    if (model, batch) in results:
        t = results[(model, batch)]
        print("target: gq int8 >= %.1fx fused fp32 on %s batch %d: %.2fx %s" % (
            target, model, batch, t["fused"] / t["gq"],
            "met" if t["fused"] / t["gq"] >= target else "NOT met"))
    worst = min(results.items(), key=lambda kv: kv[1]["mxnet"] / kv[1]["gq"])
    print("target: gq never slower than quantize_net_v2 (>= %.2fx): worst %.2fx (%s, batch %d)"
          % (TARGET_VS_MXNET, worst[1]["mxnet"] / worst[1]["gq"], *worst[0]))
    ones = {k: v for k, v in results.items() if k[1] == 1}
    if ones:
        over = max(v["overhead"] for v in ones.values())
        print("target: wrapper overhead at batch 1 < %.0f%%: worst %+.1f%% %s" % (
            100 * TARGET_OVERHEAD, 100 * over, "met" if over < TARGET_OVERHEAD else "NOT met"))


if __name__ == "__main__":
    main()
