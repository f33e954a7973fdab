"""Weight methods compared: bias correction, cross-layer equalization (CLE), AdaRound.

For each net, int8 logits against fp32 logits on held-out inputs: mean per-sample cosine
and top-1 agreement. The offline sample photos are split by name: random crops of one
half calibrate (and set the BatchNorm statistics of the random-weight nets), random crops
of the other half are scored, so no scored photo is ever seen by calibration.

* efficientnet_lite0: real ImageNet weights (gluon_quant.zoo).
* GluonCV nets: random weights, BatchNorm statistics set from calibration crops.

Run: ``python benchmarks/weight_methods.py [net ...]`` (2 threads; several minutes a net).
"""
import argparse
import sys
import time

import mxnet as mx
import numpy as np

import gluon_quant as gq
from gluon_quant.zoo import efficientnet_lite0, sample_images
from gluon_quant.zoo.gluoncv import (IMAGENET_MEAN, IMAGENET_STD, initialize_random,
                                     random_crops, set_batchnorm_statistics)

NETS = ("efficientnet_lite0", "mobilenetv2_0.5", "mobilenetv3_small", "resnet18_v1",
        "inceptionv3")

#: (label, settings replacing the baseline's, which calibration: with CLE or without)
METHODS = (
    ("none", {"bias_correction": False}, False),
    ("bias correction", {"bias_correction": True}, False),
    ("CLE", {"bias_correction": False}, True),
    ("CLE + bias corr.", {"bias_correction": True}, True),
    ("AdaRound", {"bias_correction": False, "weight_rounding": "adaround"}, False),
    ("AdaRound + bias corr.", {"bias_correction": True, "weight_rounding": "adaround"}, False),
    ("CLE + AdaRound + bias corr.", {"bias_correction": True, "weight_rounding": "adaround"},
     True),
)


def split_photos():
    """(calibration photos, scored photos): alternate photos by sorted name."""
    photos = sorted(sample_images().items())
    return [p for _, p in photos[0::2]], [p for _, p in photos[1::2]]


def crops(photos, count, size, mean, std, seed):
    """``count`` random crops (25-100 % of a photo, flipped at random), normalised."""
    return random_crops(photos, count, size, mean, std, seed=seed)


def load(name, calib_photos, scored_photos, samples):
    """The fp32 net, calibration batches and held-out inputs."""
    if name == "efficientnet_lite0":
        net, size, mean, std = efficientnet_lite0(), 224, np.float32(127), np.float32(128)
    else:
        from gluoncv.model_zoo import get_model
        size = 299 if name.startswith("inception") else 224
        mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
        net = get_model(name, pretrained=False)
        initialize_random(net)
    calib = crops(calib_photos, samples, size, mean, std, seed=1)
    held = crops(scored_photos, samples, size, mean, std, seed=2)
    if name != "efficientnet_lite0":
        set_batchnorm_statistics(net, mx.nd.array(crops(calib_photos, 32, size, mean, std,
                                                        seed=3)))
    net.hybridize(static_alloc=True)
    return net, [calib[i:i + 8] for i in range(0, len(calib), 8)], held


def score(model, held, reference):
    out = np.concatenate([model(mx.nd.array(held[i:i + 8])).asnumpy()
                          for i in range(0, len(held), 8)])
    a, b = out.reshape(len(out), -1), reference.reshape(len(out), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cos.mean()), float((a.argmax(1) == b.argmax(1)).mean())


def run(name, calib_photos, scored_photos, samples, with_adaround=True):
    net, calib, held = load(name, calib_photos, scored_photos, samples)
    reference = np.concatenate([net(mx.nd.array(held[i:i + 8])).asnumpy()
                                for i in range(0, len(held), 8)])
    rows = []
    bases, tables = {}, {}
    for label, settings, cle in METHODS:
        if "weight_rounding" in settings and not with_adaround:
            continue
        start = time.perf_counter()
        if cle not in bases:
            bases[cle] = gq.quantize(net, calib, equalization=cle, bias_correction=False,
                                     progress=False)
        base = bases[cle]
        # The AdaRound choices stored in a table are reused by the next method.
        key = (cle, settings.get("weight_rounding", "nearest"))
        model = base.clone(**settings).finalize(tables.get(key, base.calibration_table))
        tables[key] = model.calibration_table
        cos, agree = score(model, held, reference)
        rows.append((name, label, cos, agree, time.perf_counter() - start))
        print("| %s | %s | %.4f | %.0f%% | %.0f s |" % (name, label, cos, 100 * agree,
                                                     rows[-1][-1]), flush=True)
        del model
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*", default=list(NETS))
    parser.add_argument("--no-adaround", action="store_true",
                        help="skip the AdaRound methods (minutes a layer on big nets)")
    parser.add_argument("--samples", type=int, default=32,
                        help="calibration crops and held-out crops per net")
    args = parser.parse_args(argv)
    calib_photos, scored_photos = split_photos()
    print("calibration photos: %d, scored photos: %d (disjoint)"
          % (len(calib_photos), len(scored_photos)))
    print("| net | method | cosine | top-1 agreement | seconds |\n|---|---|---|---|---|")
    for name in args.nets:
        run(name, calib_photos, scored_photos, args.samples, not args.no_adaround)
    return 0


if __name__ == "__main__":
    sys.exit(main())
