"""End-to-end calibration time, as ratios to one plain fp32 forward pass over the data.

For each model (GluonCV, ``pretrained=False``, BatchNorm statistics re-estimated on the
data; or EfficientNet-Lite with its ImageNet weights), over the same batches, in one run:

* the floor: the hybridized fp32 net (``static_alloc``, warmed up) run over every batch;
* gluon_quant with each built-in calibrator: ``QuantizedHybridBlock.calibrate`` (the pass
  over the data plus the threshold search) and the whole ``gq.quantize`` (trace, fusion,
  quantization pass, calibration, int8 graph), after one untimed calibration on one batch
  (as the floor's net, oneDNN's kernels for these shapes are then compiled);
* MXNet 1.9.1's ``mx.contrib.quantization.quantize_net_v2`` with ``calib_mode='naive'`` and
  ``'entropy'`` (given an ``NDArrayIter``, on a fresh copy of the net, since it
  re-hybridizes the net it is given);

then, on the last model's entropy statistics, the threshold search alone per method.
Wall-clock seconds and process CPU seconds (all threads) are both printed: on a shared
machine the CPU-time ratios are the steadier ones.

Threads: as ``inference.py``, every variant gets the machine's processors as OpenMP threads
unless ``OMP_NUM_THREADS`` says otherwise (MXNet 1.9.1 alone takes half the processors: one
thread on a 2-core machine, where gluon_quant's statistics then run on the idle second core;
with both cores busy in the forward pass they cost wall time). The setting is printed;
``OMP_NUM_THREADS=1 python benchmarks/calibration.py ...`` gives MXNet's own default here. ::

    python benchmarks/calibration.py [--models resnet18_v1 resnet50_v1] [--images 256]
    python benchmarks/calibration.py --models resnet18_v1 --methods entropy --skip-mxnet
    python benchmarks/calibration.py --models resnet18_v1 mobilenetv2_1.0 efficientnet_lite0 \\
        --methods entropy --skip-mxnet --repeat 3      # best of 3 rounds on a busy machine
"""
import argparse
import logging
import os
import time

# Before MXNet loads (it reads the setting once): see the module doc.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import mxnet as mx  # noqa: E402 (after the thread setting)
import numpy as np

import gluon_quant as gq
from gluon_quant.calib import CALIBRATORS
from gluon_quant.zoo.batchnorm import reestimate_batchnorm
from _common import real_weights, zoo_net

METHODS = ("minmax", "entropy", "percentile", "mse")
#: Goal for the whole ``quantize()`` (bias correction included), as a ratio to the floor.
TARGET = 1.25


def smooth_images(count, batch, seed=0):
    """``count`` smooth 224x224 RGB images in [-1, 1], as NDArray batches of ``batch``."""
    rs = np.random.RandomState(seed)
    out = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        small = mx.nd.array(rs.rand(n, 3, 14, 14).astype("float32"))
        out.append(mx.nd.contrib.BilinearResize2D(small, height=224, width=224) * 2 - 1)
    return out


def make_net(name, batches):
    net = zoo_net(name)
    if not real_weights(name):    # random weights: realistic statistics
        reestimate_batchnorm(net, mx.nd.concat(*batches[:2], dim=0))
    return net


class Clock:
    """Wall-clock and process CPU seconds of a block of code."""

    def __enter__(self):
        mx.nd.waitall()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        mx.nd.waitall()
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def floor(net, batches):
    net.hybridize(static_alloc=True, static_shape=True)
    net(batches[0]).wait_to_read()
    with Clock() as clock:
        for batch in batches:
            net(batch).wait_to_read()
    return clock


def gluon_quant_run(net, batches, method):
    qnet = gq.QuantizedHybridBlock(net, calibrator=method, progress=False)
    with Clock() as total:
        qnet.fuse()
        qnet.quantize_graph()
        with Clock() as calib:
            qnet.calibrate(batches)
        with Clock() as final:     # int8 graph, bias correction, first run
            qnet.finalize()
    total.finalize = final
    return calib, total, qnet


def mxnet_run(name, net, batches, mode):
    fresh = zoo_net(name, net)
    data = mx.nd.concat(*batches, dim=0)
    it = mx.io.NDArrayIter(data=data, batch_size=batches[0].shape[0])
    shape = mx.io.DataDesc("data", batches[0].shape)
    with Clock() as clock:
        mx.contrib.quantization.quantize_net_v2(
            fresh, quantized_dtype="auto", quantize_mode="full", calib_data=it,
            data_shapes=[shape], calib_mode=mode, num_calib_examples=data.shape[0],
            ctx=mx.cpu(), logger=None)
    return clock


def row(model, what, clock, base):
    print("%-12s %-40s %8.2f %7.2fx %9.2f %7.2fx" % (
        model, what, clock.wall, clock.wall / base.wall, clock.cpu, clock.cpu / base.cpu),
        flush=True)


def threshold_search(qnet, repeat=3):
    print("\nthreshold search, all %d calibrated tensors (best of %d):"
          % (len(qnet.calibrator.names), repeat))
    for method in METHODS:
        scorer = qnet.calibrator.rescore(CALIBRATORS[method])
        best = min(_seconds(scorer.compute) for _ in range(repeat))
        print("  %-10s %8.3f s" % (method, best), flush=True)


def _seconds(func):
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18_v1", "resnet50_v1"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--skip-mxnet", action="store_true", help="skip quantize_net_v2")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of gluon_quant runs, each followed by a floor run; the "
                             "fastest (CPU time) of each is shown")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    batches = smooth_images(args.images, args.batch)
    print("%d images of 224x224, batch %d; ratios to the fp32 forward pass (floor); "
          "OMP_NUM_THREADS=%s (%d processors)"
          % (args.images, args.batch, os.environ["OMP_NUM_THREADS"], os.cpu_count() or 1))
    print("%-12s %-40s %8s %8s %9s %8s" % ("model", "what", "wall s", "x floor", "cpu s",
                                          "x floor"))
    entropy_qnet = None
    for name in args.models:
        net = make_net(name, batches)
        floors = [floor(net, batches)]
        gluon_quant_run(net, batches[:1], "minmax")  # warm-up, as the floor's net is warm
        runs = {}
        for _ in range(args.repeat):     # rounds alternate with the floor; best of each
            for method in args.methods:
                run = gluon_quant_run(net, batches, method)
                if method not in runs or run[1].cpu < runs[method][1].cpu:
                    runs[method] = run
            floors.append(floor(net, batches))
        base = min(floors, key=lambda c: c.cpu)
        row(name, "fp32 forward (floor, best of %d)" % len(floors), base, base)
        for method, (calib, total, _) in runs.items():
            row(name, "gluon_quant %s: calibrate()" % method, calib, base)
            row(name, "gluon_quant %s:   finalize() (bias, 1st run)" % method,
                total.finalize, base)
            row(name, "gluon_quant %s: quantize() total" % method, total, base)
        if not args.skip_mxnet:
            for mode in ("naive", "entropy"):
                row(name, "mxnet quantize_net_v2 calib_mode=%s" % mode,
                    mxnet_run(name, net, batches, mode), base)
        if "entropy" in runs:
            entropy_qnet = runs["entropy"][2]
            total = runs["entropy"][1]
            print("%-12s target: entropy quantize() <= %.2fx the fp32 forward: wall %.2fx, "
                  "cpu %.2fx" % (name, TARGET, total.wall / base.wall, total.cpu / base.cpu))
    if entropy_qnet is not None:
        threshold_search(entropy_qnet)


if __name__ == "__main__":
    main()
