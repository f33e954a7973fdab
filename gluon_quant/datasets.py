"""Small real labelled datasets that install offline, read directly from disk.

* Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``, IDX format). Gluon's own
  ``FashionMNIST`` class rejects these files (Debian recompressed them) and then
  tries to download, so the IDX files are parsed here.
* scikit-learn's 8x8 digits (1,797 images), a fallback that ships with scikit-learn.
"""
import gzip
import os
import logging

import numpy as np

from .errors import ArtifactError, ConfigError

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "load_digits", "load_small_images"]

_log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path, offset, shape_tail):
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise ArtifactError("Cannot read IDX file %r: %s" % (path, err)) from err
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if shape_tail:
        size = int(np.prod(shape_tail))
        if data.size % size:
            raise ArtifactError("IDX file %r is truncated (%d bytes)." % (path, len(raw)))
        data = data.reshape((-1,) + tuple(shape_tail))
    return data


def load_fashion_mnist(split="train", root=FASHION_MNIST_DIR):
    """Fashion-MNIST images and labels.

    Parameters
    ----------
    split : {'train', 'test'}
    root : str
        Folder with the ``*-ubyte.gz`` files.

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28), uint8
    labels : numpy.ndarray, shape (N,), int64
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ConfigError("split must be 'train' or 'test', got %r." % (split,))
    img_path = os.path.join(root, "%s-images-idx3-ubyte.gz" % prefix)
    lbl_path = os.path.join(root, "%s-labels-idx1-ubyte.gz" % prefix)
    if not (os.path.exists(img_path) and os.path.exists(lbl_path)):
        raise ArtifactError(
            "Fashion-MNIST not found in %r. Install it with `apt-get install "
            "dataset-fashion-mnist` (Debian/Ubuntu) or pass root=." % root)
    images = _read_idx(img_path, 16, (28, 28))
    labels = _read_idx(lbl_path, 8, ()).astype(np.int64)
    if len(images) != len(labels):
        raise ArtifactError("Fashion-MNIST %s: %d images but %d labels."
                            % (split, len(images), len(labels)))
    return images, labels


def load_digits():
    """scikit-learn's 1,797 8x8 digits as ``(images uint8 (N, 8, 8) in 0..255, labels)``."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as err:
        raise ConfigError("scikit-learn is needed for load_digits(): pip install "
                          "scikit-learn") from err
    bunch = _load()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def load_small_images(max_train=None, seed=0):
    """Real labelled grey images for training small nets: Fashion-MNIST, else sklearn digits.

    Returns
    -------
    dict
        ``name``, ``train`` and ``test`` as ``(images float32 (N, 1, H, W) in [0, 1], labels)``.
    """
    try:
        train = load_fashion_mnist("train")
        test = load_fashion_mnist("test")
        name = "fashion-mnist"
    except ArtifactError:
        _log.info("Fashion-MNIST is not installed; using scikit-learn's digits instead.")
        images, labels = load_digits()
        order = np.random.RandomState(seed).permutation(len(images))
        cut = int(len(images) * 0.7)
        train = images[order[:cut]], labels[order[:cut]]
        test = images[order[cut:]], labels[order[cut:]]
        name = "sklearn-digits"
    if max_train is not None:
        train = train[0][:max_train], train[1][:max_train]

    def prep(pair):
        return (pair[0].astype(np.float32)[:, None] / 255.0), pair[1]

    return {"name": name, "train": prep(train), "test": prep(test)}
