"""gluon_quant.plot: the charts take what the rest of the package hands out."""
import pytest

import gluon_quant as gq
from gluon_quant import plot

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def qnet_and_batches(tiny_cnn, tiny_batches):
    return gq.quantize(tiny_cnn, tiny_batches, progress=False), tiny_batches


def test_thresholds_chart_takes_the_quantized_net(qnet_and_batches, tmp_path):
    """plot_thresholds(qnet, path) was a TypeError ('QuantizedHybridBlock' object is not
    iterable): it took only method_thresholds' dict."""
    qnet, _ = qnet_and_batches
    path = tmp_path / "thresholds.png"
    assert plot.plot_thresholds(qnet, path) == str(path)
    assert path.read_bytes().startswith(PNG)
    tables = plot.method_thresholds(qnet.calibrator)
    assert plot.plot_thresholds(tables, tmp_path / "same.png") == str(tmp_path / "same.png")


def test_sqnr_chart_takes_the_doctors_rows_and_names_what_it_needs(qnet_and_batches,
                                                                    tmp_path):
    qnet, batches = qnet_and_batches
    path = tmp_path / "sqnr.png"
    assert plot.plot_sqnr(gq.debug.compare(qnet, batches), path) == str(path)
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(gq.ConfigError, match=r"plot_sqnr takes per-layer SQNR rows, got "
                                             r"QuantizedHybridBlock.*debug.compare\(qnet"):
        plot.plot_sqnr(qnet, tmp_path / "x.png")
    # a folder given as the file: the example is a PNG inside it (it said name.json)
    with pytest.raises(gq.ArtifactError, match=r"names a folder.*sqnr_dir.name\.png"):
        (tmp_path / "sqnr_dir").mkdir()
        plot.plot_sqnr([("conv", 30.0)], tmp_path / "sqnr_dir")


def test_calibration_charts_of_an_all_fp32_net_say_why_there_is_nothing(tiny_cnn,
                                                                       tiny_batches, tmp_path):
    """A quantized net with no int8 layer has no calibrated tensor: plot_calibration said
    "MSECalibrator has no statistics: calibrate (or quantize) first" of a net just
    quantized."""
    qnet = gq.quantize(tiny_cnn, tiny_batches, exclude=["*"], progress=False)
    assert not qnet.report().quantized
    with pytest.raises(gq.ConfigError, match=r"QuantizedHybridBlock has no calibrated tensor "
                                             r"to plot: no layer of it runs in int8"):
        plot.plot_calibration(qnet, tmp_path / "plots")
    with pytest.raises(gq.ConfigError, match=r"MSECalibrator has no statistics: calibrate"):
        plot.plot_calibration(gq.MSECalibrator(), tmp_path / "plots")
    plots = plot.plot_calibration(gq.quantize(tiny_cnn, tiny_batches, progress=False),
                                  tmp_path / "plots")
    assert plots and all(open(p, "rb").read(8) == PNG for p in plots)
