"""What the command line loads: a model named on the command line, calibration data, reports.

``MODEL`` is one of:

* ``efficientnet_lite0`` (``_lite1``, ``_lite2``): the offline ImageNet models of :mod:`gluon_quant.zoo`;
* a GluonCV model-zoo name (``resnet18_v1``, ``mobilenet1.0``, ``ssd_512_resnet50_v1_voc``...);
* an exported fp32 pair: a prefix ``PREFIX`` with ``PREFIX-symbol.json`` and
  ``PREFIX-0000.params`` beside it, or the ``-symbol.json`` file itself.

Calibration data is a folder of image files (decoded with ``mx.image.imread`` and given
the model's preprocessing) or a ``.npy`` / ``.npz`` file of input arrays; evaluation data
(``tune --eval-data``) the same, labelled by ``y`` in a ``.npz`` or by class subfolders.
"""
import glob
import logging
import numbers
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import mxnet as mx
import numpy as np

from . import _mxnet
from ._io import loads_json
from ._names import suggest
from .graph.heads import inference_heads
from .errors import (ArtifactError, CalibrationDataError, ConfigError, GluonQuantError,
                     ModelExecutionError, UnknownNameError)
from .progress import progress_bar

__all__ = ["LoadedModel", "load_model", "load_calibration", "check_image_inputs", "load_report",
           "imagenet_preprocess", "IMAGE_EXTENSIONS"]

_log = logging.getLogger(__name__)

