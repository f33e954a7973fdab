"""GluonCV model-zoo networks, quantized in one call.

>>> qnet = gluon_quant.zoo.get_model("resnet50_v1", calib_data=my_batches)
>>> qnet = gluon_quant.zoo.get_model("ssd_512_resnet50_v1_voc", pretrained=True)

The family preset (:mod:`gluon_quant.presets`) is applied automatically: detectors keep
box decoding and NMS in fp32, segmentation nets their per-pixel class scores.
"""
import inspect
import itertools
import logging

import mxnet as mx
import numpy as np

from .. import _mxnet
from ..api import quantize
from ..config import QuantConfig
from .._names import suggest
from ..errors import ConfigError, ModelExecutionError, UnknownNameError
from .batchnorm import set_batchnorm_statistics
from .samples import sample_images

__all__ = ["get_model", "sample_batches", "random_crops", "initialize_random",
           "set_batchnorm_statistics", "IMAGENET_MEAN", "IMAGENET_STD"]

_log = logging.getLogger(__name__)

#: Per-channel RGB mean and standard deviation of ImageNet pixels (0-255), GluonCV's input
#: normalisation for every model of its zoo.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: Keywords of :func:`gluon_quant.quantize` that :func:`get_model` passes on.
QUANTIZE_KEYWORDS = frozenset(QuantConfig.fields()) | (
    frozenset(inspect.signature(quantize).parameters) - {"net", "calib_data", "settings"})


def sample_batches(num_batches=4, batch_size=16, *, size=224, seed=0):
    """Batches of random crops of the offline sample photos, normalised as GluonCV expects.

    Each crop covers 25-100 % of a photo with an aspect ratio in [3/4, 4/3], is resized
    to ``size`` x ``size`` and flipped at random, then normalised with
    :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`. Real photos give activation statistics
    much closer to a trained net's than synthetic images.

    Parameters
    ----------
    num_batches, batch_size : int
    size : int
        Side of the square crops, in pixels.
    seed : int
        Seed of the crops (same seed, same batches).

    Returns
    -------
    list of numpy.ndarray
        ``num_batches`` float32 arrays of shape ``(batch_size, 3, size, size)``.
    """
    if min(num_batches, batch_size, size) < 1:
        raise ConfigError("sample_batches needs positive num_batches, batch_size and size, got "
                          "%r." % ((num_batches, batch_size, size),))
    photos = [photo for _, photo in sorted(sample_images().items())]
    stacked = random_crops(photos, num_batches * batch_size, size, IMAGENET_MEAN,
                           IMAGENET_STD, seed=seed)
    return [stacked[i:i + batch_size] for i in range(0, len(stacked), batch_size)]


def random_crops(photos, count, size, mean, std, *, seed=0):
    """``count`` random crops of ``photos`` (HWC uint8), resized to ``size`` x ``size``.

    Each covers 25-100 % of a photo's area at an aspect ratio of 3/4 to 4/3, is flipped
    left-right at random, and is normalised by ``mean`` and ``std`` (per channel).

    Returns
    -------
    numpy.ndarray
        float32, shape ``(count, 3, size, size)``.
    """
    rng = np.random.RandomState(seed)
    mean, std = np.array(mean, np.float32), np.array(std, np.float32)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        area = rng.uniform(0.25, 1.0) * height * width
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = max(1, int(min(height, np.sqrt(area / ratio))))
        cw = max(1, int(min(width, np.sqrt(area * ratio))))
        top, left = rng.randint(0, height - ch + 1), rng.randint(0, width - cw + 1)
        crop = mx.image.imresize(mx.nd.array(photo[top:top + ch, left:left + cw],
                                             dtype="uint8"), size, size).asnumpy()
        if rng.rand() < 0.5:
            crop = crop[:, ::-1]
        crops.append(((crop.astype(np.float32) - mean) / std).transpose(2, 0, 1))
    return np.stack(crops)


