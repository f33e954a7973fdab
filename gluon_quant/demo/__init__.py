"""The offline demo: EfficientNet-Lite (ImageNet weights) quantized to int8 on real photos.

Run ``python -m gluon_quant.demo`` (``--model efficientnet_lite1`` or ``_lite2`` for the
larger variants).  It splits the real photos that ship with scikit-image, scikit-learn
and matplotlib into a calibration part and a held-out part that never overlap
(:mod:`gluon_quant.zoo.evaluation`), calibrates on crops of the first, classifies crops
of the second in fp32 and int8, and prints top-5 classes, agreement, logit cosine,
model size and speed.  Nothing is downloaded.
"""
import logging
import os
import tempfile
import time

import mxnet as mx
import numpy as np

from ..api import quantize
from ..zoo import efficientnet_lite, imagenet_class_names
from ..zoo.evaluation import (calibration_crops, held_out_crops, normalise,
                              rounding_reference, score, split_photos)

__all__ = ["calibration_batches", "format_summary", "run_demo"]

_log = logging.getLogger(__name__)

#: Short-side sizes the calibration crops are taken at (224: the whole short side).
_CALIB_SCALES = (224, 256, 320)


def _crop_batch(pixels, y0, x0):
    crop = pixels[y0:y0 + 224, x0:x0 + 224].asnumpy()
    batch = (crop.astype(np.float32) - 127.0) / 128.0  # as zoo.preprocess
    batch = batch.transpose(2, 0, 1)[None]
    return np.concatenate([batch, batch[:, :, :, ::-1]])  # and its mirror image


