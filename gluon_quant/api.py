"""The one-call entry point: :func:`quantize`."""
import logging

import mxnet as mx

from .block import QuantizedHybridBlock
from .calib.table import as_table
from .config import QuantConfig
from .errors import ConfigError, NotHybridizableError
from .data import peek
from .pipeline import KEPT_SAMPLES, SETTINGS_META_KEY, release_calibration_memory

__all__ = ["quantize", "finalize_with_table"]

_log = logging.getLogger(__name__)


def quantize(net, calib_data=None, *, config=None, calib_table=None, eval_fn=None,
             tolerance=None, **settings):
    """Quantize a Gluon ``HybridBlock`` to int8 in one call.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The fp32 network (initialized). It is not modified.
    calib_data : iterable of batches
        A ``DataLoader``, a list, a generator or an ``mx.io.DataIter``. A batch is an
        NDArray or numpy array of shape ``(N, ...)`` (or what numpy reads as one: a pandas
        DataFrame, a CPU torch tensor), a tuple/list whose first ``k``
        elements feed the net's ``k`` inputs (labels after them are ignored), or a dict
        keyed by input names. Not needed when ``calib_table`` is given.
    config : QuantConfig, optional
        The settings (:class:`~gluon_quant.QuantConfig`, documented there once).
    calib_table : CalibrationTable or path, optional
        Ranges computed earlier on the same graph (or the file ``CalibrationTable.save``
        and ``gluon-quant quantize`` write); then no data is needed, and data given
        serves only what the table lacks (:func:`finalize_with_table`). Without ``config``,
        the settings it was built with (exclusions, dtype, granularity...) are the
        defaults: the table alone rebuilds the same model; ``settings`` given replace them.
    eval_fn : callable, optional
        ``eval_fn(model) -> float`` (higher is better). With ``tolerance``, tune the settings
        until the int8 score is within ``tolerance`` of fp32 (:func:`gluon_quant.tune`); the
        returned block's ``tune_result`` tells what was tried.
    tolerance : float, optional
        Allowed loss of ``eval_fn`` against fp32; needed with ``eval_fn``.
    **settings
        Any :class:`~gluon_quant.QuantConfig` field (``calibrator``, ``dtype``,
        ``backend``, ``exclude``, ``granularity``, ``preset``, ``bias_correction``,
        ``num_calib_batches``, ``input_fn``, ``num_inputs``, ``ctx``, ``progress``,
        ``int8_lstm``, ``input_normalization``, ``equalization``, ``weight_rounding``,
        ``fp32_stem``); they replace the fields of ``config``.

    Returns
    -------
    QuantizedHybridBlock
        Called exactly like ``net``; ``report()`` tells what was fused and quantized and
        ``config`` the settings it was built with.

    Raises
    ------
    ConfigError
        No data and no table, an unknown setting, or an invalid value.

    Examples
    --------
    >>> qnet = gluon_quant.quantize(net, [x[i:i + 16] for i in range(0, 256, 16)])
    >>> y = qnet(x)
    >>> print(qnet.report())
    """
    calib_table = as_table(calib_table)     # a path is read; its settings are the defaults
    config = QuantConfig.build(config, net=net, **settings, recorded=None if calib_table is None
                               else calib_table.meta.get(SETTINGS_META_KEY))
    if calib_data is None and calib_table is None:
        raise ConfigError(
            "quantize() needs calibration data (calib_data=, any iterable of batches) or a "
            "saved CalibrationTable (calib_table=). Calibration-free int8 is not offered: "
            "run-time ranges are slower than fp32 on oneDNN and mis-scale fused layers.")
    if eval_fn is not None or tolerance is not None:
        if eval_fn is None or tolerance is None or calib_table is not None:
            raise ConfigError("Accuracy-aware quantization needs both eval_fn and tolerance, "
                              "and calib_data rather than calib_table; got eval_fn=%r, "
                              "tolerance=%r." % (eval_fn, tolerance))
        from .tune import tune  # tune builds on this module's block and the doctor
        qnet, result = tune(net, calib_data, eval_fn, tolerance=tolerance, config=config)
        qnet.tune_result = result
        return qnet
    try:
        qnet = QuantizedHybridBlock(net, config)
        if calib_table is None:
            qnet.calibrate(calib_data)
            qnet.finalize()
        else:
            finalize_with_table(qnet, calib_table, calib_data)
    except NotHybridizableError as err:
        if not isinstance(net, mx.gluon.Block):
            raise
        raise NotHybridizableError(
            "%s Or keep the model's Python code and quantize the blocks inside it that trace, "
            "in place: gluon_quant.quantize_parts(net, calib_data)." % err) from err
    release_calibration_memory(qnet.calibration)
    return qnet


def finalize_with_table(qnet, table, calib_data=None):
    """``qnet`` finalized with ``table``'s ranges. With ``calib_data``, its first
    :data:`~gluon_quant.pipeline.KEPT_SAMPLES` samples run through the fused graph (not
    the whole data) to measure what the table lacks, bias corrections and AdaRound
    choices, and to run the int8 graph once, as one calibration pass does: the table of
    :func:`~gluon_quant.calibrate_parallel` then gives the model one pass gives.
    """
    table = as_table(table)
    if calib_data is not None:
        first, calib_data = peek(calib_data)
        if qnet.fused is None:      # planned at the table's shapes, not the data's
            qnet.fuse(None if table.meta.get("input_shapes") else first, table=table)
        if first is not None:       # as many batches as hold the samples, by the first's size
            inputs = qnet.convert_batch(first)
            size = int(inputs[0].shape[0]) if inputs and inputs[0].ndim else 1
            qnet.calibrate(calib_data, num_calib_batches=-(-KEPT_SAMPLES // max(size, 1)))
    return qnet.finalize(table)
