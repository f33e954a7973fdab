"""Real photos that ship inside installed packages, for smoke tests and calibration.

Sources, each optional: scikit-image's ``skimage.data`` (chelsea the cat,
coffee, astronaut, rocket, motorcycle), scikit-learn's sample images (china,
flower) and matplotlib's ``grace_hopper.jpg``.
"""

import logging

import numpy as np

from ..errors import ConfigError

__all__ = ["sample_images"]

_LOG = logging.getLogger(__name__)

# sample name -> skimage.data function; the motorcycle is the left view of a stereo pair.
_SKIMAGE_PHOTOS = {
    "chelsea": "chelsea",
    "coffee": "coffee",
    "astronaut": "astronaut",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
}
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
