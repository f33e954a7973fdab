"""One entry point for the zoo: ``get_model(name)`` quantizes an offline EfficientNet-Lite or a
GluonCV network.

>>> qnet = gluon_quant.zoo.get_model("efficientnet_lite1")     # real weights, offline
>>> qnet = gluon_quant.zoo.get_model("resnet50_v1", calib_data=my_batches)
"""
import logging

from .. import api
from .._names import suggest
from ..errors import UnknownNameError
from . import gluoncv
from .efficientnet import VARIANTS, efficientnet_lite
from .evaluation import calibration_crops, normalise
from .samples import sample_images

__all__ = ["get_model", "EFFICIENTNET_NAMES"]

_log = logging.getLogger(__name__)

#: The EfficientNet-Lite names :func:`get_model` knows, e.g. ``'efficientnet_lite1'``.
EFFICIENTNET_NAMES = tuple(f"efficientnet_{variant}" for variant in sorted(VARIANTS))
_BATCH = 16
_PIXEL_MEAN, _PIXEL_SCALE = (127.0,) * 3, (128.0,) * 3  # as efficientnet.preprocess


def _efficientnet(name, calib_data, kwargs):
    quant_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in gluoncv.QUANTIZE_KEYWORDS}
    net = efficientnet_lite(name, pretrained=kwargs.pop("pretrained", True), **kwargs)
    if calib_data is None and quant_kwargs.get("calib_table") is None:
        _log.warning("get_model(%r): no calib_data given, calibrating on crops of the "
                     "offline sample photos. Pass calib_data= with images of your domain.",
                     name)
        crops = normalise(calibration_crops(sample_images().values(), net.image_size),
                          _PIXEL_MEAN, _PIXEL_SCALE)
        calib_data = [crops[i:i + _BATCH] for i in range(0, len(crops), _BATCH)]
    return api.quantize(net, calib_data, **quant_kwargs)


def get_model(name, calib_data=None, **kwargs):
    """A zoo network by name, quantized to int8.

    Parameters
    ----------
    name : str
        ``'efficientnet_lite0'``, ``'efficientnet_lite1'`` or ``'efficientnet_lite2'``
        (real ImageNet weights from installed packages; inputs 224, 240 and 260 pixels
        preprocessed by :func:`~gluon_quant.zoo.preprocess` with ``size=net.image_size``),
        or a GluonCV model name (see :func:`gluon_quant.zoo.gluoncv.get_model`).
    calib_data : iterable of batches, optional
        Calibration data, as for :func:`gluon_quant.quantize`.  When omitted, crops of
        the offline sample photos, preprocessed as the net expects (a warning says so).
    **kwargs
        ``pretrained`` (EfficientNet-Lite: default True, the weights are installed;
        GluonCV: default False), any :class:`~gluon_quant.QuantConfig` field or keyword
        of :func:`gluon_quant.quantize`; the rest go to the network's constructor.

    Returns
    -------
    QuantizedHybridBlock
        The int8 network; ``.net`` is the fp32 network.

    Raises
    ------
    UnknownNameError
        ``name`` is neither an EfficientNet-Lite nor a GluonCV model; the message lists
        the valid names of each, sorted.
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key in EFFICIENTNET_NAMES:
        return _efficientnet(key, calib_data, dict(kwargs))
    try:
        return gluoncv.get_model(name, calib_data, **kwargs)
    except UnknownNameError:
        gluoncv_names = gluoncv.model_names()
        raise UnknownNameError(
            "Unknown zoo model %r.%s Valid names: %s; and GluonCV's: %s."
            % (name, suggest(str(name), list(EFFICIENTNET_NAMES) + gluoncv_names),
               ", ".join(EFFICIENTNET_NAMES), ", ".join(gluoncv_names))) from None
