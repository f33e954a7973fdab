"""Inference speed: fp32, fused fp32, MXNet's int8 and gluon_quant's int8, side by side.

For each GluonCV model (``pretrained=False``, BatchNorm statistics re-estimated on crops of
real photos so that activations are realistic), or EfficientNet-Lite0/1/2 with their
ImageNet weights (``--models efficientnet_lite0``), and batch size, this times:

* ``fp32``      the net hybridized with ``static_alloc`` / ``static_shape``;
* ``fused``     fp32 with oneDNN fusion (``optimize_for(x, backend='MKLDNN')``; no
  environment variable is read or set);
* ``mxnet``     MXNet's own ``quantize_net_v2`` int8 (``calib_mode='naive'``, calibrated);
* ``gq``        ``gluon_quant.quantize`` int8 (a :class:`QuantizedHybridBlock`);
* ``raw``       the SymbolBlock inside the ``QuantizedHybridBlock``, called directly (the
  difference to ``gq`` is the wrapper's per-call overhead, measured at every batch size in
  a separate tight gq/raw loop, where a few microseconds are not lost in the noise).

Each variant has its own copy of the weights, so no variant re-hybridizes another's net.
Timings are medians over ``--repeat`` rounds; in each round every variant runs once
(round-robin), so slow phases of a shared machine hit all of them alike. Ratios are
speed-ups over fused fp32 (higher is faster).

The default models are the issue's four plain classifiers. Nets whose MXNet int8 graph
has fp32 islands (SE blocks, detection heads) are timed with, for example::

    python benchmarks/inference.py --models se_resnet50_v1 ssd_512_resnet50_v1_voc \
        --batch-sizes 1 4

(detection nets run at their native input size, see ``IMAGE_SIZES``; ``--image-size``
overrides it). The last two columns are the cosine of each int8 variant's outputs with
fp32's: MXNet's int8 SSD is fast partly because its wrong scores let few boxes reach NMS;
``--no-nms`` times the networks without that data-dependent step.

With ONNX Runtime available (``--ort-python PATH``, the python of an environment with
onnxruntime and a recent onnx; by default this interpreter if it imports onnxruntime, else
the peer is skipped with a note), two more variants join the same round-robin: ``ort_fp32``,
the fp32 net exported with ``mx.onnx.export_model`` (this environment needs ``onnx<1.16``:
``pip install -e ".[onnx]"``), and ``ort_int8``, ORT's own ``quantize_static`` of it (QDQ,
per-channel, calibrated on the same batches), both with ``--ort-threads`` intra-op threads in
a worker process (``_ort.py``, ``_ort_worker.py``). A second table puts them beside fused
fp32, MXNet's and gluon_quant's int8, with the int8 outputs' cosine to fp32. Setup:
docs/performance.md, "ONNX Runtime as the peer".

Usage::

    python benchmarks/inference.py
    python benchmarks/inference.py --models resnet50_v1 --batch-sizes 16 \
        --ort-python /path/to/ortvenv/bin/python
    python benchmarks/inference.py --models resnet18_v1 --batch-sizes 1 --repeat 20
"""
import argparse
import logging
import os
import statistics
import time
import warnings

# MXNet 1.9.1 sizes its OpenMP pool to half the processors when OMP_NUM_THREADS is unset
# (it assumes two hyper-threads a core): 1 thread on a 2-core machine without SMT, while
# the ONNX Runtime peer runs --ort-threads (2). Every variant here gets the machine's
# processors unless OMP_NUM_THREADS says otherwise; it must be set before MXNet loads.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import mxnet as mx  # noqa: E402 (after the thread setting)
import numpy as np
from mxnet.contrib import quantization as mxq
from _common import real_weights, zoo_net as _zoo_net
from _ort import VARIANTS as PEER_VARIANTS, OrtPeer, PeerUnavailable, resolve_ort_python

import gluon_quant as gq
from gluon_quant import _mxnet
from gluon_quant.zoo.gluoncv import sample_batches, set_batchnorm_statistics

MODELS = ("resnet18_v1", "resnet50_v1", "mobilenet1.0", "mobilenetv2_1.0")
#: Input side of the nets that do not take 224 x 224 images.
IMAGE_SIZES = {"ssd_512_resnet50_v1_voc": 512, "ssd_512_mobilenet1.0_voc": 512,
               "ssd_300_vgg16_atrous_voc": 300, "yolo3_darknet53_voc": 416,
               "yolo3_mobilenet1.0_voc": 416, "fcn_resnet50_voc": 480,
               "efficientnet_lite1": 240, "efficientnet_lite2": 260}
VARIANTS = ("fp32", "fused", "mxnet", "gq", "raw")
#: Targets from the issue.
TARGET_SPEEDUP = ("resnet50_v1", 16, 4.0)
TARGET_VS_MXNET = 0.98
TARGET_OVERHEAD = 0.02
TARGET_VS_ORT = ("resnet50_v1", 16, 1.5)