def initialize_random(net, seed=0):
    """Initialize an untrained GluonCV net: random weights, BatchNorm gamma 1 and beta 0.

    Weights are Xavier where the net has BatchNorm layers (their statistics are then set
    from data, :func:`set_batchnorm_statistics`) and He (Kaiming) normal where it has none:
    without normalization, Xavier weights halve the activations' variance at every ReLU
    layer and VGG-SSD's 21 class scores were 1/21 to within 1e-4 for every anchor; He
    weights keep the scale, so the scores vary with the input.

    GluonCV leaves some BatchNorm layers of detectors (SSD's feature expanders) without an
    initializer of their own, so a plain ``net.initialize(mx.init.Xavier())`` fails on
    their 1-d gamma; this names every parameter kind explicitly.

    Constants (``mx.gluon.Constant``: the anchors and offsets of SSD, YOLOv3 and the R-CNNs)
    keep their own values: they are part of the design, not learnt, and Xavier noise in
    their place made every box a few thousandths of a pixel wide. Parameters GluonCV already
    initialized itself (CenterNet and the pose nets call ``initialize()`` with its uniform
    default) are re-initialized as above, so every net gets the same recipe.
    """
    mx.random.seed(seed)
    normalized = any(name.endswith(("running_var", "moving_var"))
                     for name in net.collect_params())
    for name, param in net.collect_params().items():
        if isinstance(param, mx.gluon.Constant):
            if _mxnet.never_initialized(param):
                param.initialize()
            continue
        param.initialize(init=_initializer_for(name, normalized),
                         force_reinit=not _mxnet.never_initialized(param))
    return net


#: Initializer by parameter-name suffix (the rest are weights: Xavier or He normal).
_INITIALIZERS = (("gamma", mx.init.One), ("running_var", mx.init.One),
                 ("moving_var", mx.init.One), ("beta", mx.init.Zero),
                 ("running_mean", mx.init.Zero), ("moving_mean", mx.init.Zero),
                 ("bias", mx.init.Zero))


def _initializer_for(name, normalized=True):
    for suffix, init in _INITIALIZERS:
        if name.endswith(suffix):
            return init()
    if normalized:
        return mx.init.Xavier()
    return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)


def _zoo():
    try:
        from gluoncv import model_zoo
    except ImportError as err:
        raise ConfigError("gluon_quant.zoo.get_model needs GluonCV: "
                          "pip install 'gluon_quant[zoo]' (gluoncv==0.10.5.post0).") from err
    return model_zoo


def model_names():
    """The GluonCV model-zoo names, sorted (needs GluonCV)."""
    return sorted(_zoo().get_model_list())


def build_net(zoo, name, pretrained, kwargs):
    """GluonCV's ``zoo.get_model(name, pretrained=pretrained, **kwargs)``; nets with a
    backbone (detection, segmentation, pose, ...) get ``pretrained_base=pretrained``: random
    weights download nothing.

    Raises
    ------
    ConfigError
        ``name`` is one of GluonCV's own int8 models (``*_int8``), or a template for the
        user's classes (``*_custom``) built without ``classes``.
    ModelExecutionError
        GluonCV's constructor fails with random weights (``pretrained=False``).
    """
    if name.endswith("_int8"):
        raise ConfigError("%r is GluonCV's own int8 model (quantized by MXNet, downloaded as a "
                          "graph): quantize its fp32 model %r instead." % (name, name[:-5]))
    try:
        return _construct(zoo, name, pretrained, kwargs)
    except TypeError as err:
        if "classes" not in str(err):
            raise
        raise ConfigError("GluonCV's %r is a template for your own classes: its constructor "
                          "needs classes=[...] (%s). Pass classes= (and your trained weights) "
                          "in Python, or export your trained net (net.export) and quantize the "
                          "exported files." % (name, err)) from None
    except (ValueError, AttributeError, AssertionError) as err:
        if pretrained:
            raise
        raise ModelExecutionError(
            "GluonCV cannot build %r with random weights: its constructor fails with "
            "pretrained=False, pretrained_base=False (%s: %s), a limitation of GluonCV's. "
            "Build it with its trained weights and export it (net.export), then quantize the "
            "exported files." % (name, type(err).__name__, err)) from None


def _construct(zoo, name, pretrained, kwargs):
    try:
        return zoo.get_model(name, pretrained=pretrained,
                             **dict({"pretrained_base": pretrained}, **kwargs))
    except TypeError as err:  # classifiers take no pretrained_base
        if "pretrained_base" in kwargs or "pretrained_base" not in str(err):
            raise
    except Warning:  # ... or hand it on to Gluon's Block, which refuses unknown keywords
        if "pretrained_base" in kwargs:       # (darknet53): raised as a Warning
            raise
    return zoo.get_model(name, pretrained=pretrained, **kwargs)


