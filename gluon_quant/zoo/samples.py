"""Real photos that ship inside installed packages, for smoke tests and calibration.

Sources, each optional: scikit-image's ``skimage.data`` (chelsea the cat,
coffee, astronaut, rocket, motorcycle), scikit-learn's sample images (china,
flower) and matplotlib's ``grace_hopper.jpg``.

:func:`real_photos` gathers every real photo these packages ship, a superset
for evaluation: the colour photos above, the motorcycle's right stereo view and
scikit-image's other colour photos (Hubble deep field, retina, a stained tissue
slide) and its grey-scale photos turned RGB (cameraman, coins, moon, textures,
cells, scanned text, a blurred clock).  imageio's standard images are not used:
imageio downloads them on first use.  Drawings, logos and synthetic images are
left out.
"""

import collections
import logging

import numpy as np

from ..errors import ConfigError

__all__ = ["Photo", "real_photos", "sample_images"]

_LOG = logging.getLogger(__name__)

# sample name -> skimage.data function; the motorcycle is the left view of a stereo pair.
_SKIMAGE_PHOTOS = {
    "chelsea": "chelsea",
    "coffee": "coffee",
    "astronaut": "astronaut",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
}
# Further real photos of scikit-image: name -> (function, group).  Views of one scene
# share a group, so that an evaluation never calibrates on one and scores the other.
_SKIMAGE_MORE_COLOUR = {
    "motorcycle_right": ("stereo_motorcycle", "motorcycle"),
    "hubble_deep_field": ("hubble_deep_field", "hubble_deep_field"),
    "retina": ("retina", "retina"),
    "immunohistochemistry": ("immunohistochemistry", "immunohistochemistry"),
}
_SKIMAGE_GREY = ("camera", "coins", "moon", "grass", "gravel", "brick", "cell", "page",
                 "text", "clock")

#: One real photo: its name, its group (views of one scene share one), whether it was
#: grey-scale before being turned RGB, and the ``(H, W, 3)`` uint8 RGB pixels.
Photo = collections.namedtuple("Photo", ["name", "group", "grey", "image"])

# What a missing package, file or (unreachable) download raises.
_UNAVAILABLE = (ImportError, OSError, ValueError, AttributeError)


def _skimage_photos():
    try:
        import skimage.data
    except ImportError as err:
        _LOG.debug("skipping scikit-image photos: %s", err)
        return
    for name, function in _SKIMAGE_PHOTOS.items():
        try:
            image = getattr(skimage.data, function)()
        except _UNAVAILABLE as err:
            _LOG.debug("skipping skimage.data.%s: %s", function, err)
            continue
        yield name, image[0] if isinstance(image, tuple) else image


def _sklearn_photos():
    try:
        from sklearn.datasets import load_sample_images
        bunch = load_sample_images()
    except _UNAVAILABLE as err:
        _LOG.debug("skipping scikit-learn sample images: %s", err)
        return
    for filename, image in zip(bunch.filenames, bunch.images):
        yield filename.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0], image


def _matplotlib_photos():
    try:
        import matplotlib.cbook
        import matplotlib.image
        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        image = matplotlib.image.imread(path)
    except _UNAVAILABLE as err:
        _LOG.debug("skipping matplotlib's grace_hopper.jpg: %s", err)
        return
    yield "grace_hopper", image


def _skimage_more():
    try:
        import skimage.data
    except ImportError as err:
        _LOG.debug("skipping scikit-image photos: %s", err)
        return
    for name, (function, group) in _SKIMAGE_MORE_COLOUR.items():
        try:
            image = getattr(skimage.data, function)()
        except _UNAVAILABLE as err:
            _LOG.debug("skipping skimage.data.%s: %s", function, err)
            continue
        yield Photo(name, group, False, image[1] if isinstance(image, tuple) else image)
    for name in _SKIMAGE_GREY:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except _UNAVAILABLE as err:
            _LOG.debug("skipping skimage.data.%s: %s", name, err)
            continue
        if image.ndim == 2 and image.dtype == np.uint8:
            yield Photo(name, name, True, np.repeat(image[:, :, None], 3, axis=2))


def real_photos():
    """Return every real photo the installed packages ship, for calibration and evaluation.

    The photos of :func:`sample_images`, then those listed in the module
    docstring; grey-scale photos are repeated over three channels.

    Returns
    -------
    list of Photo
        ``(name, group, grey, image)`` tuples; ``image`` is ``(H, W, 3)`` uint8
        RGB.  Names are unique; two views of one scene share a group
        (``motorcycle`` and ``motorcycle_right``: group ``'motorcycle'``).

    Raises
    ------
    ConfigError
        No package provides a photo (see :func:`sample_images`).
    """
    photos = [Photo(name, name, False, image) for name, image in sample_images().items()]
    for photo in _skimage_more():
        image = np.asarray(photo.image)
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            photos.append(Photo(photo.name, photo.group, photo.grey, np.ascontiguousarray(image)))
    return photos


def sample_images():
    """Return the real photos available offline from installed packages.

    Sources that are not installed are skipped (logged at DEBUG level).

    Returns
    -------
    dict of str to numpy.ndarray
        Name -> ``(H, W, 3)`` uint8 RGB array, freshly loaded on each call.
        Names, when available: ``chelsea`` (a tabby cat), ``coffee``,
        ``astronaut``, ``rocket``, ``motorcycle`` (scikit-image), ``china``,
        ``flower`` (scikit-learn), ``grace_hopper`` (matplotlib).

    Raises
    ------
    ConfigError
        None of scikit-image, scikit-learn (with Pillow) and matplotlib provides
        a photo.
    """
    images = {}
    for source in (_skimage_photos, _sklearn_photos, _matplotlib_photos):
        for name, image in source():
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                _LOG.debug("skipping sample %r: not HxWx3 uint8 (%s, %s)",
                           name, image.dtype, image.shape)
                continue
            images[name] = np.ascontiguousarray(image)
    if not images:
        raise ConfigError("no sample photo is available: install scikit-image, "
                          "scikit-learn with Pillow, or matplotlib (pip install scikit-image)")
    return images