def build_variants(name, calib, batch_sizes, nms=True):
    """Every variant of ``name``, each a callable taking one NDArray.

    ``nms=False`` turns a detector's non-maximum suppression off (``set_nms(0)``), so that
    the time does not depend on how many boxes each variant's scores let through.
    """
    size = calib[0].shape[-1]

    def zoo_net(*args):
        net = _zoo_net(*args)
        if not nms and hasattr(net, "set_nms"):
            net.set_nms(nms_thresh=0)
        return net

    net = zoo_net(name)
    if not real_weights(name):      # random weights: realistic statistics
        set_batchnorm_statistics(net, mx.nd.array(np.concatenate(calib)))
    variants = {}

    fp32 = zoo_net(name, net, size)
    fp32.hybridize(static_alloc=True, static_shape=True)
    variants["fp32"] = fp32

    variants["fused"] = fused_fp32(zoo_net(name, net, size), calib[0][:1])

    theirs = zoo_net(name, net, size)
    data = np.concatenate(calib)
    it = mx.io.NDArrayIter(data, batch_size=len(calib[0]))
    mxnet_int8 = mxq.quantize_net_v2(theirs, quantized_dtype="auto", quantize_mode="full",
                                     calib_mode="naive", calib_data=it,
                                     num_calib_examples=len(data), ctx=mx.cpu())
    mxnet_int8.hybridize(static_alloc=True, static_shape=True)
    variants["mxnet"] = mxnet_int8

    qnet = gq.quantize(net, calib, progress=False)
    variants["gq"] = qnet
    # The QuantizedHybridBlock's own graph, without the wrapper, with its own copy of the
    # weights: two cached graphs over the same int8 parameter arrays disturb each other in
    # MXNet 1.9.1 (after the other one ran, mobilenetv2's int8 output fell to 0.51 cosine).
    params = {name: value.copy() for name, value in qnet.model.params.items()}
    raw = _mxnet.symbol_block(qnet.quantized_graph, qnet.input_names, params, mx.cpu())
    raw.hybridize(static_alloc=True, static_shape=True)   # the same flags as the wrapper's
    variants["raw"] = raw
    for batch in batch_sizes:                    # warm up every shape once
        x = mx.nd.array(np.resize(data, (batch, 3, size, size)))
        for block in variants.values():
            _sync(block(x))
    return variants


def fused_fp32(net, example):
    """``net`` with oneDNN's fp32 fusion: ``optimize_for``, or the same pass on the symbol.

    ``optimize_for`` fails on SE-ResNet in MXNet 1.9.1 (shape inference of a fused conv
    with bias + BatchNorm); running the fusion pass on the traced symbol works.
    """
    try:
        net.optimize_for(mx.nd.array(example), backend="MKLDNN", static_alloc=True,
                         static_shape=True)
        return net
    except mx.base.MXNetError as err:
        print("note: optimize_for failed (%s); fusing the traced symbol instead"
              % str(err).splitlines()[0][:100])
    data = mx.sym.var("data")
    out = net(data)
    out = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    block = mx.gluon.SymbolBlock(out.get_backend_symbol("MKLDNN"), [data],
                                 params=net.collect_params())
    block.hybridize(static_alloc=True, static_shape=True)
    return block


def agreement(variants, x, peer=None, x_np=None):
    """Smallest cosine, over the outputs, of each int8 variant's output with fp32's.

    A detector's outputs (class ids, scores, boxes) are compared one by one, so that wrong
    scores are not hidden by boxes of larger magnitude. With an ONNX Runtime ``peer``,
    its variants' (first) outputs on ``x_np`` are compared too: ``ort_fp32`` checks the
    export, ``ort_int8`` is the peer's int8 agreement.
    """
    def outputs(out):
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [o.asnumpy().astype(np.float64).ravel() for o in outs]

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

    refs = outputs(variants["fp32"](x))
    result = {key: min(cos(r, o) for r, o in zip(refs, outputs(variants[key](x))))
              for key in ("mxnet", "gq")}
    if peer is not None:
        result.update((key, cos(refs[0], peer.output(key, x_np).astype(np.float64).ravel()))
                      for key in PEER_VARIANTS)
    return result


def start_peer(python, fp32, calib, name, args):
    """An :class:`OrtPeer` for ``name``, or ``None`` (with a note) when it cannot run."""
    if python is None:
        return None
    try:
        return OrtPeer(python, fp32, calib, args.ort_threads, args.ort_activations)
    except PeerUnavailable as err:
        print("note: no ONNX Runtime peer for %s: %s" % (name, err))
        return None


