"""Trained detection, segmentation and keypoint nets, and the held-out data to judge int8 by.

Random weights make detectors, segmenters and pose nets chaotic, so int8-vs-fp32 agreement
on them says little. These three small nets are trained (from scratch, a few minutes each
on one CPU core) on scenes cut from real photos (:mod:`.scenes`), and their weights ship
with the package, so that task metrics on held-out scenes mean something:

>>> from gluon_quant.zoo import tasks
>>> net = tasks.trained_detector()                      # a GluonCV SSD
>>> calib, held_out = tasks.task_data("detection", "calib"), tasks.task_data("detection", "eval")
>>> qnet = gluon_quant.quantize(net, [calib["images"]])
>>> tasks.detection_map(tasks.predict(qnet, held_out["images"]), held_out["boxes"], held_out["ids"])

``python -m gluon_quant.zoo.tasks --retrain`` trains them again (deterministically) and
rewrites the weights and their manifest; ``python -m gluon_quant.zoo.tasks`` checks them.
"""
import dataclasses
import json
import logging
import numbers
import os

import mxnet as mx
import numpy as np

from ..._io import atomic_write, read_bytes, sha256_bytes
from ...errors import ArtifactError, ConfigError
from . import nets
from .metrics import (detection_map, heatmap_keypoints, miou, pck, pixel_agreement,
                      row_agreement)
from .scenes import CLASSES, KEYPOINTS, SPLITS, render
from .train import POSE_STRIDE, RECIPES, train

__all__ = ["trained_detector", "trained_segmenter", "trained_pose", "task_data", "predict",
           "evaluate", "retrain", "detection_map", "miou", "pixel_agreement", "pck",
           "heatmap_keypoints", "row_agreement", "CLASSES", "KEYPOINTS", "POSE_STRIDE",
           "WEIGHTS_DIR"]

_log = logging.getLogger(__name__)

#: Where the trained weights and their manifest live (inside the package).
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
_MANIFEST = "manifest.json"
#: Version of the manifest's format; bump when its fields change meaning.
FORMAT_VERSION = 1
_KIND = {"detector": "detection", "segmenter": "segmentation", "pose": "pose"}
_BUILDERS = {"detector": nets.detector, "segmenter": nets.segmenter, "pose": nets.pose_net}
#: Default number of held-out ("eval") and calibration scenes of :func:`task_data`.
_DEFAULT_COUNT = {"train": 256, "calib": 64, "eval": 200}


def _manifest():
    path = os.path.join(WEIGHTS_DIR, _MANIFEST)
    if not os.path.exists(path):
        raise ArtifactError("The trained task weights are missing (%r): run "
                            "'python -m gluon_quant.zoo.tasks --retrain'." % path)
    try:
        manifest = json.loads(read_bytes(path, "task-weights manifest").decode("utf-8"))
    except ValueError as err:
        raise ArtifactError("The task-weights manifest %r is corrupt (%s): run "
                            "'python -m gluon_quant.zoo.tasks --retrain'." % (path, err)) from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError("The task-weights manifest %r has format version %r; this "
                            "gluon_quant reads %d: run 'python -m gluon_quant.zoo.tasks "
                            "--retrain'." % (path, manifest.get("format_version"),
                                             FORMAT_VERSION))
    return manifest


def _trained(name):
    entry = _manifest()["nets"].get(name)
    if entry is None:
        raise ArtifactError("The task-weights manifest has no %r net: run 'python -m "
                            "gluon_quant.zoo.tasks --retrain'." % name)
    path = os.path.join(WEIGHTS_DIR, entry["file"])
    if sha256_bytes(read_bytes(path, "%s weights" % name)) != entry["sha256"]:
        raise ArtifactError("The %s weights %r do not match their manifest's checksum: "
                            "reinstall gluon_quant or run 'python -m gluon_quant.zoo.tasks "
                            "--retrain'." % (name, path))
    net = _BUILDERS[name]()
    net.load_parameters(path, ctx=mx.cpu(), cast_dtype=True, dtype_source="current")
    net.hybridize()
    return net


def _save_half(net, path, name):
    """Save ``net``'s weights as float16 (BatchNorm's stay float32) and keep ``net`` equal
    to what loading them gives: the files stay small (the SSD's 3.4 MB become 1.7 MB) and
    the manifest's metric is measured on exactly the shipped weights."""
    net.cast("float16")
    atomic_write(path, net.save_parameters, what="%s weights" % name)
    net.cast("float32")
    net.load_parameters(path, ctx=mx.cpu(), cast_dtype=True, dtype_source="current")
    net.hybridize()


def trained_detector():
    """The trained SSD detector (GluonCV :class:`~gluoncv.model_zoo.ssd.SSD`, 128 x 128 input).

    Returns
    -------
    gluoncv.model_zoo.ssd.SSD
        Initialised and hybridized; outputs ``ids, scores, boxes`` for :data:`CLASSES`,
        boxes in input pixels. ``net.set_nms(nms_thresh=0, nms_topk=-1, post_nms=-1)``
        keeps every anchor's rows, in anchor order.
    """
    return _trained("detector")


