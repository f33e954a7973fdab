"""Labelled scenes for detection, segmentation and keypoints, cut from real photos.

An object is a silhouette (scikit-image's horse, an ellipse, a five-pointed star) cut out
of a real photo (its texture) and pasted, scaled, stretched, rotated, flipped and
colour-jittered, onto a random crop of another real photo (the background). Its box, its
mask and its keypoints (the topmost, bottommost, leftmost and rightmost points of the
mask and its centroid) are known exactly, so detection mAP, segmentation mIoU and keypoint
PCK can be measured on images no net has seen.

The splits use disjoint sources, so that held-out metrics measure what a net learned, not
what it memorised:

======== ========================================================== ===========
split    photos (backgrounds and object textures alike)             seed stream
======== ========================================================== ===========
train    china, rocket, coffee, brick, grass, hubble_deep_field,    0
         moon, chelsea, astronaut, immunohistochemistry, retina,
         camera, coins
calib    as train                                                   1
eval     flower, grace_hopper, gravel, motorcycle, clock            2
======== ========================================================== ===========

(scikit-image's photos, scikit-learn's china and flower, matplotlib's grace_hopper; the
grey ones are repeated over three channels.) With so few photos a net learns their
colours, not shapes, unless the colours move: textures and backgrounds get their colour
channels permuted at random, and 20 % of them are made grey.

Sample ``i`` of a split is drawn from its own random stream (seeded with the split's
stream and ``i``), so it is the same whatever the batch size or the number of samples.
"""
import functools
import logging

import numpy as np

from ...errors import ConfigError
from ..samples import sample_images

__all__ = ["CLASSES", "KEYPOINTS", "SPLITS", "KINDS", "IMAGE_SIZE", "render"]

_log = logging.getLogger(__name__)

#: Object classes of the detection and segmentation tasks (segmentation adds background 0).
CLASSES = ("horse", "disk", "star")
#: Keypoints of the pose task, in heatmap-channel order.
KEYPOINTS = ("top", "bottom", "left", "right", "centre")
#: Task kinds and the side of their square images, in pixels.
IMAGE_SIZE = {"detection": 128, "segmentation": 128, "pose": 96}
KINDS = tuple(IMAGE_SIZE)

_TRAIN_PHOTOS = ("china", "rocket", "coffee", "brick", "grass", "hubble_deep_field", "moon",
                 "chelsea", "astronaut", "immunohistochemistry", "retina", "camera", "coins")
_EVAL_PHOTOS = ("flower", "grace_hopper", "gravel", "motorcycle", "clock")
_SPLIT = {      # split -> (backgrounds, textures, seed stream)
    "train": (_TRAIN_PHOTOS, _TRAIN_PHOTOS, 0),
    "calib": (_TRAIN_PHOTOS, _TRAIN_PHOTOS, 1),
    "eval": (_EVAL_PHOTOS, _EVAL_PHOTOS, 2),
}
SPLITS = tuple(_SPLIT)
_SKIMAGE_EXTRA = ("brick", "grass", "gravel", "hubble_deep_field", "moon",
                  "immunohistochemistry", "retina", "camera", "coins", "clock")
_PHOTO_SIDE = 256      # shorter side of the photos that scenes are cut from, in pixels
_MEAN = np.array((123.675, 116.28, 103.53), np.float32)
_STD = np.array((58.395, 57.12, 57.375), np.float32)