def print_peer_table(rows, args):
    """ONNX Runtime's fp32 and int8 beside MXNet's and gluon_quant's, from the same rounds."""
    print()
    print("ONNX Runtime peer (mx.onnx.export_model, quant_pre_process + quantize_static: QDQ, "
          "per-channel int8 weights, %s activations, min-max on the same calibration batches; "
          "%d intra-op threads; MXNet OMP_NUM_THREADS=%s); timed in the same round-robin as "
          "the table above" % (args.ort_activations, args.ort_threads,
                               os.environ.get("OMP_NUM_THREADS", "unset")))
    header = ("%-16s %5s" + " %9s" * 5 + " %8s" * 3 + " %9s" * 2) % (
        "model", "batch", "fused ms", "mxnet ms", "gq ms", "ort32 ms", "ort8 ms",
        "ort8 x", "gq x", "gq/ort8", "ort32 cos", "ort8 cos")
    print(header)
    print("-" * len(header))
    for name, batch, t, cos in rows:
        print(("%-16s %5d" + " %9.2f" * 5 + " %8.2f" * 3 + " %9.4f" * 2) % (
            name, batch, *(t[k] * 1e3 for k in ("fused", "mxnet", "gq", "ort_fp32",
                                                  "ort_int8")),
            t["fused"] / t["ort_int8"], t["fused"] / t["gq"], t["ort_int8"] / t["gq"],
            cos["ort_fp32"], cos["ort_int8"]))
    model, batch, target = TARGET_VS_ORT
    for name, b, t, _ in rows:
        if (name, b) == (model, batch):
            ratio = t["ort_int8"] / t["gq"]
            print("target: gq int8 >= %.1fx faster than ONNX Runtime int8 on %s batch %d: "
                  "%.2fx %s" % (target, model, batch, ratio,
                                "met" if ratio >= target else "NOT met"))


def _sync(out):
    for o in (out if isinstance(out, (list, tuple)) else [out]):
        o.wait_to_read()


def block_timer(block, x):
    """A timer for :func:`time_calls`: ``n`` -> wall-clock seconds of ``n`` calls."""
    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            out = block(x)
        _sync(out)
        return time.perf_counter() - start
    return run


def time_calls(timers, repeat, min_seconds=0.05):
    """Median seconds per call of each timer (``n`` -> seconds of ``n`` calls), round-robin.

    Each sample makes enough calls to last at least ``min_seconds``, after one untimed
    call (the variant's weights back in the caches after the others ran); in each of the
    ``repeat`` rounds every timer takes one sample, so that slow phases of a shared machine
    hit all of them alike. ``"gq/mxnet"`` is the median of the rounds' paired ratios
    (MXNet's time over gluon_quant's), steadier than the ratio of the medians.
    """
    inner = {key: max(1, int(min_seconds / max(timer(1), 1e-6)))
             for key, timer in timers.items()}
    samples = {key: [] for key in timers}
    for _ in range(repeat):
        for key, timer in timers.items():
            timer(1)
            samples[key].append(timer(inner[key]) / inner[key])
    result = {key: statistics.median(values) for key, values in samples.items()}
    if "gq" in samples and "mxnet" in samples:
        result["gq/mxnet"] = statistics.median(
            m / g for m, g in zip(samples["mxnet"], samples["gq"]))
    return result


