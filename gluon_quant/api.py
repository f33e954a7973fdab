"""The one-call entry point: :func:`quantize`."""
import logging

from .block import QuantizedHybridBlock
from .errors import ConfigError

__all__ = ["quantize"]

_log = logging.getLogger(__name__)


def quantize(net, calib_data=None, *, calibrator="mse", dtype="auto", backend="onednn",
             exclude=None, granularity=None, num_calib_batches=None, calib_table=None,
             input_fn=None, num_inputs=None, ctx=None, progress=True, preset=None,
             bias_correction=True, eval_fn=None, tolerance=None):
    """Quantize a Gluon ``HybridBlock`` to int8 in one call.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The fp32 network (initialized). It is not modified.
    calib_data : iterable of batches
        A ``DataLoader``, a list, a generator or an ``mx.io.DataIter``. A batch is an
        NDArray or numpy array of shape ``(N, ...)``, a tuple/list whose first ``k``
        elements feed the net's ``k`` inputs (labels after them are ignored), or a dict
        keyed by input names. Not needed when ``calib_table`` is given.
    calibrator : str, Calibrator subclass or instance, default 'mse'
        ``'mse'`` (least expected quantization error: the most accurate in our tests and as
        fast as min-max), ``'entropy'`` (KL divergence), ``'minmax'``, ``'percentile'`` or your own
        :class:`~gluon_quant.calib.Calibrator`.
    dtype : {'auto', 'int8', 'uint8'}, default 'auto'
        Quantized activation type. ``'auto'``: uint8 where values are never negative.
    backend : {'onednn', 'cudnn'}, default 'onednn'
        ``'mkldnn'`` is an alias of ``'onednn'``.
    exclude : list of str, optional
        Layers to keep in fp32: names, attribute paths, glob patterns or operator types.
    granularity : {'channel', 'tensor'}, optional
        One weight scale per output channel, or one per tensor. Default: 'channel' on
        oneDNN, 'tensor' on cuDNN.
    num_calib_batches : int, optional
        Use at most this many batches.
    calib_table : CalibrationTable, optional
        Ranges computed earlier on the same graph; then no data is needed.
    input_fn : callable, optional
        ``input_fn(batch)`` returns the input(s) of one batch.
    num_inputs : int, optional
        Number of tensor inputs when ``hybrid_forward``'s signature does not tell.
    ctx : mxnet.Context, optional
        Where to calibrate and run (CPU by default).
    progress : bool, default True
        Progress bar during calibration (shown on terminals only).
    preset : str or Preset, optional
        Layers of a model family kept in fp32 (:mod:`gluon_quant.presets`): by default the
        family's preset for GluonCV zoo nets, none for other nets; ``'none'`` turns it off.
    bias_correction : bool, default True
        Remove the per-channel mean error int8 adds to layers without an activation,
        measured on up to 32 calibration samples (:mod:`gluon_quant.bias`); the
        corrections are stored in the calibration table, so ``calib_table=`` reuses them.
    eval_fn : callable, optional
        ``eval_fn(model) -> float`` (higher is better). With ``tolerance``, tune the settings
        until the int8 score is within ``tolerance`` of fp32 (:func:`gluon_quant.tune`); the
        returned block's ``tune_result`` tells what was tried.
    tolerance : float, optional
        Allowed loss of ``eval_fn`` against fp32; needed with ``eval_fn``.

    Returns
    -------
    QuantizedHybridBlock
        Called exactly like ``net``; ``report()`` tells what was fused and quantized.

    Examples
    --------
    >>> qnet = gluon_quant.quantize(net, [x[i:i + 16] for i in range(0, 256, 16)])
    >>> y = qnet(x)
    >>> print(qnet.report())
    """
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
        qnet, result = tune(net, calib_data, eval_fn, tolerance=tolerance,
                            calibrator=calibrator, dtype=dtype, backend=backend,
                            exclude=exclude, granularity=granularity,
                            num_calib_batches=num_calib_batches, input_fn=input_fn,
                            num_inputs=num_inputs, ctx=ctx, progress=progress, preset=preset)
        qnet.tune_result = result
        return qnet
    qnet = QuantizedHybridBlock(net, calibrator=calibrator, dtype=dtype, backend=backend,
                                exclude=exclude, granularity=granularity, ctx=ctx,
                                input_fn=input_fn, num_inputs=num_inputs, progress=progress,
                                preset=preset, bias_correction=bias_correction)
    qnet.fuse()
    qnet.quantize_graph()
    if calib_table is None:
        qnet.calibrate(calib_data, num_calib_batches=num_calib_batches)
    return qnet.finalize(calib_table)
