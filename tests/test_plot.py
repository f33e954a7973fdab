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