@functools.lru_cache(maxsize=1)
def _photos():
    """Every source photo by name (uint8 RGB) and the horse silhouette (bool)."""
    try:
        import cv2
        import skimage.data
    except ImportError as err:
        raise ConfigError("The trained task nets need scikit-image and opencv-python for "
                          "their scenes (%s): pip install 'gluon_quant[zoo]'." % err) from err
    photos = dict(sample_images())
    for name in _SKIMAGE_EXTRA:
        try:
            photo = getattr(skimage.data, name)()
        except (ImportError, OSError, ValueError, AttributeError) as err:
            _log.debug("skimage.data.%s is not available: %s", name, err)
            continue
        photos[name] = photo if photo.ndim == 3 else np.repeat(photo[:, :, None], 3, axis=2)
    needed = {name for backgrounds, textures, _ in _SPLIT.values()
              for name in backgrounds + textures}
    missing = sorted(needed - set(photos))
    if missing:
        raise ConfigError("The task scenes need the sample photos %s, which are not "
                          "installed: pip install scikit-image scikit-learn matplotlib."
                          % missing)
    for name, photo in photos.items():     # scenes are small: shrink once, crop fast
        scale = _PHOTO_SIDE / min(photo.shape[:2])
        if scale < 1:
            photos[name] = cv2.resize(photo, (round(photo.shape[1] * scale),
                                              round(photo.shape[0] * scale)),
                                      interpolation=cv2.INTER_AREA)
    horse = ~skimage.data.horse()       # True on the horse
    rows, cols = np.nonzero(horse)
    photos["horse"] = horse[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return photos


def _silhouette(cls, rng):
    """Float mask of class ``cls`` (index into :data:`CLASSES`), about 200 px across."""
    import cv2
    if CLASSES[cls] == "horse":
        return _photos()["horse"].astype(np.float32)
    mask = np.zeros((200, 200), np.float32)
    if CLASSES[cls] == "disk":
        cv2.ellipse(mask, (100, 100), (96, int(96 * rng.uniform(0.6, 1.0))), 0, 0, 360, 1.0, -1)
    else:
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 98, 98 * rng.uniform(0.38, 0.5))
        points = np.stack([100 + radius * np.cos(angles), 100 - radius * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1.0)
    return mask


def _warp_object(cls, size, rng, max_angle):
    """The silhouette scaled so its longer side is ``size`` px, stretched, rotated, flipped."""
    import cv2
    mask = _silhouette(cls, rng)
    height, width = mask.shape
    stretch = np.exp(rng.uniform(-0.2, 0.2))
    angle = rng.uniform(-max_angle, max_angle)
    scale = size / max(height, width)
    side = int(np.ceil(size * 1.5)) + 2
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[0] *= stretch
    matrix[:, 2] = side / 2 - matrix[:, :2] @ np.array([width / 2, height / 2])
    warped = cv2.warpAffine(mask, matrix, (side, side), flags=cv2.INTER_LINEAR) > 0.5
    if rng.rand() < 0.5:
        warped = warped[:, ::-1]
    rows, cols = np.nonzero(warped)
    return warped[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _jitter(image, rng):
    """Brightness, contrast and per-channel colour jitter of a uint8 crop (float32 out)."""
    image = image.astype(np.float32)[:, :, rng.permutation(3)]
    if rng.rand() < 0.2:
        image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)
    image = image * rng.uniform(0.8, 1.2, size=3)
    return np.clip(image, 0, 255)


def _crop(photo, height, width, rng):
    """A random crop of ``photo`` covering 20-100 % of it, resized to ``height x width``."""
    import cv2
    ph, pw = photo.shape[:2]
    fraction = np.sqrt(rng.uniform(0.2, 1.0))
    ch = max(8, int(min(ph, pw * height / width) * fraction))
    cw = max(8, int(ch * width / height))
    top, left = rng.randint(0, ph - ch + 1), rng.randint(0, pw - cw + 1)
    crop = cv2.resize(photo[top:top + ch, left:left + cw], (width, height),
                      interpolation=cv2.INTER_AREA)
    return crop[:, ::-1] if rng.rand() < 0.5 else crop


def _keypoints(mask, top, left):
    """(5, 2) x, y of the mask's extreme points (mean of the ties) and its centroid."""
    rows, cols = np.nonzero(mask)
    points = []
    for select, axis in ((rows == rows.min(), cols), (rows == rows.max(), cols),
                         (cols == cols.min(), rows), (cols == cols.max(), rows)):
        points.append(axis[select].mean())
    top_x, bottom_x, left_y, right_y = points
    xy = [(top_x, rows.min()), (bottom_x, rows.max()), (cols.min(), left_y),
          (cols.max(), right_y), (cols.mean(), rows.mean())]
    return np.array(xy, np.float32) + np.array([left, top], np.float32)


def _free(box, boxes, margin=2):
    return all(box[0] >= other[2] + margin or other[0] >= box[2] + margin or
               box[1] >= other[3] + margin or other[1] >= box[3] + margin for other in boxes)


def _scene(kind, backgrounds, textures, rng):
    """One image with its labels: see :func:`render`."""
    photos = _photos()
    side = IMAGE_SIZE[kind]
    canvas = _jitter(_crop(photos[backgrounds[rng.randint(len(backgrounds))]], side, side,
                           rng), rng)
    labels = np.zeros((side, side), np.int32)
    boxes, ids, points = [], [], []
    if kind == "pose":
        plan = [(CLASSES.index("horse"), rng.uniform(0.5, 0.85) * side)]
    else:
        plan = [(rng.randint(len(CLASSES)), rng.uniform(24, 72))
                for _ in range(rng.randint(1, 4))]
    for cls, size in plan:
        mask = _warp_object(cls, size, rng, 25 if kind == "pose" else 20)
        while max(mask.shape) > side - 4:   # rotated and stretched past the image: shrink
            size *= 0.9
            mask = _warp_object(cls, size, rng, 25 if kind == "pose" else 20)
        height, width = mask.shape
        for _ in range(20):
            if kind == "pose":      # roughly centred, as a person crop is for simple_pose
                top = int(np.clip((side - height) / 2 + rng.uniform(-0.1, 0.1) * side,
                                  0, side - height))
                left = int(np.clip((side - width) / 2 + rng.uniform(-0.1, 0.1) * side,
                                   0, side - width))
            else:
                top, left = rng.randint(0, side - height + 1), rng.randint(0, side - width + 1)
            box = (left, top, left + width, top + height)
            if _free(box, boxes):
                break
        else:
            continue
        texture = _jitter(_crop(photos[textures[rng.randint(len(textures))]], height, width,
                                rng), rng)
        region = canvas[top:top + height, left:left + width]
        region[mask] = texture[mask]
        labels[top:top + height, left:left + width][mask] = cls + 1
        boxes.append(box)
        ids.append(cls)
        points.append(_keypoints(mask, top, left))
    image = ((canvas - _MEAN) / _STD).transpose(2, 0, 1).astype(np.float32)
    return image, labels, np.array(boxes, np.float32).reshape(-1, 4), \
        np.array(ids, np.int32), np.array(points, np.float32).reshape(-1, 5, 2)


def render(kind, split, start, stop):
    """Render samples ``start`` to ``stop - 1`` of a task split.

    Parameters
    ----------
    kind : {'detection', 'segmentation', 'pose'}
    split : {'train', 'calib', 'eval'}
    start, stop : int
        Sample indices; sample ``i`` is the same in every call.

    Returns
    -------
    dict
        ``images``: float32 ``(N, 3, S, S)`` normalised with ImageNet's mean and std;
        ``labels``: int32 ``(N, S, S)`` (0 background, ``c + 1`` class ``c``);
        ``boxes``: list of float32 ``(k, 4)`` ``x1, y1, x2, y2`` in pixels;
        ``ids``: list of int32 ``(k,)`` class indices; ``keypoints``: list of float32
        ``(k, 5, 2)`` ``x, y`` in pixels, in :data:`KEYPOINTS` order.
    """
    if kind not in IMAGE_SIZE:
        raise ConfigError("Unknown task kind %r: use one of %s." % (kind, sorted(IMAGE_SIZE)))
    if split not in _SPLIT:
        raise ConfigError("Unknown split %r: use one of %s." % (split, sorted(_SPLIT)))
    if not 0 <= start < stop:
        raise ConfigError("render needs 0 <= start < stop, got %r." % ((start, stop),))
    backgrounds, textures, stream = _SPLIT[split]
    samples = [_scene(kind, backgrounds, textures,
                      np.random.RandomState([stream, KINDS.index(kind), i]))
               for i in range(start, stop)]
    images, labels, boxes, ids, points = zip(*samples)
    return {"images": np.stack(images), "labels": np.stack(labels), "boxes": list(boxes),
            "ids": list(ids), "keypoints": list(points)}