#: Keywords of GluonCV detectors' ``set_nms``: :func:`get_model` applies them to the built
#: net (GluonCV's constructors take them inconsistently: YOLOv3 passes them to its backbone,
#: Faster R-CNN fixes ``nms_thresh`` itself).
NMS_KEYWORDS = ("nms_thresh", "nms_topk", "post_nms", "force_nms")


def _set_nms(net, name, nms):
    """Call the detector's ``set_nms`` with ``nms``; a clear error where it has none."""
    setter = getattr(net, "set_nms", None)
    if setter is None:
        raise ConfigError("%s has no non-maximum suppression to set (%s): drop %s, which "
                          "only GluonCV detectors take." % (name, type(net).__name__,
                                                            ", ".join(sorted(nms))))
    accepted = inspect.signature(setter).parameters
    unknown = sorted(k for k in nms if k not in accepted)
    if unknown:
        raise ConfigError("%s.set_nms takes %s, not %s: drop %s."
                          % (type(net).__name__, ", ".join(k for k in accepted if k != "self"),
                             ", ".join(unknown), ", ".join(unknown)))
    setter(**nms)


def get_model(name, calib_data=None, **kwargs):
    """A GluonCV model-zoo network by name, quantized to int8.

    Parameters
    ----------
    name : str
        A GluonCV model name (``'resnet50_v1'``, ``'ssd_512_resnet50_v1_voc'``...).
    calib_data : iterable of batches, optional
        Calibration data, as for :func:`gluon_quant.quantize`. When omitted, the net is
        calibrated on :func:`sample_batches` (crops of the offline sample photos, of
        side ``image_size``) and a warning says so: fine for a first look, but calibrate
        on images from your own domain for production accuracy.
    **kwargs
        ``pretrained`` (default False: GluonCV downloads pretrained weights, which needs
        internet) and ``image_size`` (default 224, the side of the sample crops); ``config``
        and any :class:`~gluon_quant.QuantConfig` field (``calibrator``, ``exclude``,
        ``preset``, ``ctx``...) or keyword of :func:`gluon_quant.quantize` go to it;
        ``nms_thresh``, ``nms_topk``, ``post_nms`` and ``force_nms`` go to the detector's
        ``set_nms`` (``nms_thresh=0`` turns NMS off: rows stay in anchor order, which is
        what to compare fp32 and int8 on); the rest go to GluonCV's ``get_model``
        (``pretrained_base`` defaults to ``pretrained``). With ``pretrained=False`` the
        weights are Xavier-random (:func:`initialize_random`) and BatchNorm statistics are
        set from the first calibration batch (:func:`set_batchnorm_statistics`), so that
        activations have realistic statistics.

    Returns
    -------
    QuantizedHybridBlock
        The int8 network; ``.net`` is the fp32 GluonCV network.

    Raises
    ------
    UnknownNameError
        ``name`` is not a GluonCV model; the message lists the valid names, sorted.
    """
    zoo = _zoo()
    valid = model_names()
    if not isinstance(name, str) or name.lower() not in valid:
        raise UnknownNameError("Unknown GluonCV model %r.%s Valid names: %s."
                               % (name, suggest(name, valid), ", ".join(valid)))
    quant_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in QUANTIZE_KEYWORDS}
    nms = {k: kwargs.pop(k) for k in list(kwargs) if k in NMS_KEYWORDS}
    pretrained = bool(kwargs.pop("pretrained", False))
    size = int(kwargs.pop("image_size", 224))
    net = build_net(zoo, name.lower(), pretrained, kwargs)
    if nms:
        _set_nms(net, name, nms)
    if calib_data is None and quant_kwargs.get("calib_table") is None:
        _log.warning("get_model(%r): no calib_data given, calibrating on crops of the "
                     "offline sample photos. Pass calib_data= with images of your domain.",
                     name)
        calib_data = sample_batches(size=size)
    if not pretrained:
        initialize_random(net)
    if not pretrained and calib_data is not None:
        batches = iter(calib_data)
        first = next(batches, None)
        if batches is calib_data and first is not None:  # a generator: put the batch back
            calib_data = itertools.chain([first], batches)
        first = first[0] if isinstance(first, (list, tuple)) else first
        if isinstance(first, (np.ndarray, mx.nd.NDArray)):
            set_batchnorm_statistics(net, mx.nd.array(first))
    return quantize(net, calib_data, **quant_kwargs)
