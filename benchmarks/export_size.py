"""Size and load time of exported int8 models: fp32, MXNet's own int8 export, gluon_quant.

For each model (GluonCV, ``pretrained=False``, BatchNorm statistics re-estimated on smooth
random images) it prints the params file size and the load time of:

* fp32: ``net.export()`` after one forward, loaded with ``mx.gluon.SymbolBlock.imports``;
* MXNet int8: ``quantize_net_v2(calib_mode='naive')``, exported after one forward (before
  it, MXNet writes an empty params file), loaded with ``SymbolBlock.imports``;
* gluon_quant int8: ``qnet.export(prefix)``, loaded with ``QuantizedSymbolBlock.imports``
  (checksums, structure checks and weight unpacking included).

"load" is the imports call; "load+1st" adds the first batch-1 inference, where MXNet's
fused int8 layers fold BatchNorm and quantize their fp32 weights. Sizes are exact; times
are medians of a few runs on whatever machine runs it: compare the ratios.

    python benchmarks/export_size.py [--models resnet18_v1 resnet50_v1] [--repeat 3]
"""
import argparse
import os
import tempfile

import mxnet as mx
import numpy as np
from gluoncv.model_zoo import get_model
from mxnet.contrib.quantization import quantize_net_v2

import gluon_quant as gq
from _common import median_seconds
from gluon_quant.zoo.batchnorm import reestimate_batchnorm


def smooth_images(n, seed):
    low = mx.nd.array(np.random.RandomState(seed).uniform(-2, 2, (n, 3, 7, 7)))
    return mx.nd.contrib.BilinearResize2D(low, height=224, width=224)


def _fresh(name, params_file):
    net = get_model(name, pretrained=False)
    net.load_parameters(params_file)
    return net


def measure(name, workdir, repeat):
    mx.random.seed(0)
    net = get_model(name, pretrained=False)
    net.initialize(mx.init.Xavier())
    reestimate_batchnorm(net, smooth_images(16, 0))
    calib = smooth_images(32, 1)
    x1 = calib[:1]
    fp32_params = os.path.join(workdir, name + "-gluon.params")
    net.save_parameters(fp32_params)

    fp32 = _fresh(name, fp32_params)
    fp32.hybridize()
    fp32(x1)
    fp32.export(os.path.join(workdir, name + "-fp32"))

    stock = _fresh(name, fp32_params)
    calib_iter = mx.io.NDArrayIter(data={"data": calib}, batch_size=16)
    stock = quantize_net_v2(stock, quantized_dtype="auto", calib_mode="naive",
                            calib_data=calib_iter, num_calib_examples=32,
                            data_shapes=calib_iter.provide_data,
                            ctx=mx.cpu())
    stock(x1)
    stock.export(os.path.join(workdir, name + "-mxint8"))

    qnet = gq.quantize(net, [calib[:16], calib[16:]], progress=False)
    paths = qnet.export(os.path.join(workdir, name + "-gq"))

    def stock_load(prefix):
        return lambda: mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"],
                                                    prefix + "-0000.params")

    rows = []
    for label, params, load in [
            ("fp32", os.path.join(workdir, name + "-fp32-0000.params"),
             stock_load(os.path.join(workdir, name + "-fp32"))),
            ("MXNet int8", os.path.join(workdir, name + "-mxint8-0000.params"),
             stock_load(os.path.join(workdir, name + "-mxint8"))),
            ("gluon_quant int8", paths["params"],
             lambda: gq.QuantizedSymbolBlock.imports(os.path.join(workdir, name + "-gq")))]:
        load_s = median_seconds(load, repeat)
        first_s = median_seconds(lambda: load()(x1).wait_to_read(), repeat)
        rows.append((label, os.path.getsize(params), load_s, first_s))
    loaded = gq.QuantizedSymbolBlock.imports(os.path.join(workdir, name + "-gq"))
    identical = np.array_equal(loaded(calib[:4]).asnumpy(), qnet(calib[:4]).asnumpy())
    return rows, identical


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18_v1", "resnet50_v1"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            rows, identical = measure(name, workdir, args.repeat)
            base_size, base_load, base_first = rows[0][1:]
            print("\n%s (gluon_quant reload bit-identical to in-memory int8: %s)"
                  % (name, identical))
            print("%-18s %12s %8s %10s %8s %12s %8s" % (
                "export", "params MB", "x fp32", "load s", "x fp32", "load+1st s", "x fp32"))
            for label, size, load_s, first_s in rows:
                print("%-18s %12.2f %8.3f %10.3f %8.2f %12.3f %8.2f" % (
                    label, size / 1e6, size / base_size, load_s, load_s / base_load,
                    first_s, first_s / base_first))


if __name__ == "__main__":
    main()
