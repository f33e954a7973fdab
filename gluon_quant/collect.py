"""The calibration pass: run the fused fp32 graph over batches and feed a calibrator.

The fused fp32 graph is run with the tensors to calibrate exposed as extra outputs
(which costs nothing: they are computed anyway); each one is copied to numpy once and
handed to :meth:`Calibrator.collect`, which keeps bounded-size statistics.
"""
import logging

from . import _mxnet
from .data import check_finite, describe
from .errors import EmptyCalibrationError, InputMismatchError, ModelExecutionError
from .progress import progress_bar

__all__ = ["collect_statistics"]

_log = logging.getLogger(__name__)


def collect_statistics(batches, *, convert, make_runner, calibrator, input_names, tensor_names,
                       progress=True, total=None):
    """Feed ``calibrator`` the named tensors of every batch.

    Parameters
    ----------
    batches : iterator
        Calibration batches.
    convert : callable
        ``convert(batch)`` returns the list of input NDArrays.
    make_runner : callable
        ``make_runner(inputs)`` returns a block computing the non-input tensors of
        ``tensor_names`` (in order), or None when only inputs are calibrated; called once,
        on the first batch.
    calibrator : Calibrator
    input_names : list of str
        Names of the graph inputs, in order.
    tensor_names : list of str
        Tensors to calibrate (inputs among them are taken from the batch).
    progress : bool
    total : int, optional
        Number of batches, for the progress bar's ETA.

    Returns
    -------
    int
        Number of batches seen.

    Raises
    ------
    EmptyCalibrationError
        No batch was seen.
    """
    wanted_inputs = set(tensor_names) & set(input_names)
    outputs = [n for n in tensor_names if n not in set(input_names)]
    runner = None
    seen = 0
    for batch in progress_bar(batches, enabled=progress, desc="calibrating", total=total):
        inputs = convert(batch)
        for name, array in zip(input_names, inputs):
            host = array.asnumpy()
            check_finite(name, host)
            if name in wanted_inputs:
                calibrator.collect(name, host)
        if runner is None:
            runner = make_runner(inputs)
        if outputs:
            try:
                outs = _mxnet.run_block(runner, inputs, "Calibration forward pass")
            except ModelExecutionError as err:
                raise InputMismatchError(
                    "%s. The batch inputs were %s; check that they match the network's "
                    "expected shapes." % (err, [describe(a) for a in inputs])) from err
            for name, out in zip(outputs, outs):
                calibrator.collect(name, out.asnumpy())
        seen += 1
    if seen == 0:
        raise EmptyCalibrationError(
            "calib_data yielded no batch (empty, or an iterator/generator already "
            "exhausted). Pass a non-empty iterable, or a fresh generator.")
    return seen