def trained_segmenter():
    """The trained FCN-like segmenter: ``(N, 3, 128, 128)`` -> scores ``(N, 4, 128, 128)``
    (background, then :data:`CLASSES`)."""
    return _trained("segmenter")


def trained_pose():
    """The trained simple_pose-like keypoint net: ``(N, 3, 96, 96)`` -> heatmaps
    ``(N, 5, 24, 24)`` (:data:`KEYPOINTS`; decode with :func:`heatmap_keypoints` and
    :data:`POSE_STRIDE`)."""
    return _trained("pose")


def task_data(kind, split, num=None):
    """Labelled scenes of a task (see :mod:`gluon_quant.zoo.tasks.scenes`).

    Parameters
    ----------
    kind : {'detection', 'segmentation', 'pose'}
    split : {'train', 'calib', 'eval'}
        ``eval`` uses photos, backgrounds and seeds that neither ``train`` nor ``calib``
        uses; ``calib`` the training photos with other seeds.
    num : int, optional
        Number of scenes; by default 256 (train), 64 (calib) or 200 (eval).

    Returns
    -------
    dict
        ``images`` float32 ``(N, 3, S, S)``, normalised as GluonCV expects;
        ``labels`` int32 ``(N, S, S)`` class maps (0 background); ``boxes`` and ``ids``:
        per image ``(k, 4)`` pixel boxes and ``(k,)`` class ids; ``keypoints``: per image
        ``(k, 5, 2)`` pixel ``x, y``. For ``pose``, each image holds one object.
    """
    if split not in SPLITS:
        raise ConfigError("Unknown split %r: use one of %s." % (split, sorted(SPLITS)))
    num = _DEFAULT_COUNT[split] if num is None else num
    if not isinstance(num, numbers.Integral) or num < 1:
        raise ConfigError("task_data needs a positive number of scenes, got num=%r." % (num,))
    return render(kind, split, 0, num)


def predict(net, images, batch_size=50):
    """Run ``net`` on ``images`` (numpy ``(N, 3, S, S)``) in batches; outputs as numpy.

    Returns
    -------
    list
        One entry per batch: a numpy array, or a tuple of them for nets with several outputs.
    """
    outputs = []
    for start in range(0, len(images), batch_size):
        out = net(mx.nd.array(images[start:start + batch_size]))
        outputs.append(tuple(o.asnumpy() for o in out) if isinstance(out, (list, tuple))
                       else out.asnumpy())
    return outputs


def evaluate(kind, net, data):
    """The task metric of ``net`` on ``data`` (from :func:`task_data`), in [0, 1].

    Detection: VOC07 mAP at IoU 0.5 (with the net's own NMS); segmentation: mIoU;
    pose: PCK at 0.1 of the object's longer side.
    """
    outputs = predict(net, data["images"])
    if kind == "detection":
        return detection_map(outputs, data["boxes"], data["ids"])
    if kind == "segmentation":
        return miou(np.concatenate(outputs), data["labels"])
    if kind == "pose":
        found = heatmap_keypoints(np.concatenate(outputs), POSE_STRIDE)
        return pck(found, np.stack([k[0] for k in data["keypoints"]]),
                   np.stack([b[0] for b in data["boxes"]]))
    raise ConfigError("Unknown task kind %r: use one of %s." % (kind, sorted(_KIND.values())))


def retrain(names=tuple(RECIPES)):
    """Train the task nets again and rewrite their weights and the manifest.

    Parameters
    ----------
    names : sequence of str
        Among ``'detector'``, ``'segmenter'``, ``'pose'``.

    Returns
    -------
    dict
        The new manifest: per net its file, sha256, recipe and held-out fp32 metric.
    """
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise ConfigError("Unknown task nets %s: use some of %s." % (unknown, sorted(RECIPES)))
    try:
        manifest = _manifest()
    except ArtifactError:
        manifest = {"format_version": FORMAT_VERSION, "nets": {}}
    os.makedirs(WEIGHTS_DIR, exist_ok=True)
    for name in names:
        net = train(name)
        filename = "%s.params" % name
        path = os.path.join(WEIGHTS_DIR, filename)
        _save_half(net, path, name)
        metric = evaluate(_KIND[name], net, task_data(_KIND[name], "eval"))
        _log.info("%s: held-out fp32 metric %.4f", name, metric)
        manifest["nets"][name] = {
            "file": filename, "sha256": sha256_bytes(read_bytes(path, "%s weights" % name)),
            "recipe": dataclasses.asdict(RECIPES[name]), "eval_metric_fp32": round(metric, 4)}
        atomic_write(os.path.join(WEIGHTS_DIR, _MANIFEST),
                     json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"),
                     what="task-weights manifest")
    return manifest