def calibration_batches(photos, *, scales=_CALIB_SCALES, batch_size=16):
    """Calibration batches from photos: centre and corner crops at several scales, flipped.

    Parameters
    ----------
    photos : iterable of numpy.ndarray
        ``(H, W, 3)`` uint8 RGB photos.
    scales : tuple of int
        Short-side sizes (>= 224) to resize to before cropping 224x224.
    batch_size : int

    Returns
    -------
    list of numpy.ndarray
        ``(n, 3, 224, 224)`` float32 batches, preprocessed as :func:`zoo.preprocess`.
    """
    crops = []
    for image in photos:
        for size in scales:
            pixels = mx.image.resize_short(mx.nd.array(image, dtype=np.uint8), size, interp=2)
            height, width = pixels.shape[:2]
            corners = {((height - 224) // 2, (width - 224) // 2), (0, 0),
                       (height - 224, width - 224)}
            crops += [_crop_batch(pixels, y0, x0) for y0, x0 in sorted(corners)]
    data = np.concatenate(crops)
    return [data[i:i + batch_size] for i in range(0, len(data), batch_size)]


def _time_per_call(block, x, repeat):
    block(x).wait_to_read()  # warm up (and build the cached graph)
    start = time.perf_counter()
    for _ in range(repeat):
        block(x).wait_to_read()
    return (time.perf_counter() - start) / repeat


def _params_bytes(net):
    return sum(p.data().size * np.dtype(p.data().dtype).itemsize for p in net.collect_params().values())


def _int8_bytes(qnet, model):
    """Size on disk of the int8 export, or the in-memory parameter bytes without export."""
    if hasattr(qnet, "export"):
        with tempfile.TemporaryDirectory() as tmp:
            files = qnet.export(os.path.join(tmp, model + "_int8"))
            return sum(os.path.getsize(str(f)) for f in files.values()), "int8 export on disk"
    return _params_bytes(qnet), "int8 parameters in memory"


#: Held-out crops a photo (:func:`~gluon_quant.zoo.evaluation.held_out_crops`), and the
#: index of the reference view among them (centre crop at short side size + 32).
_HELD_OUT_VIEWS, _REFERENCE_VIEW = 4, 1
_PIXEL_MEAN, _PIXEL_SCALE = (127.0,) * 3, (128.0,) * 3  # as zoo.preprocess


def run_demo(*, model="efficientnet_lite0", max_photos=None, repeat=10, calibrator="mse"):
    """Quantize an EfficientNet-Lite and compare it with fp32 on photos it was not calibrated on.

    Parameters
    ----------
    model : str, default 'efficientnet_lite0'
        ``'efficientnet_lite0'``, ``'efficientnet_lite1'`` or ``'efficientnet_lite2'``.
    max_photos : int, optional
        Use only the first photos of each part (all by default).
    repeat : int, default 10
        Timed forward passes per model.
    calibrator : str, default 'mse'

    Returns
    -------
    dict
        ``model``, ``calibration_photos`` and ``photos`` (the held-out ones),
        ``fp32_top5``/``int8_top5`` (held-out photo -> list of (class, probability), on
        its reference view), ``images`` (held-out crops scored), ``top1_agreement`` and
        ``cosine`` (mean per-image logit cosine) over them, ``rounding`` (the fp32 net
        against itself with every pixel moved by up to half a grey level:
        :func:`~gluon_quant.zoo.evaluation.rounding_reference`), ``fp32_bytes``,
        ``int8_bytes``, ``size_source``, ``fp32_ms``, ``int8_ms``, ``speedup``.
    """
    split = split_photos()
    calib_photos = split.calibration[:max_photos] if max_photos else split.calibration
    held_photos = split.held_out[:max_photos] if max_photos else split.held_out
    net = efficientnet_lite(model)
    size = net.image_size
    net.hybridize(static_alloc=True, static_shape=True)
    crops = normalise(calibration_crops(calib_photos, size), _PIXEL_MEAN, _PIXEL_SCALE)
    qnet = quantize(net, [crops[i:i + 16] for i in range(0, len(crops), 16)],
                    calibrator=calibrator, progress=False)
    images = normalise(held_out_crops(held_photos, size), _PIXEL_MEAN, _PIXEL_SCALE)
    x = mx.nd.array(images)
    fp32 = net(x).asnumpy()
    int8 = qnet(x).asnumpy()
    result = score(fp32, int8)
    rounding = rounding_reference(lambda a: net(mx.nd.array(a)).asnumpy(), images,
                                  _PIXEL_SCALE, clean=fp32)
    classes = imagenet_class_names()
    names = [p.name for p in held_photos]

    def top5(logits):
        logits = logits[_REFERENCE_VIEW::_HELD_OUT_VIEWS]
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        return {n: [(classes[i], float(p[i])) for i in np.argsort(-p)[:5]]
                for n, p in zip(names, prob)}

    fp32_ms = _time_per_call(net, x, repeat) * 1e3
    int8_ms = _time_per_call(qnet, x, repeat) * 1e3
    int8_bytes, source = _int8_bytes(qnet, model)
    return {"model": model, "calibration_photos": [p.name for p in calib_photos],
            "photos": names, "fp32_top5": top5(fp32), "int8_top5": top5(int8),
            "images": result.total, "top1_agreement": result.agree / result.total,
            "cosine": result.cosine, "rounding": rounding, "fp32_bytes": _params_bytes(net),
            "int8_bytes": int8_bytes, "size_source": source,
            "fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms}


def format_summary(res):
    """The demo's result (:func:`run_demo`) as the text the command line prints."""
    title = res["model"].replace("efficientnet_lite", "EfficientNet-Lite")
    lines = ["%s (ImageNet weights), fp32 vs int8 (gluon_quant, oneDNN)" % title,
             "calibrated on %d photos (%s)" % (len(res["calibration_photos"]),
                                               ", ".join(res["calibration_photos"])),
             "scored on %d other photos, %d crops and mirror images:"
             % (len(res["photos"]), res["images"]), ""]
    for name in res["photos"]:
        lines.append("%s" % name)
        for (fc, fp), (qc, qp) in zip(res["fp32_top5"][name], res["int8_top5"][name]):
            lines.append("    fp32 %-28s %5.3f   int8 %-28s %5.3f" % (fc[:28], fp, qc[:28], qp))
    lines += ["",
              "top-1 agreement: %d of %d held-out images" % (
                  round(res["top1_agreement"] * res["images"]), res["images"]),
              "logit cosine:    %.4f" % res["cosine"],
              "for scale, fp32 against itself with every pixel moved by up to half a grey "
              "level:", "                 %s of %d agreeing, logit cosine %.4f" % (
                  "%d-%d" % (res["rounding"].least, res["rounding"].most)
                  if res["rounding"].least != res["rounding"].most else res["rounding"].most,
                  res["rounding"].total, res["rounding"].cosine),
              "model size:      fp32 %.1f MB -> %.1f MB (%s), %.2fx smaller" % (
                  res["fp32_bytes"] / 1e6, res["int8_bytes"] / 1e6, res["size_source"],
                  res["fp32_bytes"] / res["int8_bytes"]),
              "speed (batch %d): fp32 %.1f ms -> int8 %.1f ms, %.2fx" % (
                  res["images"], res["fp32_ms"], res["int8_ms"], res["speedup"])]
    return "\n".join(lines)
