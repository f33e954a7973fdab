"""fp32 against int8 on the trained task nets: task metrics on held-out scenes, row agreement.

:func:`compare` is what the tests assert and ``benchmarks/gluoncv_trained.py`` prints.
"""
import logging
import time

import mxnet as mx
import numpy as np

from ...errors import ConfigError
from . import evaluate, task_data, trained_detector, trained_pose, trained_segmenter
from .metrics import pixel_agreement, row_agreement

__all__ = ["compare", "default_quantize", "TASK_NETS"]

_log = logging.getLogger(__name__)

#: Trained net name -> (task kind, loader, name of the task metric).
TASK_NETS = {
    "detector": ("detection", trained_detector, "mAP"),
    "segmenter": ("segmentation", trained_segmenter, "mIoU"),
    "pose": ("pose", trained_pose, "PCK@0.1"),
}


def default_quantize(net, calib_batches):
    """``gluon_quant.quantize(net, calib_batches)`` with every default."""
    from ...api import quantize
    return quantize(net, calib_batches)


def _batches(images, batch_size):
    return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def compare(name, quantize_fn=default_quantize, *, num_calib=64, num_eval=200, batch_size=16):
    """Task metrics of a trained task net in fp32 and after ``quantize_fn``, on held-out scenes.

    Parameters
    ----------
    name : {'detector', 'segmenter', 'pose'}
    quantize_fn : callable
        ``quantize_fn(net, calib_batches) -> int8 net`` (a callable returning what the fp32
        net returns); calibration batches come from the ``calib`` split, which shares no
        scene, photo or seed with the held-out ``eval`` split.
    num_calib, num_eval : int
        Scenes for calibration and evaluation.
    batch_size : int
        Of the calibration batches.

    Returns
    -------
    dict
        ``metric`` (its name), ``fp32`` and ``int8`` (in [0, 1]), ``seconds`` (to quantize);
        for the segmenter ``pixel_agreement``; for the detector ``score_cosine``,
        ``box_cosine`` and ``id_agreement`` of every row with NMS off (a second net
        quantized with ``set_nms(nms_thresh=0, nms_topk=-1, post_nms=-1)``).
    """
    if name not in TASK_NETS:
        raise ConfigError("Unknown task net %r: use one of %s." % (name, sorted(TASK_NETS)))
    kind, load, metric = TASK_NETS[name]
    calib = _batches(task_data(kind, "calib", num_calib)["images"], batch_size)
    held_out = task_data(kind, "eval", num_eval)
    net = load()
    started = time.perf_counter()
    qnet = quantize_fn(net, calib)
    result = {"metric": metric, "seconds": time.perf_counter() - started,
              "fp32": evaluate(kind, net, held_out), "int8": evaluate(kind, qnet, held_out)}
    if name == "segmenter":
        result["pixel_agreement"] = pixel_agreement(
            np.concatenate([_scores(net, b) for b in _batches(held_out["images"], 50)]),
            np.concatenate([_scores(qnet, b) for b in _batches(held_out["images"], 50)]))
    if name == "detector":
        rows = trained_detector()
        rows.set_nms(nms_thresh=0, nms_topk=-1, post_nms=-1)
        qrows = quantize_fn(rows, calib)
        images = _batches(held_out["images"], 50)
        result.update(row_agreement([_outputs(rows, b) for b in images],
                                    [_outputs(qrows, b) for b in images]))
    _log.info("%s: %s", name, result)
    return result


def _outputs(net, images):
    return [o.asnumpy() for o in net(mx.nd.array(images))]


def _scores(net, images):
    return net(mx.nd.array(images)).asnumpy()
