"""gluon_quant's entropy calibration against MXNet 1.9.1's own entropy flow, on held-out photos.

For each model and each split of the offline sample photos (:func:`gluon_quant.zoo.sample_images`)
into 3 calibration photos and 5 scored ones, which never overlap:

* calibration: 18 crops of the 3 calibration photos (centre and two corners at a short
  side of 256, each also mirrored), in batches of 16;
* scoring: 20 crops of the 5 other photos (centre crops at short sides 224, 256 and 320,
  and the mirrored 256 crop), compared with the fp32 net: top-1 agreement and the mean over
  images of the cosine between int8 and fp32 logits.

Quantizers, each on its own copy of the weights:

* ``gq entropy``: ``gq.quantize(net, batches, calibrator='entropy')``, all defaults;
* ``gq entropy, max_clip_error=None``: the calibrator without its error guard (its
  behaviour before the guard; state version 1);
* ``gq entropy, no bias correction``: ``bias_correction=False``;
* ``mxnet entropy``: ``mx.contrib.quantization.quantize_net_v2(calib_mode='entropy',
  quantized_dtype='auto', quantize_mode='full')``.

Models: ``efficientnet_lite0`` (real ImageNet weights, :mod:`gluon_quant.zoo`) and GluonCV
nets with random weights (``pretrained=False``, Xavier) whose BatchNorm statistics are set
from the calibration crops (:func:`~gluon_quant.zoo.batchnorm.reestimate_batchnorm`): for
those, agreement is a weak signal (deep random nets amplify any error).

Measured (2 shared cores, the 3 splits, 60 scored images per model; agreement, cosine):

==================  ===========  ===================  ==================  =============
model               gq entropy   max_clip_error=None  no bias correction  mxnet entropy
==================  ===========  ===================  ==================  =============
efficientnet_lite0  54/60 .9951  51/60 .9480          58/60 .9953         57/60 .9825
resnet18_v1         57/60 .9995  56/60 .9990          57/60 .9995         57/60 .9982
mobilenetv2_0.5     55/60 .9773  58/60 .9555          58/60 .9771         59/60 .9447
==================  ===========  ===================  ==================  =============

The EfficientNet-Lite0 images gq gets wrong are near ties in fp32 (top-2 logit margins
0.006 to 0.2 in splits 0 and 2).  Bias correction's per-class shift of the dense layer's
output, fitted on the 18 calibration crops, flips 4 of them: with every other layer still
corrected but not the dense one, gq entropy gives 58/60 and a cosine of .9963. ::

    python benchmarks/entropy_vs_mxnet.py
    python benchmarks/entropy_vs_mxnet.py --models efficientnet_lite0 --splits 1

``--thresholds`` first prints, per calibrated tensor of the first model on split 0, the
thresholds chosen from the same batches by gq entropy (default; without the error guard;
without the guard and without histogram subsampling) and by MXNet's own KL search on
MXNet's own histograms (8001 bins, grown as its collector grows them).
"""
import argparse
import logging
import time

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as mxq

import gluon_quant as gq
from gluon_quant.calib import EntropyCalibrator
from gluon_quant.debug.compare import cosine
from gluon_quant.zoo import efficientnet_lite0, sample_images
from gluon_quant.zoo.batchnorm import reestimate_batchnorm
from gluon_quant.zoo.gluoncv import IMAGENET_MEAN, IMAGENET_STD
from _common import mxnet_quantize, zoo_net

MODELS = ("efficientnet_lite0", "resnet18_v1", "mobilenetv2_0.5")
#: Calibration photos of each split; the other sample photos are scored.
SPLITS = (("chelsea", "coffee", "astronaut"), ("rocket", "china", "grace_hopper"),
          ("motorcycle", "flower", "coffee"))
BATCH = 16


def _resized(image, short):
    return mx.image.resize_short(mx.nd.array(image, dtype=np.uint8), short, interp=2).asnumpy()


def _crop(pixels, y0, x0, size=224):
    return pixels[y0:y0 + size, x0:x0 + size]


