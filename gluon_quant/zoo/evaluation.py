"""An honest accuracy check for int8 image models: calibrate on some photos, score on others.

Scoring a quantized net on the photos it was calibrated on flatters it: the
thresholds, and bias correction's per-channel shifts, were fitted to exactly
those activations.  This module splits the real photos of :func:`real_photos`
into a calibration part and a held-out part that never overlap (views of one
scene stay together), augments each part with crops and mirror images, and
scores int8 logits against fp32 logits on the held-out part only.

>>> data = evaluation_data(224, mean=(127.0,) * 3, std=(128.0,) * 3)
>>> qnet = gluon_quant.quantize(net, data.calibration)
>>> score(net(mx.nd.array(data.held_out)).asnumpy(), qnet(mx.nd.array(data.held_out)).asnumpy())
Score(agree=37, total=40, cosine=0.9958...)

The split is deterministic: colour and grey-scale photos are split separately
(so each part gets both), each kind's groups ordered by the CRC-32 of their
name and dealt out alternately, the first to the calibration part.
"""
import collections
import numbers
import zlib

import mxnet as mx
import numpy as np

from ..errors import ConfigError, InputMismatchError
from .samples import real_photos

__all__ = ["EvaluationData", "PhotoSplit", "RoundingReference", "Score", "calibration_crops",
           "evaluation_data", "held_out_crops", "normalise", "rounding_reference", "score",
           "split_photos"]

_AUTO_INTERP = 9  # mx.image: area when shrinking, bicubic when enlarging (as preprocess)
_CROP_PADDING = 32  # the short side of the EfficientNet-Lite reference centre crop: size + 32
_LARGE_SCALE = 1.4  # a tighter view: short side 1.4 x the crop

#: The two parts of the photos: lists of :class:`~gluon_quant.zoo.samples.Photo`.
PhotoSplit = collections.namedtuple("PhotoSplit", ["calibration", "held_out"])

#: What :func:`evaluation_data` returns: calibration batches (list of float32 NCHW arrays),
#: the held-out images (one float32 NCHW array) and, per held-out image, its photo's name.
EvaluationData = collections.namedtuple("EvaluationData",
                                        ["calibration", "held_out", "held_out_names"])

#: Top-1 agreement (``agree`` of ``total`` images) and the mean over images of the
#: cosine between int8 and fp32 logits.
Score = collections.namedtuple("Score", ["agree", "total", "cosine"])

#: What :func:`rounding_reference` returns: the fewest and most images (of ``total``)
#: whose fp32 top-1 survived the noise, and the mean logit cosine over every trial.
RoundingReference = collections.namedtuple("RoundingReference",
                                           ["least", "most", "total", "cosine"])


def split_photos(photos=None):
    """Split photos into a calibration part and a held-out part that share no scene.

    Parameters
    ----------
    photos : list of Photo, optional
        By default, :func:`~gluon_quant.zoo.samples.real_photos`.

    Returns
    -------
    PhotoSplit
        ``calibration`` and ``held_out`` lists of photos; each group (scene) lies
        wholly in one of them.  With one group only, everything is held out and
        the calibration part is empty.
    """
    photos = real_photos() if photos is None else list(photos)
    parts = ([], [])
    for grey in (False, True):
        groups = sorted({p.group for p in photos if p.grey == grey},
                        key=lambda g: (zlib.crc32(g.encode("utf-8")), g))
        side = {group: index % 2 for index, group in enumerate(groups)}
        for photo in photos:
            if photo.grey == grey:
                parts[side[photo.group]].append(photo)
    return PhotoSplit(*parts)


def _resized(image, short):
    pixels = mx.nd.array(image, dtype=np.uint8, ctx=mx.cpu())
    return mx.image.resize_short(pixels, short, interp=_AUTO_INTERP).asnumpy()


def _centre(height, width, size):
    return (height - size) // 2, (width - size) // 2


def _check_size(size):
    if not isinstance(size, numbers.Integral) or size < 8:
        raise ConfigError(f"size must be an int >= 8 (the net's input side), got {size!r}")


def calibration_crops(photos, size):
    """Crops to calibrate on: centre and two corners at two scales, each also mirrored.

    Parameters
    ----------
    photos : iterable of Photo or of numpy.ndarray
        ``(H, W, 3)`` uint8 RGB images (or photos holding them).
    size : int
        Side of the square crops, the net's input size.

    Returns
    -------
    numpy.ndarray
        ``(12 * len(photos), size, size, 3)`` uint8: for short sides ``size + 32``
        and ``1.4 * size``, the centre, top-left and bottom-right crops and their
        mirror images.
    """
    _check_size(size)
    crops = []
    for photo in photos:
        image = getattr(photo, "image", photo)
        for short in (size + _CROP_PADDING, int(round(_LARGE_SCALE * size))):
            pixels = _resized(image, short)
            height, width = pixels.shape[:2]
            for y0, x0 in (_centre(height, width, size), (0, 0), (height - size, width - size)):
                crop = pixels[y0:y0 + size, x0:x0 + size]
                crops += [crop, crop[:, ::-1]]
    if not crops:
        raise ConfigError("calibration_crops got no photo")
    return np.stack(crops)


