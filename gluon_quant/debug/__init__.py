"""The quantization doctor: which layers lose accuracy in int8, and what to do about it.

* :func:`compare` runs fp32 and int8 side by side and ranks layers by SQNR and cosine;
* :func:`sensitivity` ranks layers by how much keeping each one alone in fp32 recovers
  the output (re-quantizing with the same calibration table: no new data pass);
* :func:`activation_floor` tells how close int8 is to the best agreement 8-bit
  activations allow (the fp32 net with every calibrated tensor rounded to 8 bits);
* :func:`run_checks` looks for known pitfalls and says how to fix each one;
* :func:`layer_timing` times each int8 node and the fp32 node it replaces, each alone.

>>> from gluon_quant import debug
>>> print(debug.compare(qnet, batches))
>>> print(debug.sensitivity(qnet, batches))
>>> print(debug.activation_floor(qnet, batches))
>>> print(debug.run_checks(qnet))
>>> print(debug.layer_timing(qnet, batch))
"""
from .checks import CheckReport, Finding, run_checks
from .compare import ComparisonReport, LayerError, compare
from .floor import FloorReport, activation_floor, fake_quant_block
from .sensitivity import LayerSensitivity, SensitivityReport, sensitivity
from .timing import LayerTiming, TimingReport, layer_timing

__all__ = ["compare", "ComparisonReport", "LayerError", "sensitivity", "SensitivityReport",
           "LayerSensitivity", "activation_floor", "FloorReport", "fake_quant_block",
           "run_checks", "CheckReport", "Finding", "layer_timing", "TimingReport",
           "LayerTiming"]
