"""Ray against one process: calibration on shards, and tuning trials side by side.

In one run, on a GluonCV model (random weights, BatchNorm statistics re-estimated on the
data) and the same batches:

* calibration: ``QuantizedHybridBlock.calibrate`` in this process, then
  ``calibrate_parallel`` on a local Ray (one task per shard; the first call also starts
  Ray's worker processes, which import MXNet: timed apart as "cold"), then on the process
  pool (``spawn``, the no-Ray fallback); tasks/s, the speed-up over one process and
  whether the thresholds are identical;
* tuning: ``gq.tune`` with ``tolerance=0`` on the top-1 agreement with fp32 (random
  weights leave near-ties that int8 flips, so it is not met and all ``--trials`` trials
  run), sequentially and with ``engine='ray'``; the speed-up and whether the trials and
  the chosen configuration are identical.

This process's MXNet uses ``OMP_NUM_THREADS`` threads; each Ray task uses one (Ray sets it
from the task's one CPU).  Run it with ``OMP_NUM_THREADS`` equal to the machine's cores
for a fair race (one process using every core against one task per core)::

    OMP_NUM_THREADS=2 python benchmarks/parallel.py [--model resnet18_v1] [--images 128]
"""
import argparse
import logging
import os
import time

import mxnet as mx
import numpy as np
import ray

import gluon_quant as gq
from gluon_quant.zoo.batchnorm import reestimate_batchnorm
from _common import zoo_net


def _timed(func):
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


def _batches(count, batch, size, seed=0):
    rs = np.random.RandomState(seed)
    images = rs.rand(count, 3, size, size).astype("float32") * 2 - 1
    return [images[i:i + batch] for i in range(0, count, batch)]


def _agreement(net, images, batch):
    expected = np.concatenate([net(mx.nd.array(images[i:i + batch])).argmax(axis=1).asnumpy()
                               for i in range(0, len(images), batch)])

    def eval_fn(model):
        got = np.concatenate([model(mx.nd.array(images[i:i + batch])).argmax(axis=1)
                              .asnumpy() for i in range(0, len(images), batch)])
        return float((got == expected).mean())
    return eval_fn


def bench_calibration(net, batches, cpus):
    qnet = gq.QuantizedHybridBlock(net, calibrator="entropy", progress=False)
    qnet.quantize_graph()
    # Warm-up (oneDNN kernels) on a twin: calibrate() adds to its calibrator's statistics.
    qnet.clone().calibrate(batches[:1])
    single, one_s = _timed(lambda: qnet.calibrate(batches))
    rows = [("one process", one_s, 1, True)]
    for label, shards in (("ray, cold", cpus), ("ray", cpus), ("ray", len(batches))):
        parts = [batches[i::shards] for i in range(shards)]
        table, secs = _timed(lambda: gq.calibrate_parallel(qnet, parts, engine="ray",
                                                           progress=False))
        rows.append(("%s, %d shards" % (label, shards), secs, shards,
                     dict(table) == dict(single)))
    parts = [batches[i::cpus] for i in range(cpus)]
    table, secs = _timed(lambda: gq.calibrate_parallel(qnet, parts, engine="process",
                                                       workers=cpus, progress=False))
    rows.append(("process pool (spawn), %d shards" % cpus, secs, cpus,
                 dict(table) == dict(single)))
    print("\ncalibration: %d batches of %d, %d tensors, entropy"
          % (len(batches), len(batches[0]), len(single)))
    print("%-34s %9s %9s %9s %10s" % ("", "seconds", "tasks/s", "speed-up", "identical"))
    for label, secs, tasks, same in rows:
        print("%-34s %9.2f %9.2f %8.2fx %10s" % (label, secs, tasks / secs, one_s / secs, same))


def bench_tune(net, batches, eval_images, trials):
    eval_fn = _agreement(net, eval_images, 64)
    kwargs = dict(tolerance=0.0, max_trials=trials, max_candidates=4, doctor_batches=1,
                  progress=False)
    gq.tune(net, batches[:2], eval_fn, tolerance=1.0, max_trials=1, progress=False)  # warm-up
    (_, seq), seq_s = _timed(lambda: gq.tune(net, batches, eval_fn, **kwargs))
    (_, par), par_s = _timed(lambda: gq.tune(net, batches, eval_fn, engine="ray", **kwargs))
    same = par.trials == seq.trials and par.chosen == seq.chosen
    print("\ntune: %d trials, eval_fn = top-1 agreement on %d images"
          % (len(seq.trials), len(eval_images)))
    print("%-34s %9s %9s %9s %10s" % ("", "seconds", "trials/s", "speed-up", "identical"))
    print("%-34s %9.2f %9.2f %8.2fx %10s" % ("sequential", seq_s, len(seq.trials) / seq_s,
                                              1.0, True))
    print("%-34s %9.2f %9.2f %8.2fx %10s" % ("ray", par_s, len(par.trials) / par_s,
                                              seq_s / par_s, same))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18_v1")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-images", type=int, default=1024)
    parser.add_argument("--trials", type=int, default=6)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    net = zoo_net(args.model)
    batches = _batches(args.images, args.batch, args.size)
    reestimate_batchnorm(net, mx.nd.array(np.concatenate(batches)))
    net.hybridize(static_alloc=True, static_shape=True)
    _, start_s = _timed(lambda: ray.init(include_dashboard=False, logging_level=logging.ERROR,
                                         log_to_driver=False))
    cpus = int(ray.cluster_resources()["CPU"])
    print("%s, %dx%d inputs; this process: OMP_NUM_THREADS=%s; local Ray: %d CPUs "
          "(ray.init %.1f s, not counted below)" % (args.model, args.size, args.size,
                                                   os.environ.get("OMP_NUM_THREADS", "unset"),
                                                   cpus, start_s))
    bench_calibration(net, batches, cpus)
    eval_images = np.concatenate(_batches(args.eval_images, 256, args.size, seed=1))
    bench_tune(net, batches, eval_images, args.trials)
    ray.shutdown()


if __name__ == "__main__":
    main()