def held_out_crops(photos, size):
    """Crops to score: centre crops at three scales, and one mirror image.

    Parameters
    ----------
    photos : iterable of Photo or of numpy.ndarray
    size : int

    Returns
    -------
    numpy.ndarray
        ``(4 * len(photos), size, size, 3)`` uint8: centre crops at short sides
        ``size``, ``size + 32`` (the reference view; also mirrored) and ``1.4 * size``.
    """
    _check_size(size)
    crops = []
    for photo in photos:
        image = getattr(photo, "image", photo)
        for short in (size, size + _CROP_PADDING, int(round(_LARGE_SCALE * size))):
            pixels = _resized(image, short)
            y0, x0 = _centre(*pixels.shape[:2], size)
            crop = pixels[y0:y0 + size, x0:x0 + size]
            crops += [crop, crop[:, ::-1]] if short == size + _CROP_PADDING else [crop]
    if not crops:
        raise ConfigError("held_out_crops got no photo")
    return np.stack(crops)


def normalise(crops, mean, std):
    """``(N, H, W, 3)`` uint8 crops -> ``(N, 3, H, W)`` float32 ``(x - mean) / std``.

    Parameters
    ----------
    crops : numpy.ndarray
    mean, std : sequence of 3 float
        Per-channel (RGB) mean and scale, in pixel units (0-255).
    """
    x = crops.astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def evaluation_data(size=224, *, mean=(127.0,) * 3, std=(128.0,) * 3, batch_size=16,
                    photos=None):
    """Calibration batches and held-out images from disjoint real photos.

    Parameters
    ----------
    size : int, default 224
        The net's input side.
    mean, std : sequence of 3 float
        Input normalisation: EfficientNet-Lite's ``127`` / ``128`` by default; GluonCV
        nets take :data:`~gluon_quant.zoo.gluoncv.IMAGENET_MEAN` / ``IMAGENET_STD``.
    batch_size : int, default 16
        Size of the calibration batches.
    photos : list of Photo, optional
        By default, every real photo installed (:func:`real_photos`).

    Returns
    -------
    EvaluationData
        ``calibration``: a list of float32 ``(n, 3, size, size)`` batches (12 crops a
        photo); ``held_out``: one float32 ``(m, 3, size, size)`` array (4 crops a photo);
        ``held_out_names``: the photo of each held-out image.

    Raises
    ------
    ConfigError
        Fewer than two scenes (groups) of photos: nothing to hold out.
    """
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    split = split_photos(photos)
    if not split.calibration or not split.held_out:
        raise ConfigError("an honest evaluation needs photos of at least two scenes, got "
                          f"{len(split.calibration) + len(split.held_out)} photo(s); "
                          "install scikit-image (pip install scikit-image)")
    calib = normalise(calibration_crops(split.calibration, size), mean, std)
    held = normalise(held_out_crops(split.held_out, size), mean, std)
    names = [p.name for p in split.held_out for _ in range(len(held) // len(split.held_out))]
    return EvaluationData([calib[i:i + batch_size] for i in range(0, len(calib), batch_size)],
                          held, names)


def score(fp32, int8):
    """Top-1 agreement and mean per-image logit cosine of int8 against fp32.

    Parameters
    ----------
    fp32, int8 : numpy.ndarray
        ``(N, classes)`` logits of the same images.

    Returns
    -------
    Score
    """
    fp32 = np.asarray(fp32, np.float64)
    int8 = np.asarray(int8, np.float64)
    if fp32.shape != int8.shape or fp32.ndim != 2:
        raise InputMismatchError(f"score needs two (N, classes) arrays of one shape, got "
                                 f"{fp32.shape} and {int8.shape}")
    dot = (fp32 * int8).sum(axis=1)
    norms = np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1)
    cosines = dot / np.maximum(norms, np.finfo(np.float64).tiny)
    agree = int((fp32.argmax(axis=1) == int8.argmax(axis=1)).sum())
    return Score(agree, len(fp32), float(cosines.mean()))


def rounding_reference(forward, images, std, *, clean=None, trials=3, seed=0):
    """How far the fp32 net moves when every pixel moves by up to half a grey level.

    An 8-bit photo is already rounded to the nearest grey level: uniform noise of
    +-0.5 level is the error its pixels carry anyway. The fp32 net's top-1 agreement and
    logit cosine with itself under that noise is the scale to read an int8 score on: a
    held-out image whose fp32 top two classes are that close is a coin toss for any
    approximation (measured on EfficientNet-Lite0's 40 held-out crops: 38-40 agreeing,
    cosine 0.9993; at +-1 level 36-38 and 0.990).

    Parameters
    ----------
    forward : callable
        float32 ``(N, 3, H, W)`` numpy images -> ``(N, classes)`` numpy logits (the fp32
        net).
    images : numpy.ndarray
        The normalised images (:func:`normalise`).
    std : sequence of 3 float
        Their per-channel scale in pixel units: one grey level is ``1 / std``.
    clean : numpy.ndarray, optional
        ``forward(images)``, where the caller has it already.
    trials : int, default 3
        Independent noise draws.
    seed : int, default 0

    Returns
    -------
    RoundingReference
    """
    if not isinstance(trials, numbers.Integral) or trials < 1:
        raise ConfigError(f"trials must be a positive int, got {trials!r}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputMismatchError(f"rounding_reference needs (N, 3, H, W) images, got shape "
                                 f"{images.shape}")
    level = 1.0 / np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    clean = forward(images) if clean is None else clean
    rng = np.random.RandomState(seed)
    scores = [score(clean, forward(images + level * rng.uniform(
        -0.5, 0.5, images.shape).astype(np.float32))) for _ in range(trials)]
    return RoundingReference(min(s.agree for s in scores), max(s.agree for s in scores),
                             scores[0].total, float(np.mean([s.cosine for s in scores])))