def wrapper_overhead(variants, x, rounds=21, calls=50):
    """Relative per-call cost of the QuantizedHybridBlock over its raw cached graph.

    Measured on its own, the two alternating in tight loops, since a difference of a
    few microseconds drowns in the noise of the five-way round robin above. Each sample
    starts with one untimed call (the variant's weights back in the caches after the
    other one ran), and the result is the median of the rounds' gq/raw ratios, so that
    the machine's load, which drifts between rounds, cancels within each pair.
    """
    timers = {key: block_timer(variants[key], x) for key in ("gq", "raw")}
    ratios = []
    for _ in range(rounds):
        seconds = {}
        for key, timer in timers.items():
            timer(1)
            seconds[key] = timer(calls)
        ratios.append(seconds["gq"] / seconds["raw"])
    return statistics.median(ratios) - 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--calib-batches", type=int, default=4,
                        help="calibration batches of 16 images (default 4)")
    parser.add_argument("--no-nms", action="store_true",
                        help="detectors: time without non-maximum suppression, whose cost "
                             "depends on how many boxes the (possibly wrong) scores pass")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side for every model (default: 224, or the detection "
                             "net's own, see IMAGE_SIZES)")
    parser.add_argument("--ort-python", default=None, metavar="PATH",
                        help="python of an environment with onnxruntime and a recent onnx, "
                             "to time ONNX Runtime's fp32 and int8 as the peer (default: "
                             "this interpreter if it imports onnxruntime, else the peer is "
                             "skipped); see docs/performance.md")
    parser.add_argument("--ort-threads", type=int, default=2,
                        help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--ort-activations", choices=("uint8", "int8"), default="uint8",
                        help="ONNX Runtime int8 activation type (weights are int8): uint8 "
                             "(default; on x86 ORT's fastest, every conv int8) or int8 (ORT's "
                             "documented default; here it left 20 of resnet50's 53 convs fp32)")
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime peer")
    args = parser.parse_args(argv)
    ort_python, ort_note = None, "ONNX Runtime peer skipped (--no-ort)"
    if not args.no_ort:
        try:
            ort_python, ort_note = resolve_ort_python(args.ort_python)
        except PeerUnavailable as err:
            parser.error(str(err))
    logging.basicConfig(level=logging.WARNING)
    # optimize_for traces with untyped inputs; the warning is about that trace only.
    warnings.filterwarnings("ignore", message="Cannot decide type")
    header = ("%-16s %5s" + " %9s" * 5 + " %8s" * 4 + " %9s" + " %8s" * 2) % (
        "model", "batch", "fp32 ms", "fused ms", "mxnet ms", "gq ms", "raw ms",
        "fp32 x", "mxnet x", "gq x", "gq/mxnet", "wrapper", "mxnet cos", "gq cos")
    print("mxnet %s, gluon_quant %s; ratios = speed-up over fused fp32 (higher is faster); "
          "medians of %d rounds; cos = cosine with fp32 (worst output)%s"
          % (mx.__version__, gq.__version__, args.repeat,
             "; detectors without NMS" if args.no_nms else ""))
    print("oneDNN int8 kernels (MXNet's and gluon_quant's alike): %s" % gq.kernels.describe())
    print(ort_note)
    print(header)
    print("-" * len(header))
    results, peer_rows = {}, []
    for name in args.models:
        size = args.image_size or IMAGE_SIZES.get(name, 224)
        calib = sample_batches(args.calib_batches, 16, size=size)
        variants = build_variants(name, calib, args.batch_sizes, nms=not args.no_nms)
        peer = start_peer(ort_python, variants["fp32"], calib, name, args)
        for batch in args.batch_sizes:
            x_np = np.resize(np.concatenate(calib), (batch, 3, size, size)).astype(np.float32)
            x = mx.nd.array(x_np)
            timers = {key: block_timer(variants[key], x) for key in VARIANTS}
            if peer is not None:
                timers.update((key, peer.timer(key, x_np)) for key in PEER_VARIANTS)
            t = time_calls(timers, args.repeat)
            # tight alternating loops at every batch size: the round robin's gq/raw
            # ratio moved by +-9% at batch 16 on a shared machine (same graph, same calls)
            t["overhead"] = wrapper_overhead(variants, x, rounds=21 if batch == 1 else 11,
                                             calls=max(2, 50 // batch))
            cos = agreement(variants, x, peer, x_np)
            results[(name, batch)] = t
            print(("%-16s %5d" + " %9.2f" * 5 + " %8.2f" * 4 + " %+8.1f%%" + " %8.4f" * 2) % (
                name, batch, *(t[k] * 1e3 for k in VARIANTS),
                t["fused"] / t["fp32"], t["fused"] / t["mxnet"], t["fused"] / t["gq"],
                t["gq/mxnet"], 100 * t["overhead"], cos["mxnet"], cos["gq"]))
            if peer is not None:
                peer_rows.append((name, batch, t, cos))
        print("%-16s %5s  throughput img/s: %s" % ("", "", ", ".join(
            "batch %d: fused %.0f, mxnet %.0f, gq %.0f" % (
                b, b / results[(name, b)]["fused"], b / results[(name, b)]["mxnet"],
                b / results[(name, b)]["gq"]) for b in args.batch_sizes)))
        if peer is not None:
            peer.close()
        del variants
    if peer_rows:
        print_peer_table(peer_rows, args)
    print()
    model, batch, target = TARGET_SPEEDUP
    if (model, batch) in results:
        t = results[(model, batch)]
        print("target: gq int8 >= %.1fx fused fp32 on %s batch %d: %.2fx %s" % (
            target, model, batch, t["fused"] / t["gq"],
            "met" if t["fused"] / t["gq"] >= target else "NOT met"))
    worst = min(results.items(), key=lambda kv: kv[1]["gq/mxnet"])
    print("target: gq never slower than quantize_net_v2 (>= %.2fx): worst %.2fx (%s, batch %d)"
          % (TARGET_VS_MXNET, worst[1]["gq/mxnet"], *worst[0]))
    ones = {k: v for k, v in results.items() if k[1] == 1}
    if ones:
        over = max(v["overhead"] for v in ones.values())
        print("target: wrapper overhead at batch 1 < %.0f%%: worst %+.1f%% %s" % (
            100 * TARGET_OVERHEAD, 100 * over, "met" if over < TARGET_OVERHEAD else "NOT met"))


if __name__ == "__main__":
    main()
