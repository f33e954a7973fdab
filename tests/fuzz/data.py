"""Realistic inputs for each kind of generated net: float32 arrays of ``rows`` rows.

Where a user would standardise (sensor series, tabular columns), the statistics come from
the first ``calib_rows`` rows only, as a scaler fitted on the calibration split would.
"""
import numpy as np

from gluon_quant.zoo.gluoncv import sample_batches

__all__ = ["image_data", "video_data", "audio_data", "sensor_data", "token_data",
           "tabular_data"]


def image_data(seed, rows, size=32):
    """Crops of the offline sample photos, ImageNet-normalised: (rows, 3, size, size)."""
    return sample_batches(1, rows, size=size, seed=seed)[0]


def video_data(seed, rows, frames=4, size=16, step=2):
    """Clips panning across a photo: (rows, 3, frames, size, size)."""
    big = image_data(seed, rows, size + step * (frames - 1))
    clip = [big[:, :, t * step:t * step + size, t * step:t * step + size]
            for t in range(frames)]
    return np.ascontiguousarray(np.stack(clip, axis=2))


def audio_data(rng, rows, channels, length):
    """Audio-like waveforms in [-1, 1]: harmonics of a random pitch under an envelope,
    plus noise: (rows, channels, length)."""
    t = np.arange(length) / 8000.0
    f0 = rng.uniform(80, 600, size=(rows, channels, 1))
    wave = np.zeros((rows, channels, length))
    for h in range(1, 5):
        wave += rng.uniform(0.2, 1.0, size=(rows, channels, 1)) / h * np.sin(
            2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi, size=(rows, channels, 1)))
    envelope = np.exp(-t / rng.uniform(0.005, 0.05, size=(rows, 1, 1)))
    wave = wave * envelope + rng.normal(0, 0.02, size=wave.shape)
    return (0.9 * wave / np.abs(wave).max(axis=(1, 2), keepdims=True)).astype(np.float32)


def sensor_data(rng, rows, calib_rows, steps, channels):
    """Multichannel sensor series (AR(1) drift + seasonality + noise) with per-channel
    offsets and scales, standardised per channel: (rows, steps, channels)."""
    phi = rng.uniform(0.5, 0.98, size=channels)
    offset = rng.normal(0, 5, size=channels)
    scale = np.exp(rng.normal(0, 1, size=channels))
    period = rng.uniform(4, 16, size=channels)
    x = np.zeros((rows, steps, channels))
    state = rng.normal(0, 1, size=(rows, channels))
    for t in range(steps):
        state = phi * state + rng.normal(0, 1, size=(rows, channels)) * np.sqrt(1 - phi ** 2)
        x[:, t] = offset + scale * (state + 0.5 * np.sin(2 * np.pi * t / period))
    calib = x[:calib_rows]
    return ((x - calib.mean(axis=(0, 1))) / calib.std(axis=(0, 1))).astype(np.float32)


def token_data(rng, rows, steps, vocab):
    """Zipf-distributed token ids in [1, vocab) with trailing padding (id 0): (rows, steps)."""
    ids = (rng.zipf(1.3, size=(rows, steps)) - 1) % (vocab - 1) + 1
    lengths = rng.randint(steps // 2, steps + 1, size=rows)
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.float32)


def tabular_data(rng, rows, calib_rows, features):
    """Mixed columns, preprocessed as usual: Gaussian and uniform columns standardised,
    log-normal amounts and Poisson counts log1p'd then standardised, binary flags kept
    0/1: (rows, features)."""
    kinds = rng.choice(["gauss", "lognormal", "binary", "count", "uniform"], size=features)
    cols = []
    for kind in kinds:
        if kind == "gauss":
            cols.append(rng.normal(rng.normal(0, 3), np.exp(rng.normal()), size=rows))
        elif kind == "lognormal":
            cols.append(np.log1p(rng.lognormal(0, 1.2, size=rows)))
        elif kind == "binary":
            cols.append((rng.rand(rows) < rng.uniform(0.1, 0.9)).astype(np.float64))
        elif kind == "count":
            cols.append(np.log1p(rng.poisson(rng.uniform(0.5, 20), size=rows)))
        else:
            cols.append(rng.uniform(-10, 10, size=rows))
    x = np.stack(cols, axis=1)
    calib = x[:calib_rows]
    scaled = (x - calib.mean(axis=0)) / (calib.std(axis=0) + 1e-6)
    binary = kinds == "binary"
    scaled[:, binary] = x[:, binary]
    return scaled.astype(np.float32)
