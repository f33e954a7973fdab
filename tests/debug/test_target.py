"""The doctor's tools given the fp32 net or a loaded export: a ConfigError saying what to pass
(they raised AttributeError: 'ResNetV1' object has no attribute 'calibration_table')."""
import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import debug

TOOLS = {
    "compare": lambda q, b: debug.compare(q, b),
    "sensitivity": lambda q, b: debug.sensitivity(q, b),
    "activation_floor": lambda q, b: debug.activation_floor(q, b),
    "fake_quant_block": lambda q, b: debug.fake_quant_block(q),
    "run_checks": lambda q, b: debug.run_checks(q),
    "layer_timing": lambda q, b: debug.layer_timing(q, b[0]),
}


@pytest.fixture
def loaded(tiny_cnn, tiny_batches, tmp_path):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    qnet.export(str(tmp_path / "m"))
    return tiny_cnn, qnet, gq.QuantizedSymbolBlock.imports(str(tmp_path / "m")), tiny_batches


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_the_fp32_net_and_a_loaded_export_are_refused_with_what_to_pass(loaded, tool):
    net, _, block, batches = loaded
    with pytest.raises(gq.ConfigError, match=r"%s\(\) takes the QuantizedHybridBlock that "
                       r"gluon_quant.quantize\(\) returns, got HybridSequential: quantize the "
                       r"network first" % tool):
        TOOLS[tool](net, batches)
    with pytest.raises(gq.ConfigError, match=r"got QuantizedSymbolBlock: a loaded export keeps "
                       r"neither.*calib_table=loaded.calibration_table"):
        TOOLS[tool](block, batches)


def test_the_suggested_rebuild_is_the_loaded_model(loaded):
    net, _, block, batches = loaded
    rebuilt = gq.quantize(net, calib_table=block.calibration_table, progress=False)
    x = mx.nd.array(batches[0])
    np.testing.assert_array_equal(rebuilt(x).asnumpy(), block(x).asnumpy())
    assert debug.compare(rebuilt, batches).output_cosine > 0.99


def test_a_single_array_is_named_as_the_tools_argument(loaded):
    """The doctor's message named calib_data, an argument it does not have."""
    _, qnet, _, batches = loaded
    with pytest.raises(gq.CalibrationDataError, match=r"^batches is a single ndarray\(8, 1, 28, "
                                                      r"28\) float32.*Wrap it in a list"):
        debug.compare(qnet, batches[0])
    with pytest.raises(gq.CalibrationDataError, match=r"^num_batches must be a positive int"):
        debug.activation_floor(qnet, batches, num_batches=0)
