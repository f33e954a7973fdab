"""Size and load time of exported int8 models: fp32, MXNet's own int8 export, gluon_quant.

For each model (GluonCV nets with ``pretrained=False`` and BatchNorm statistics
re-estimated on smooth random images; ``efficientnet_lite0`` with its real ImageNet
weights) it prints the params file size and the load time of:

* fp32: ``net.export()`` after one forward, loaded with ``mx.gluon.SymbolBlock.imports``
  (the symbol + params pair);
* MXNet int8: ``quantize_net_v2(calib_mode='naive')``, exported after one forward (before
  it, MXNet writes an empty params file), loaded with ``SymbolBlock.imports``;
* gluon_quant int8: ``qnet.export(prefix)``, loaded with ``QuantizedSymbolBlock.imports``
  (metadata and checksums verified, params structure parsed, weights unpacked).

"load" is the imports call; "load+1st" adds the first batch-1 inference, where MXNet's
fused int8 layers fold BatchNorm and quantize their fp32 weights. The loads of the three
exports alternate, so that all see the same machine load; each time is the median of
``--repeat`` rounds, "x fp32" the median of the per-round ratios to the fp32 load, and
"CPU" the process's CPU time over the call (all threads). Sizes are exact; compare the
time ratios, not the seconds.

    python benchmarks/export_size.py [--models resnet18_v1 mobilenetv2_1.0] [--repeat 5]
"""
import argparse
import gc
import os
import statistics
import tempfile
import time

import mxnet as mx
import numpy as np
from gluoncv.model_zoo import get_model
from mxnet.contrib.quantization import quantize_net_v2

import gluon_quant as gq
from gluon_quant.zoo import efficientnet_lite0
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

MODELS = ["resnet18_v1", "mobilenet1.0", "mobilenetv2_1.0", "efficientnet_lite0"]


def smooth_images(n, seed):
    low = mx.nd.array(np.random.RandomState(seed).uniform(-2, 2, (n, 3, 7, 7)))
    return mx.nd.contrib.BilinearResize2D(low, height=224, width=224)


def _build(name, params_file=None):
    if name == "efficientnet_lite0":
        net = efficientnet_lite0()
    else:
        net = get_model(name, pretrained=False)
        if params_file is None:
            mx.random.seed(0)
            net.initialize(mx.init.Xavier())
            reestimate_batchnorm(net, smooth_images(16, 0))
    if params_file is not None:
        net.load_parameters(params_file)
    return net


def _timed_rounds(loads, repeat):
    """Wall and CPU seconds of each ``loads[label]()``, the labels alternating in every
    round (in reverse order every other round).

    Returns ``{label: (median wall s, median CPU s, median of the per-round ratios of
    its wall time to the first label's)}``: the paired ratio cancels most of what other
    jobs on the machine do to both loads of a round.

    Gluon blocks sit in reference cycles: each loaded block is collected (outside the
    timing) before the next load, so that every load finds the allocator in the same
    state instead of paying, at random, for a collection or for fresh pages; MXNet's
    engine is waited for too (``SymbolBlock.imports`` returns with its parameter copies
    still queued: they are not timed, but must not slow the next load down).
    """
    wall = {label: [] for label in loads}
    cpu = {label: [] for label in loads}
    labels = list(loads)
    for number in range(repeat):
        for label in labels if number % 2 == 0 else labels[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            block = loads[label]()
            wall[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
            mx.nd.waitall()
            del block
            gc.collect()
    base = wall[labels[0]]
    return {label: (statistics.median(wall[label]), statistics.median(cpu[label]),
                    statistics.median([a / b for a, b in zip(wall[label], base)]))
            for label in labels}


def _first_inference(block, x):
    block(x).wait_to_read()
    return block


def measure(name, workdir, repeat):
    net = _build(name)
    calib = smooth_images(32, 1)
    x1 = calib[:1]
    fp32_params = os.path.join(workdir, name + "-gluon.params")
    net.save_parameters(fp32_params)

    fp32 = _build(name, fp32_params)
    fp32.hybridize()
    fp32(x1)
    fp32.export(os.path.join(workdir, name + "-fp32"))

    stock = _build(name, fp32_params)
    calib_iter = mx.io.NDArrayIter(data={"data": calib}, batch_size=16)
    stock = quantize_net_v2(stock, quantized_dtype="auto", calib_mode="naive",
                            calib_data=calib_iter, num_calib_examples=32,
                            data_shapes=calib_iter.provide_data, ctx=mx.cpu())
    stock(x1)
    stock.export(os.path.join(workdir, name + "-mxint8"))

    qnet = gq.quantize(net, [calib[:16], calib[16:]], progress=False)
    paths = qnet.export(os.path.join(workdir, name + "-gq"))

    def stock_load(prefix):
        prefix = os.path.join(workdir, prefix)
        return lambda: mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"],
                                                    prefix + "-0000.params")

    def gq_load():
        return gq.QuantizedSymbolBlock.imports(os.path.join(workdir, name + "-gq"))

    files = {"fp32": os.path.join(workdir, name + "-fp32-0000.params"),
             "MXNet int8": os.path.join(workdir, name + "-mxint8-0000.params"),
             "gluon_quant int8": paths["params"]}
    loads = {"fp32": stock_load(name + "-fp32"), "MXNet int8": stock_load(name + "-mxint8"),
             "gluon_quant int8": gq_load}
    load_s = _timed_rounds(loads, repeat)
    first_s = _timed_rounds({label: (lambda f=f: _first_inference(f(), x1))
                             for label, f in loads.items()}, repeat)
    rows = [(label, os.path.getsize(files[label]), load_s[label], first_s[label])
            for label in loads]
    loaded = gq_load()
    identical = np.array_equal(loaded(calib[:4]).asnumpy(), qnet(calib[:4]).asnumpy())
    return rows, identical, len(loaded.metadata["kept_fp32"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            rows, identical, kept = measure(name, workdir, args.repeat)
            base_size = rows[0][1]
            print("\n%s (reload bit-identical to the in-memory int8 model: %s; weights kept "
                  "fp32: %d)" % (name, identical, kept))
            print("%-18s %10s %7s %8s %7s %8s %11s %7s %8s" % (
                "export", "params MB", "x fp32", "load ms", "x fp32", "CPU ms",
                "load+1st ms", "x fp32", "CPU ms"))
            for label, size, (load_s, load_cpu, load_x), (first_s, first_cpu, first_x) \
                    in rows:
                print("%-18s %10.3f %7.3f %8.1f %7.2f %8.1f %11.1f %7.2f %8.1f" % (
                    label, size / 1e6, size / base_size, 1e3 * load_s, load_x,
                    1e3 * load_cpu, 1e3 * first_s, first_x, 1e3 * first_cpu))
            print("(x fp32: median of the per-round ratios to the fp32 load of the same "
                  "round)")


if __name__ == "__main__":
    main()