#: File name endings read as images in a calibration folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: ImageNet normalization used by GluonCV models (RGB, pixels in [0, 1]).
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: GluonCV's evaluation resize: short side to ``size / 0.875`` (256 for 224), centre crop.
_CROP_RATIO = 0.875


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to be quantized.

    Attributes
    ----------
    net : mxnet.gluon.HybridBlock
        The fp32 network, initialized.
    name : str
        What the user typed.
    kind : str
        ``'efficientnet'``, ``'gluoncv'`` or ``'symbol'``.
    preprocess : callable
        ``preprocess(image)`` turns an ``(H, W, 3)`` uint8 RGB array into a
        ``(1, 3, S, S)`` float32 NDArray.
    image_size : int
        ``S``, the side of the network's square input.
    num_inputs : int
        Number of tensor inputs.
    random_weights : bool
        True when the weights are random (``--no-pretrained``): BatchNorm statistics
        must then be re-estimated on data.
    input_error : callable, optional
        For an exported pair: ``input_error(shape)`` gives MXNet's shape-inference error
        when the model does not take a first input of ``shape``, else None.
    input_names : tuple of str
        The graph's input names, in input order (an exported pair's; ``('data',)`` for
        the zoo's one-image nets): arrays of a ``.npz`` named so go to those inputs.
    """

    net: object
    name: str
    kind: str
    preprocess: Callable
    image_size: int
    num_inputs: int = 1
    random_weights: bool = False
    input_error: Optional[Callable] = None
    input_names: tuple = ("data",)


def imagenet_preprocess(image, *, size=224):
    """GluonCV's ImageNet evaluation transform for one photo.

    Resize the short side to ``round(size / 0.875)``, centre-crop ``size x size``, scale to
    [0, 1] and normalize with the ImageNet mean and standard deviation.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    size : int
        Side of the crop (224 for ImageNet classifiers).

    Returns
    -------
    mxnet.nd.NDArray
        ``(1, 3, size, size)`` float32.
    """
    pixels = mx.nd.array(image, dtype=np.uint8)
    pixels = mx.image.resize_short(pixels, int(round(size / _CROP_RATIO)), interp=2)
    pixels, _ = mx.image.center_crop(pixels, (size, size))
    x = (pixels.astype(np.float32) / 255.0 - mx.nd.array(_MEAN)) / mx.nd.array(_STD)
    return x.transpose((2, 0, 1)).expand_dims(axis=0)


def _symbol_files(spec):
    """``(symbol_file, params_file)`` when ``spec`` names an exported pair, else None."""
    if spec.endswith("-symbol.json"):
        prefix = spec[:-len("-symbol.json")]
    elif spec.endswith(".params"):
        prefix = spec[:-len(".params")].rsplit("-", 1)[0]
    else:
        prefix = spec
    symbol_file = prefix + "-symbol.json"
    if not os.path.isfile(symbol_file):
        return None
    if os.path.isfile(prefix + "-meta.json"):
        raise ConfigError(
            "%r is already a gluon_quant int8 export: load it in Python with "
            "gluon_quant.QuantizedSymbolBlock.imports(%r), inspect it with `gluon-quant "
            "report %s`, or pass the fp32 model to quantize it again." % (prefix, prefix, prefix))
    if spec.endswith(".params"):
        return symbol_file, spec
    candidates = sorted(c for c in glob.glob(glob.escape(prefix) + "-*.params")
                        if re.search(r"-\d{4}\.params$", c))
    if not candidates:
        raise ArtifactError("Found %r but no parameters file %r beside it. Export the model "
                            "with net.export(%r) to get both files."
                            % (symbol_file, prefix + "-0000.params", prefix))
    return symbol_file, candidates[-1]


def _load_symbol_pair(symbol_file, params_file, ctx):
    try:
        sym = mx.sym.load(symbol_file)
    except (mx.base.MXNetError, ValueError, OSError) as err:
        raise ArtifactError("Cannot read the symbol file %r: %s"
                            % (symbol_file, _mxnet.first_line(err))) from None
    try:
        saved = mx.nd.load(params_file)
    except (mx.base.MXNetError, ValueError, OSError) as err:
        raise ArtifactError("Cannot read the parameters file %r: %s"
                            % (params_file, _mxnet.first_line(err))) from None
    if not isinstance(saved, dict):
        raise ArtifactError("%r holds an unnamed list of arrays, not the named parameters "
                            "that HybridBlock.export() writes." % (params_file,))
    params = {k.split(":", 1)[-1]: v for k, v in saved.items()}
    graph = _mxnet.graph_json(sym)
    labels = inference_heads(graph)         # a Module checkpoint's SoftmaxOutput...
    if labels:
        sym = _mxnet.load_graph(graph)
        _log.info("Loss head(s) %s run as at inference; their label input(s) %s are not "
                  "inputs of the model.", sorted(labels), sorted(set(labels.values())))
    known = set(sym.list_arguments()) | set(sym.list_auxiliary_states())
    names = [n for n in sym.list_arguments() if n not in params]
    if not names:
        raise ArtifactError("Every argument of %r has a value in %r: the graph has no input."
                            % (symbol_file, params_file))
    params = {k: v for k, v in params.items() if k in known}
    block = _mxnet.symbol_block(sym, names, params, ctx)
    shapes = {k: v.shape for k, v in params.items()}

    def input_error(shape):
        return _mxnet.shape_error(sym, dict(shapes, **{names[0]: tuple(shape)}))
    return block, names, input_error


def _gluoncv_model(name, pretrained, ctx):
    try:
        from gluoncv import model_zoo
    except ImportError as err:
        raise ConfigError("GluonCV model %r needs gluoncv: pip install \"gluon_quant[zoo]\" "
                          "(%s)." % (name, err)) from None
    valid = sorted(model_zoo.get_model_list())
    if name.lower() not in valid:
        raise UnknownNameError(
            "Unknown model %r: not efficientnet_lite0, not a GluonCV model-zoo name and no "
            "exported pair %r exists.%s Valid names include efficientnet_lite0 and the "
            "GluonCV names (%d), e.g. %s." % (name, name + "-symbol.json", suggest(name, valid),
                                            len(valid), ", ".join(valid[:8])))
    from .zoo.gluoncv import build_net
    try:
        net = build_net(model_zoo, name, pretrained, {})
    except GluonQuantError:
        raise
    except (OSError, RuntimeError, ValueError) as err:  # no network, bad download
        raise ArtifactError("Cannot fetch the pretrained weights of %r (%s). Without internet, "
                            "use --no-pretrained (random weights, BatchNorm statistics "
                            "re-estimated on the calibration data)." % (name, err)) from None
    if not pretrained:
        initialize_random(net, ctx)
    else:
        net.collect_params().reset_ctx(ctx)
    return net


def initialize_random(net, ctx=None):
    """Give ``net`` random weights: Xavier for weights, ones/zeros for BatchNorm-like vectors.

    Xavier refuses 1-D arrays, which GluonCV's detectors leave to the global initializer.
    """
    for name, param in net.collect_params().items():
        if name.endswith(("gamma", "running_var", "moving_var")):
            init = mx.init.One()
        elif name.endswith(("beta", "bias", "running_mean", "moving_mean")):
            init = mx.init.Zero()
        else:
            init = mx.init.Xavier()
        param.initialize(init=init, ctx=ctx, force_reinit=True)


def _default_size(name):
    digits = [int(tok) for tok in name.replace("-", "_").split("_") if tok.isdigit()]
    if any(key in name for key in ("ssd", "yolo")) and digits:
        return digits[0] if digits[0] >= 224 else 416
    if "yolo" in name:
        return 416
    if "inception" in name:
        return 299
    return 224


def load_model(spec, *, pretrained=True, image_size=None, ctx=None):
    """Load ``MODEL`` as the command line names it.

    Parameters
    ----------
    spec : str
        ``efficientnet_lite0``, a GluonCV model-zoo name, or an exported fp32 pair (prefix,
        ``-symbol.json`` or ``.params`` file).
    pretrained : bool
        Load pretrained weights (GluonCV models download them; efficientnet_lite0 reads
        them from an installed package). False gives random weights.
    image_size : int, optional
        Side of the square input; by default the model's usual size (224, 299 for
        inception, 512 for ``ssd_512_*``, 416 for yolo3).
    ctx : mxnet.Context, optional

    Returns
    -------
    LoadedModel

    Raises
    ------
    UnknownNameError
        ``spec`` is neither a known name nor an existing exported pair.
    ArtifactError
        The exported files cannot be read, or the pretrained weights cannot be fetched.
    """
    ctx = ctx if ctx is not None else mx.cpu()
    if image_size is not None and (not isinstance(image_size, numbers.Integral) or image_size < 8):
        raise ConfigError("--image-size must be an integer >= 8, got %r." % (image_size,))
    files = _symbol_files(spec)
    if files is not None:
        block, names, input_error = _load_symbol_pair(*files, ctx)
        size = image_size or 224
        return LoadedModel(block, spec, "symbol", _sized(imagenet_preprocess, size), size,
                           num_inputs=len(names), input_error=input_error,
                           input_names=tuple(names))
    key = spec.lower().replace("-", "_")
    if key in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        from .zoo import efficientnet_lite, preprocess
        net = efficientnet_lite(key, pretrained=pretrained, ctx=ctx)
        if not pretrained:
            net.initialize(mx.init.Xavier(), ctx=ctx)
        size = net.image_size
        if image_size not in (None, size):
            raise ConfigError("%s takes %dx%d inputs; drop --image-size %d."
                              % (key, size, size, image_size))
        return LoadedModel(net, spec, "efficientnet",
                           _sized(preprocess, size), size,
                           random_weights=not pretrained)
    net = _gluoncv_model(spec, pretrained, ctx)
    size = image_size or _default_size(spec.lower())
    return LoadedModel(net, spec, "gluoncv", _sized(imagenet_preprocess, size), size,
                       random_weights=not pretrained)


def _sized(function, size):
    def preprocess(image):
        return function(image, size=size)
    return preprocess


def _image_files(folder):
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder)
                   for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise CalibrationDataError(
            "No image file (%s) in %r. Put a few hundred representative images there, or pass "
            "a .npy/.npz file of preprocessed input arrays." % ("/".join(IMAGE_EXTENSIONS),
                                                              folder))
    return files


def _decode(path):
    try:
        image = mx.image.imread(path, to_rgb=True)
    except mx.base.MXNetError as err:
        raise CalibrationDataError("Cannot decode the image %r: %s"
                                   % (path, _mxnet.first_line(err))) from None
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise CalibrationDataError("Image %r decoded to shape %r, not (H, W, 3)."
                                   % (path, image.shape))
    return image.asnumpy()


def _read_images(files, model, max_images, progress, kept=None):
    """Decode and preprocess ``files`` (up to ``max_images`` decoded ones) into one array.
    A file that does not decode (truncated, or not an image) is skipped with a warning
    naming it: one bad file in a folder of hundreds should not stop a calibration. The
    files used are appended to the list ``kept``, when one is given."""
    arrays, skipped = [], []
    wanted = len(files) if max_images is None else max_images
    for name in progress_bar(files, enabled=progress, desc="reading images", unit="image"):
        if len(arrays) >= wanted:
            break
        try:
            arrays.append(model.preprocess(_decode(name)).asnumpy())
        except CalibrationDataError as err:
            skipped.append(str(err))
            continue
        if kept is not None:
            kept.append(name)
    if not arrays:
        raise CalibrationDataError("None of the %d image files could be used: %s"
                                   % (len(skipped), "; ".join(skipped[:3])))
    if skipped:
        _log.warning("Skipped %d of the image files: %s%s", len(skipped),
                     "; ".join(skipped[:3]), " ..." if len(skipped) > 3 else "")
    return np.concatenate(arrays).astype(np.float32)


def load_eval_images(folder, model, *, progress=True):
    """``(images, labels or None, classes or None)`` of an evaluation folder, its images
    read as :func:`load_calibration` reads them. Where every image lies in a class
    subfolder (``val/<class>/*.jpg``, ImageNet's and ``ImageFolderDataset``'s layout), an
    image's label is its folder's index among the class folders in sorted order (ImageNet's
    synset folders sort into its class order); otherwise there are no labels.

    Raises
    ------
    CalibrationDataError
        No image, none decodable, or a model that does not take the command line's images.
    """
    files = _image_files(folder)
    check_image_inputs(model, (1, 3, model.image_size, model.image_size), folder)
    parts = {f: os.path.relpath(f, folder).split(os.sep) for f in files}
    kept = []
    images = _read_images(files, model, None, progress, kept=kept)
    if not all(len(p) == 2 for p in parts.values()):
        return images, None, None
    classes = sorted({p[0] for p in parts.values()})
    index = {name: i for i, name in enumerate(classes)}
    labels = [index[parts[f][0]] for f in kept]
    return images, np.asarray(labels, dtype=np.int64), classes


def class_folders(classes):
    """What the labels of an evaluation folder are: `` (labels: 3 class folders in sorted
    order, cat=0, dog=1, fox=2)``; empty without class folders."""
    if not classes:
        return ""
    named = ", ".join("%s=%d" % (c, i) for i, c in enumerate(classes[:3]))
    return " (labels: %d class folders in sorted order, %s%s)" % (
        len(classes), named, ", ..." if len(classes) > 3 else "")


def load_eval_data(path, batches, model, *, progress=True):
    """``([inputs, one array per model input], labels or None, class folders or None)`` of
    ``tune --eval-data``: a folder of images (:func:`load_eval_images`), a .npy of inputs,
    or a .npz with the inputs (``x`` for one input; else one array per input, named after
    it or in input order) and optionally the labels ``y``."""
    if os.path.isdir(path):
        images, labels, classes = load_eval_images(path, model, progress=progress)
        return [images], labels, classes
    input_names = model.input_names
    num_inputs = len(input_names)
    try:
        data = np.load(path)
    except (OSError, ValueError) as err:
        raise ArtifactError("Cannot read --eval-data %r: %s. Pass a .npz with x (inputs) "
                            "and y (labels), a .npy of inputs or a folder of images."
                            % (path, err)) from None
    if isinstance(data, np.ndarray):
        inputs, labels = [data], None
    else:
        labels = data["y"] if "y" in data.files else None
        names = [k for k in data.files if k != "y"]
        if "x" in data.files and len(input_names) == 1:
            names = ["x"]
        else:
            try:
                names = npz_input_keys(data.files, input_names, path, skip=("y",))
            except GluonQuantError:
                pass            # refused below, with the shapes expected
        inputs = [data[k] for k in names]
    first = batches[0] if isinstance(batches[0], tuple) else (batches[0],)
    samples = {len(a) for a in inputs} | ({len(labels)} if labels is not None else set())
    unread = [] if isinstance(data, np.ndarray) else [
        k for k in data.files if k not in names and k != "y"]
    if unread or len(inputs) != num_inputs or len(samples) != 1 or any(
            a.shape[1:] != np.asarray(b).shape[1:] for a, b in zip(inputs, first)):
        found = "" if isinstance(data, np.ndarray) else " (arrays %s)" % ", ".join(
            "%s %s" % (k, data[k].shape) for k in data.files)
        raise ArtifactError(
            "--eval-data %r%s holds inputs %s and labels %s; expected %d input array(s) of "
            "(N,) + %s like the calibration data, saved as x (or one array per input, named "
            "after it or in input order), and N labels saved as y: np.savez(path, x=..., "
            "y=...)."
            % (path, found, [a.shape for a in inputs], None if labels is None
               else labels.shape, num_inputs,
               " and ".join(str(np.asarray(b).shape[1:]) for b in first)))
    return ([a.astype(np.float32) for a in inputs],
            None if labels is None else labels.astype(np.int64), None)


def _batched(arrays, batch_size):
    return [arrays[i:i + batch_size] for i in range(0, len(arrays), batch_size)]


def npz_input_keys(keys, input_names, path, skip=()):
    """The keys of a ``.npz``'s arrays, one per model input in input order: by name where
    the file names every input (any order, other arrays ignored), else the file's arrays
    (less ``skip``) in the order they were saved.

    Raises
    ------
    CalibrationDataError
        Neither: the file's arrays are not one per input.
    """
    keys = list(keys)
    if all(name in keys for name in input_names):
        return list(input_names)
    rest = [k for k in keys if k not in skip]
    if len(rest) == len(input_names):
        mapped = rest
        if len(input_names) > 1 and mapped != ["arr_%d" % i for i in range(len(mapped))]:
            _log.warning("%s: arrays %s are taken as inputs %s, in the order they were "
                         "saved; name them after the inputs to choose.", path, mapped,
                         list(input_names))
        return mapped
    raise CalibrationDataError(
        "%r holds arrays %s but the model has %d input(s) %s. Save one array per input, "
        "named after it (np.savez(path, %s)) or in input order."
        % (path, keys, len(input_names), list(input_names),
           ", ".join("%s=..." % n for n in input_names)))


def _load_arrays(path, input_names):
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CalibrationDataError("Cannot read %r as a numpy file: %s" % (path, err)) from None
    if isinstance(loaded, np.ndarray):
        return [loaded]
    with loaded:
        if not loaded.files:
            raise CalibrationDataError("%r holds no array." % (path,))
        return [loaded[k] for k in npz_input_keys(loaded.files, input_names, path)]


def load_calibration(path, model, *, batch_size=16, max_images=None, progress=True):
    """Read calibration batches for ``model`` from a folder of images or a numpy file.

    Parameters
    ----------
    path : str
        A folder (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff files, decoded
        with ``mx.image.imread`` and preprocessed like the model's training data; files
        that do not decode are skipped with a warning), or a ``.npy``
        file of shape ``(N, ...)``, or a ``.npz`` file with one array per input (named after
        the inputs, or in input order).
    model : LoadedModel
    batch_size : int
    max_images : int, optional
        Read at most this many images or samples.
    progress : bool
        Progress bar while decoding (on a terminal only).

    Returns
    -------
    list
        Batches: ``(B, ...)`` float32 numpy arrays, or tuples of them for multi-input models.

    Raises
    ------
    CalibrationDataError
        Missing path, no image, no decodable image, unreadable or empty numpy file.
    """
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError("--batch-size must be a positive integer, got %r." % (batch_size,))
    if not os.path.exists(path):
        raise CalibrationDataError("Calibration data %r does not exist: pass a folder of "
                                   "images or a .npy/.npz file." % (path,))
    if os.path.isdir(path):
        files = _image_files(path)
        check_image_inputs(model, (batch_size, 3, model.image_size, model.image_size), path)
        data = _read_images(files, model, max_images, progress)
        _log.info("Read %d calibration images from %s.", len(data), path)
        return _batched(data, batch_size)
    if path.lower().endswith(".json"):
        raise CalibrationDataError(
            "Calibration data %r is a JSON file, not data: a calibration table (the "
            "-calib.json a run writes) rebuilds its model in Python, "
            "gluon_quant.quantize(net, calib_table=%r) (with batches beside it to measure "
            "bias corrections). --calib takes a folder of images or a .npy/.npz file."
            % (path, path))
    if not path.lower().endswith((".npy", ".npz")):
        raise CalibrationDataError("Calibration data %r is neither a folder of images nor a "
                                   ".npy/.npz file." % (path,))
    inputs = [np.asarray(a, dtype=np.float32)[:max_images]
              for a in _load_arrays(path, model.input_names)]
    if not len(inputs[0]):
        raise CalibrationDataError("%r holds no sample (its first axis is empty)." % (path,))
    if len(inputs) == 1:
        return _batched(inputs[0], batch_size)
    return list(zip(*[_batched(a, batch_size) for a in inputs]))


def check_image_inputs(model, shape, source=None):
    """Refuse, before reading any image, image batches that an exported ``model`` cannot
    take: the command line reads images as ImageNet classifiers take them, which a user's
    own model (one channel, another size or input count) may not.

    Parameters
    ----------
    model : LoadedModel
    shape : tuple of int
        The batches' shape, ``(B, 3, S, S)``.
    source : str, optional
        The image folder the batches are read from; None for random inputs (no --calib).

    Raises
    ------
    CalibrationDataError
        The model has several inputs, or MXNet's shape inference rejects ``shape``.
    """
    if model.input_error is None:
        return
    if source is None:
        how = "with no --calib, it is given random %s batches" % (tuple(shape),)
    else:
        how = ("the images of %r are read as %s batches: RGB, short side resized and "
               "centre-cropped to --image-size %d, scaled to [0, 1] and normalized with "
               "ImageNet's mean and std" % (source, tuple(shape), model.image_size))
    advice = ("Pass --calib FILE.npy (or .npz, one array per input, named after it) holding "
              "inputs preprocessed as %s takes them" % (model.name,))
    if model.num_inputs != 1:
        raise CalibrationDataError("%s takes %d inputs, and images give one (%s). %s."
                                   % (model.name, model.num_inputs, how, advice))
    err = model.input_error(shape)
    if err is not None:
        raise CalibrationDataError(
            "%s does not take these inputs: %s, and MXNet's shape inference rejects them: "
            "%s. %s, or --image-size for another square side."
            % (model.name, how, _mxnet.first_line(err), advice))


def load_report(prefix):
    """``(QuantReport, state dict, path read)`` of ``gluon-quant report PREFIX``: the
    ``PREFIX-report.json`` the CLI wrote, a report file itself, or the export's own report
    (``PREFIX`` of ``qnet.export``, or any file of either given instead of the prefix).

    Raises
    ------
    ArtifactError
        Nothing readable there, or not a report.
    """
    from .export import file_names
    from .report import QuantReport
    from .symbol_block import export_report     # the symbol block imports the package
    prefix = re.sub(r"-(symbol|meta|calib)\.json$|-int8\.params$", "", os.fspath(prefix))
    path = prefix if prefix.endswith(".json") else prefix + "-report.json"
    try:
        with open(path, encoding="utf-8") as handle:
            state = loads_json(handle.read())
    except OSError as err:
        if not prefix.endswith(".json") and os.path.isfile(file_names(prefix)["meta"]):
            report = export_report(prefix)      # an export written by qnet.export()
            return report, {"model": prefix}, file_names(prefix)["meta"]
        raise ArtifactError("Cannot read the report %r (%s). Create it with: gluon-quant "
                            "quantize MODEL --calib DATA --out %s"
                            % (path, err.strerror or err, prefix)) from None
    except ValueError as err:
        raise ArtifactError("%r is not a valid report (truncated or not JSON: %s)."
                            % (path, err)) from None
    try:
        report = QuantReport.from_dict(state)
    except ValueError as err:
        raise ArtifactError("%r is %s." % (path, err)) from None
    return report, state, path


def set_batchnorm_from(net, batches):
    """Set the BatchNorm statistics of a random-weight ``net`` from the calibration
    ``batches`` (up to 64 samples of them stacked, or the first batch alone for a net that
    takes one batch size); the number of BatchNorm layers set.

    Raises
    ------
    ModelExecutionError
        The net does not run on the first batch either; where it runs on one sample of
        it, the message points to ``--batch-size 1``.
    """
    from .zoo.batchnorm import reestimate_batchnorm     # the zoo imports the package
    try:
        return reestimate_batchnorm(net, stack_for_batchnorm(batches))
    except ModelExecutionError:     # a net taking one batch size (Faster R-CNN: 1)
        first = stack_for_batchnorm(batches[:1])
        try:
            return reestimate_batchnorm(net, first)
        except ModelExecutionError as err:
            if (first[0] if isinstance(first, tuple) else first).shape[0] == 1:
                raise
            one = tuple(a[:1] for a in first) if isinstance(first, tuple) else first[:1]
            try:
                reestimate_batchnorm(net, one)
            except ModelExecutionError:
                raise err from None     # not the batch size: the inputs themselves
            raise ModelExecutionError(
                "%s. The network runs on one sample at a time only (as GluonCV's Faster "
                "R-CNN and Mask R-CNN do): use --batch-size 1." % str(err).rstrip(".")) \
                from err


def stack_for_batchnorm(batches, limit=64):
    """The first ``limit`` samples of ``batches`` as NDArray input(s), for BN re-estimation."""
    first = batches[0]
    if isinstance(first, tuple):
        return tuple(mx.nd.array(np.concatenate([b[i] for b in batches])[:limit])
                     for i in range(len(first)))
    return mx.nd.array(np.concatenate(batches)[:limit])


def input_shapes(batches) -> Tuple[Tuple[int, ...], ...]:
    """Per-sample shapes of the inputs in ``batches`` (without the batch axis)."""
    first = batches[0]
    items = first if isinstance(first, tuple) else (first,)
    return tuple(tuple(a.shape[1:]) for a in items)
