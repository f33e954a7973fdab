"""The honest evaluation protocol: disjoint calibration and held-out photos, crops, scores."""
import numpy as np
import pytest

from gluon_quant.errors import ConfigError, InputMismatchError
from gluon_quant.zoo import real_photos
from gluon_quant.zoo.evaluation import (calibration_crops, evaluation_data, held_out_crops,
                                        normalise, rounding_reference, score, split_photos)
from gluon_quant.zoo.samples import Photo

pytest.importorskip("skimage")


def _photo(name, group=None, grey=False, seed=0):
    image = np.random.RandomState(seed).randint(0, 256, (40, 60, 3)).astype(np.uint8)
    return Photo(name, group or name, grey, image)


@pytest.fixture(scope="module")
def photos():
    return real_photos()


def test_real_photos_gather_every_installed_source(photos):
    names = [p.name for p in photos]
    assert len(names) == len(set(names))
    assert {"chelsea", "coffee", "rocket", "motorcycle", "motorcycle_right", "retina",
            "camera", "moon"} <= set(names)
    for photo in photos:
        assert photo.image.dtype == np.uint8 and photo.image.shape[2] == 3, photo.name
    camera = next(p for p in photos if p.name == "camera")
    assert camera.grey and np.array_equal(camera.image[..., 0], camera.image[..., 2])
    assert {p.group for p in photos if p.name.startswith("motorcycle")} == {"motorcycle"}


def test_split_is_disjoint_by_scene_and_covers_everything(photos):
    split = split_photos(photos)
    calib = {p.group for p in split.calibration}
    held = {p.group for p in split.held_out}
    assert not calib & held
    assert len(split.calibration) + len(split.held_out) == len(photos)
    # each part gets colour and grey photos, about half of each kind
    for part in split:
        assert {p.grey for p in part} == {False, True}
    assert abs(len(calib) - len(held)) <= 2


def test_split_is_deterministic_and_order_free(photos):
    first = split_photos(photos)
    again = split_photos(list(reversed(photos)))
    assert sorted(p.name for p in first.held_out) == sorted(p.name for p in again.held_out)


def test_split_keeps_views_of_a_scene_together():
    photos = [_photo("a"), _photo("b"), _photo("b_left", "b"), _photo("c"), _photo("d")]
    split = split_photos(photos)
    side = [part for part in split if any(p.name == "b" for p in part)][0]
    assert "b_left" in {p.name for p in side}


def test_crops_are_views_and_mirror_images():
    image = _photo("x").image
    calib = calibration_crops([image], 32)
    assert calib.shape == (12, 32, 32, 3) and calib.dtype == np.uint8
    assert np.array_equal(calib[1], calib[0][:, ::-1])
    held = held_out_crops([image], 32)
    assert held.shape == (4, 32, 32, 3)
    assert np.array_equal(held[2], held[1][:, ::-1])
    with pytest.raises(ConfigError, match="size"):
        calibration_crops([image], 0)


def test_normalise_is_exact():
    crops = np.full((1, 2, 2, 3), 255, np.uint8)
    x = normalise(crops, (127.0,) * 3, (128.0,) * 3)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    assert (x == 1.0).all()


def test_evaluation_data_holds_out_other_photos(photos):
    data = evaluation_data(32, batch_size=16, photos=photos)
    split = split_photos(photos)
    assert sum(len(b) for b in data.calibration) == 12 * len(split.calibration)
    assert all(len(b) <= 16 for b in data.calibration)
    assert data.held_out.shape == (4 * len(split.held_out), 3, 32, 32)
    assert set(data.held_out_names) == {p.name for p in split.held_out}
    with pytest.raises(ConfigError, match="two scenes"):
        evaluation_data(32, photos=[_photo("only")])


def test_score_counts_agreement_and_averages_cosines():
    fp32 = np.array([[1.0, 0.0], [0.0, 2.0]])
    int8 = np.array([[2.0, 0.0], [1.0, 0.0]])
    result = score(fp32, int8)
    assert (result.agree, result.total) == (1, 2)
    assert result.cosine == 0.5  # mean of 1 and 0
    with pytest.raises(InputMismatchError):
        score(fp32, int8[:1])


def test_rounding_reference_moves_pixels_by_at_most_half_a_grey_level():
    std = (128.0, 64.0, 32.0)
    images = normalise(np.random.RandomState(1).randint(0, 256, (6, 8, 8, 3)).astype(np.uint8),
                       (127.0,) * 3, std)
    moved = []

    def forward(batch):
        moved.append((batch - images) * np.asarray(std, np.float32).reshape(1, 3, 1, 1))
        return np.stack([batch.mean(axis=(1, 2, 3)), np.full(len(batch), 1e3)], axis=1)

    ref = rounding_reference(forward, images, std, trials=4)
    assert len(moved) == 5 and not moved[0].any()          # the clean pass, then 4 trials
    for noise in moved[1:]:
        assert 0.49 < np.abs(noise).max() <= 0.5 + 1e-4    # in grey levels, every channel
        assert abs(noise.mean()) < 0.02
    assert ref == (6, 6, 6, pytest.approx(1.0, abs=1e-9))  # class 1 wins by 1000 always
    moved.clear()           # the caller's clean logits are used as given, not recomputed
    swapped = forward(images)[:, ::-1]
    ref = rounding_reference(forward, images, std, clean=swapped, trials=2)
    assert len(moved) == 3 and (ref.least, ref.most, ref.total) == (0, 0, 6)


def test_rounding_reference_counts_the_images_noise_flips():
    images = np.full((4, 3, 2, 2), 0.5001, np.float32)   # two on a knife edge,
    images[:2] = 5.0                                     # two with a clear winner

    def forward(batch):
        mean = batch.mean(axis=(1, 2, 3))
        return np.stack([mean, np.full(len(batch), 0.5)], axis=1)

    ref = rounding_reference(forward, images, (1.0,) * 3, trials=6)
    assert ref.total == 4 and ref.least >= 2 and ref.most == 4 and ref.least < 4
    with pytest.raises(ConfigError, match="trials"):
        rounding_reference(forward, images, (1.0,) * 3, trials=0)
    with pytest.raises(InputMismatchError, match=r"\(N, 3, H, W\)"):
        rounding_reference(forward, images[:, :1], (1.0,) * 3)