def calibration_crops(photos):
    """Centre, top-left and bottom-right 224 crops at short side 256, and their mirrors."""
    crops = []
    for image in photos:
        pixels = _resized(image, 256)
        height, width = pixels.shape[:2]
        for y0, x0 in (((height - 224) // 2, (width - 224) // 2), (0, 0),
                       (height - 224, width - 224)):
            crop = _crop(pixels, y0, x0)
            crops += [crop, crop[:, ::-1]]
    return np.stack(crops)


def scored_crops(photos):
    """Centre 224 crops at short sides 224, 256 and 320, and the mirrored 256 one."""
    crops = []
    for image in photos:
        for short in (224, 256, 320):
            pixels = _resized(image, short)
            height, width = pixels.shape[:2]
            crop = _crop(pixels, (height - 224) // 2, (width - 224) // 2)
            crops += [crop, crop[:, ::-1]] if short == 256 else [crop]
    return np.stack(crops)


def normalise(crops, model):
    """NHWC uint8 -> NCHW float32, as each model expects."""
    x = crops.astype(np.float32)
    if model == "efficientnet_lite0":
        x = (x - 127.0) / 128.0  # as gluon_quant.zoo.preprocess
    else:
        x = (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def build(model, calib):
    """The fp32 net, and a function returning new copies of it (same weights)."""
    if model == "efficientnet_lite0":
        return efficientnet_lite0(), efficientnet_lite0
    net = zoo_net(model)
    reestimate_batchnorm(net, mx.nd.array(calib))
    return net, lambda: zoo_net(model, net)


def gq_entropy(**options):
    calibrator_options = {k: options.pop(k) for k in list(options) if k.startswith("max_")}

    def run(copy, batches, _):
        return gq.quantize(copy(), batches, calibrator=EntropyCalibrator(**calibrator_options),
                           progress=False, **options)
    return run


def mxnet_entropy(copy, batches, calib):
    return mxnet_quantize(copy(), [calib], "entropy", BATCH)


QUANTIZERS = {
    "gq entropy": gq_entropy(),
    "gq entropy, max_clip_error=None": gq_entropy(max_clip_error=None),
    "gq entropy, no bias correction": gq_entropy(bias_correction=False),
    "mxnet entropy": mxnet_entropy,
}


class _AlsoMXNetHistograms(EntropyCalibrator):
    """gq's entropy calibrator that also keeps, per tensor, the histogram MXNet's entropy
    collector builds from the same batches, and full (not subsampled) gq statistics."""

    def __init__(self):
        super().__init__()
        self.mxnet = {}
        self.full = EntropyCalibrator(subsample=False, max_clip_error=None)

    def collect(self, name, array):
        super().collect(name, array)
        self.full.collect(name, array)
        array = np.asarray(array, np.float32)
        lo, hi = float(array.min()), float(array.max())
        reach = max(-lo, hi)
        if name in self.mxnet:
            self.mxnet[name] = mxq.combine_histogram(self.mxnet[name], array, lo, hi, reach)
        else:
            counts, edges = np.histogram(array, bins=8001, range=(-reach, reach))
            self.mxnet[name] = (counts, edges, lo, hi, reach)


def threshold_table(model, calib):
    """Print gq's and MXNet's entropy thresholds of every calibrated tensor, same data."""
    batches = [calib[i:i + BATCH] for i in range(0, len(calib), BATCH)]
    net, _ = build(model, calib)
    recorder = _AlsoMXNetHistograms()
    qnet = gq.QuantizedHybridBlock(net, calibrator=recorder, progress=False)
    qnet.fuse()
    qnet.quantize_graph()
    ours = qnet.calibrate(batches)
    unguarded = recorder.rescore(EntropyCalibrator, max_clip_error=None).compute()
    full = recorder.full.compute()
    print("%-48s %4s %8s %8s %8s %8s %8s" % ("tensor (%s, split 0)" % model, "sign", "absmax",
                                            "gq", "no guard", "no subs.", "mxnet"))
    for name, stats in recorder.statistics.items():
        # MXNet's private KL search, as quantize_net_v2 calls it for quantized_dtype='auto'.
        _, _, mx_threshold, _ = mxq._get_optimal_threshold(recorder.mxnet[name], "auto", 255)
        print("%-48s %4s %8.3f %8.3f %8.3f %8.3f %8.3f" % (
            name[-48:], "u" if stats.min >= 0 else "s", stats.absmax, ours[name][1],
            unguarded[name][1], full[name][1], float(mx_threshold)), flush=True)
    print()


def scores(fp32, int8):
    """Per image: whether the top-1 classes agree, and the logits' cosine."""
    return fp32.argmax(1) == int8.argmax(1), np.array([cosine(a, b) for a, b in zip(fp32, int8)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--splits", type=int, default=len(SPLITS), choices=range(1, 4))
    parser.add_argument("--thresholds", action="store_true",
                        help="first print gq's and MXNet's thresholds per tensor")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    photos = sample_images()
    if args.thresholds:
        threshold_table(args.models[0], normalise(
            calibration_crops([photos[n] for n in SPLITS[0]]), args.models[0]))
    print("%-20s %-5s %-34s %9s %11s %7s" % ("model", "split", "quantizer", "agreement",
                                             "mean cosine", "time s"))
    for model in args.models:
        totals = {name: ([], []) for name in QUANTIZERS}
        for index, calib_names in enumerate(SPLITS[:args.splits]):
            calib = normalise(calibration_crops([photos[n] for n in calib_names]), model)
            held = normalise(scored_crops([p for n, p in sorted(photos.items())
                                           if n not in calib_names]), model)
            batches = [calib[i:i + BATCH] for i in range(0, len(calib), BATCH)]
            net, copy = build(model, calib)
            held_nd = mx.nd.array(held)
            fp32 = net(held_nd).asnumpy()
            for name, quantize in QUANTIZERS.items():
                start = time.perf_counter()
                qnet = quantize(copy, batches, mx.nd.array(calib))
                seconds = time.perf_counter() - start
                agree, cos = scores(fp32, qnet(held_nd).asnumpy())
                totals[name][0].append(agree)
                totals[name][1].append(cos)
                print("%-20s %-5d %-34s %4d/%-4d %11.4f %7.1f" % (
                    model, index, name, agree.sum(), agree.size, cos.mean(), seconds),
                    flush=True)
        for name, (agree, cos) in totals.items():
            agree, cos = np.concatenate(agree), np.concatenate(cos)
            print("%-20s %-5s %-34s %4d/%-4d %11.4f" % (model, "all", name, agree.sum(),
                                                       agree.size, cos.mean()), flush=True)


if __name__ == "__main__":
    main()
