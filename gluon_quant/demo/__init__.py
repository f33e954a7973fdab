"""The offline demo: EfficientNet-Lite0 (ImageNet weights) quantized to int8 on real photos.

Run ``python -m gluon_quant.demo``. It calibrates on the sample photos that ship with
scikit-image, scikit-learn and matplotlib (several crops of each, and their mirror
images), classifies the photos in fp32 and int8, and prints top-5 classes, agreement,
logit cosine, model size and speed.  Nothing is downloaded.
"""
import logging
import os
import tempfile
import time

import mxnet as mx
import numpy as np

from ..api import quantize
from ..debug.metrics import cosine
from ..zoo import efficientnet_lite0, imagenet_class_names, preprocess, sample_images

__all__ = ["main", "calibration_batches", "run_demo"]

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


def _int8_bytes(qnet):
    """Size on disk of the int8 export, or the in-memory parameter bytes without export."""
    if hasattr(qnet, "export"):
        with tempfile.TemporaryDirectory() as tmp:
            files = qnet.export(os.path.join(tmp, "efficientnet_lite0_int8"))
            return sum(os.path.getsize(str(f)) for f in files.values()), "int8 export on disk"
    return _params_bytes(qnet), "int8 parameters in memory"


def run_demo(*, max_photos=None, repeat=10, calibrator="mse"):
    """Quantize EfficientNet-Lite0 and compare it with fp32 on the sample photos.

    Parameters
    ----------
    max_photos : int, optional
        Use only the first photos (all by default).
    repeat : int, default 10
        Timed forward passes per model.
    calibrator : str, default 'mse'

    Returns
    -------
    dict
        ``photos``, ``fp32_top5``/``int8_top5`` (name -> list of (class, probability)),
        ``top1_agreement``, ``cosine``, ``fp32_bytes``, ``int8_bytes``, ``size_source``,
        ``fp32_ms``, ``int8_ms``, ``speedup``.
    """
    photos = sample_images()
    names = list(photos)[:max_photos] if max_photos else list(photos)
    net = efficientnet_lite0()
    net.hybridize(static_alloc=True, static_shape=True)
    qnet = quantize(net, calibration_batches(photos[n] for n in names),
                    calibrator=calibrator, progress=False)
    x = mx.nd.concat(*(preprocess(photos[n]) for n in names), dim=0)
    fp32 = net(x).asnumpy()
    int8 = qnet(x).asnumpy()
    classes = imagenet_class_names()

    def top5(logits):
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        return {n: [(classes[i], float(p[i])) for i in np.argsort(-p)[:5]]
                for n, p in zip(names, prob)}

    fp32_ms = _time_per_call(net, x, repeat) * 1e3
    int8_ms = _time_per_call(qnet, x, repeat) * 1e3
    int8_bytes, source = _int8_bytes(qnet)
    return {"photos": names, "fp32_top5": top5(fp32), "int8_top5": top5(int8),
            "top1_agreement": float((fp32.argmax(1) == int8.argmax(1)).mean()),
            "cosine": cosine(fp32, int8), "fp32_bytes": _params_bytes(net),
            "int8_bytes": int8_bytes, "size_source": source,
            "fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms}


def format_summary(res):
    """The demo's result (:func:`run_demo`) as the text the command line prints."""
    lines = ["EfficientNet-Lite0 (ImageNet weights), fp32 vs int8 (gluon_quant, oneDNN), "
             "on %d sample photos" % len(res["photos"]), ""]
    for name in res["photos"]:
        lines.append("%s" % name)
        for (fc, fp), (qc, qp) in zip(res["fp32_top5"][name], res["int8_top5"][name]):
            lines.append("    fp32 %-28s %5.3f   int8 %-28s %5.3f" % (fc[:28], fp, qc[:28], qp))
    lines += ["",
              "top-1 agreement: %d of %d photos" % (round(res["top1_agreement"]
                                                          * len(res["photos"])),
                                                    len(res["photos"])),
              "logit cosine:    %.4f" % res["cosine"],
              "model size:      fp32 %.1f MB -> %.1f MB (%s), %.2fx smaller" % (
                  res["fp32_bytes"] / 1e6, res["int8_bytes"] / 1e6, res["size_source"],
                  res["fp32_bytes"] / res["int8_bytes"]),
              "speed (batch %d): fp32 %.1f ms -> int8 %.1f ms, %.2fx" % (
                  len(res["photos"]), res["fp32_ms"], res["int8_ms"], res["speedup"])]
    return "\n".join(lines)
