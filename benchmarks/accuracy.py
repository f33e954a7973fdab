"""int8 accuracy on held-out photos: every model, every built-in calibrator, and MXNet's own flow.

One run, one table.  For each model, the real photos installed packages ship are split by
:func:`gluon_quant.zoo.evaluation.split_photos` into a calibration part and a held-out part
that never share a scene; the net is calibrated on crops of the first (12 a photo, in
batches of 16) and scored on crops of the second (4 a photo): top-1 agreement of int8 with
fp32 and the mean over images of the int8/fp32 logit cosine.

Quantizers, each on its own copy of the weights:

* ``gq <name>``: ``gq.quantize(net, batches, calibrator=name)``, other settings default
  (``mse`` is the default calibrator);
* ``mx naive`` / ``mx entropy``: ``mx.contrib.quantization.quantize_net_v2`` with
  ``quantized_dtype='auto'``, ``quantize_mode='full'`` and that ``calib_mode``, on the same
  calibration crops.  ``fail`` where MXNet raises.

For scale, each model's first row, ``fp32 +-0.5 lvl``, is the fp32 net against itself with
every pixel moved by up to half a grey level (the rounding an 8-bit photo carries anyway;
:func:`~gluon_quant.zoo.evaluation.rounding_reference`, the fewest-most agreeing of 3
draws): held-out images whose top two classes are closer than that are coin tosses for
any approximation.

Models: EfficientNet-Lite0/1/2 with their real ImageNet weights
(:func:`gluon_quant.zoo.efficientnet_lite`, at 224/240/260 pixels) and GluonCV
classification nets with random (Xavier) weights whose BatchNorm statistics are set from
the calibration crops (:func:`~gluon_quant.zoo.batchnorm.reestimate_batchnorm`): for those,
agreement is a weak signal (a random net's top-1 is often a near tie).

The table of one complete run (all models, all quantizers, defaults of commit c50a48b:
fp32 image stem where cheap, bias correction of linear and ReLU/ReLU6 layers) and what it
means is in ``docs/accuracy.md``; ``benchmarks/activation_floor.py`` takes one model apart
(the 8-bit activation floor, tensor by tensor).  About 75 minutes on 2 shared cores, one
thread.

::

    python benchmarks/accuracy.py                       # everything (about 75 minutes)
    python benchmarks/accuracy.py --models efficientnet_lite0 --quantizers "gq mse" "mx entropy"
"""
import argparse
import gc
import logging
import time

import mxnet as mx
import numpy as np

import gluon_quant as gq
from gluon_quant.zoo import VARIANTS, efficientnet_lite
from gluon_quant.zoo.batchnorm import reestimate_batchnorm
from gluon_quant.zoo.evaluation import evaluation_data, rounding_reference, score
from gluon_quant.zoo.gluoncv import IMAGENET_MEAN, IMAGENET_STD
from _common import mxnet_quantize, zoo_net

EFFICIENTNETS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
GLUONCV = ("mobilenetv2_0.5", "inceptionv3", "mobilenetv3_small", "densenet121",
           "squeezenet1.1", "resnet34_v2", "se_resnet18_v1", "resnet50_v1d")
MODELS = EFFICIENTNETS + GLUONCV
CALIBRATORS = ("mse", "entropy", "percentile", "minmax")
QUANTIZERS = tuple("gq " + name for name in CALIBRATORS) + ("mx naive", "mx entropy")
BATCH = 16
BN_CROPS = 32


def build(model, data):
    """The fp32 net and a function returning new copies of it (same weights)."""
    if model in EFFICIENTNETS:
        variant = model.rsplit("_", 1)[1]
        return efficientnet_lite(variant), lambda: efficientnet_lite(variant)
    net = zoo_net(model, size=input_size(model))
    calib = np.concatenate(data.calibration)
    # 32 crops spread over every calibration photo (a training-mode pass over all of them
    # would take gigabytes).
    reestimate_batchnorm(net, mx.nd.array(calib[::max(1, len(calib) // BN_CROPS)][:BN_CROPS]))
    return net, lambda: zoo_net(model, net, size=input_size(model))


def input_size(model):
    if model in EFFICIENTNETS:
        return VARIANTS[model.rsplit("_", 1)[1]].image_size
    return 299 if model.startswith("inception") else 224


def quantize(name, copy, data):
    """The int8 net of quantizer ``name``, calibrated on ``data.calibration``."""
    tool, method = name.split(" ", 1)
    if tool == "gq":
        return gq.quantize(copy(), data.calibration, calibrator=method, progress=False)
    return mxnet_quantize(copy(), data.calibration, method, BATCH)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--quantizers", nargs="+", default=list(QUANTIZERS),
                        choices=QUANTIZERS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print("%-20s %-14s %9s %11s %7s" % ("model", "quantizer", "agreement", "mean cosine",
                                        "time s"), flush=True)
    for model in args.models:
        size = input_size(model)
        if model in EFFICIENTNETS:
            data = evaluation_data(size, batch_size=BATCH)
        else:
            data = evaluation_data(size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                   batch_size=BATCH)
        net, copy = build(model, data)
        held = mx.nd.array(data.held_out)
        fp32 = net(held).asnumpy()
        start = time.perf_counter()
        ref = rounding_reference(lambda a, fp32_net=net: fp32_net(mx.nd.array(a)).asnumpy(),
                                 data.held_out,
                                 (128.0,) * 3 if model in EFFICIENTNETS else IMAGENET_STD,
                                 clean=fp32)
        print("%-20s %-14s %4s/%-4d %11.4f %7.1f" % (
            model, "fp32 +-0.5 lvl", "%d-%d" % (ref.least, ref.most), ref.total, ref.cosine,
            time.perf_counter() - start), flush=True)
        for name in args.quantizers:
            start = time.perf_counter()
            try:
                qnet = quantize(name, copy, data)
                result = score(fp32, qnet(held).asnumpy())
            except Exception as err:  # pylint: disable=broad-except  # MXNet's flow crashes on some nets
                print("%-20s %-14s %9s %11s  (%s)" % (model, name, "fail", "fail",
                                                     str(err).splitlines()[0][:60]), flush=True)
                continue
            print("%-20s %-14s %4d/%-4d %11.4f %7.1f" % (
                model, name, result.agree, result.total, result.cosine,
                time.perf_counter() - start), flush=True)
            del qnet
            gc.collect()
        del net
        gc.collect()


if __name__ == "__main__":
    main()
