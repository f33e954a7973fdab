"""Task metrics: VOC detection mAP, segmentation mIoU, keypoint PCK, detector row agreement.

Each takes plain numpy arrays (or NDArrays) as a net returns them and the labels as
:func:`gluon_quant.zoo.tasks.task_data` gives them, and returns fractions in [0, 1].
"""
import numpy as np

from ...debug.metrics import cosine
from ...errors import ConfigError
from .scenes import CLASSES

__all__ = ["detection_map", "miou", "pixel_agreement", "pck", "heatmap_keypoints",
           "row_agreement"]


def _numpy(array):
    return array.asnumpy() if hasattr(array, "asnumpy") else np.asarray(array)


def _pad(rows, width, fill=-1.0):
    """Stack ragged ``(k, width)`` arrays into ``(N, max k, width)``, padded with ``fill``."""
    longest = max(1, max(len(row) for row in rows))
    out = np.full((len(rows), longest, width), fill, np.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = np.asarray(row, np.float32).reshape(-1, width)
    return out


def detection_map(detections, boxes, ids, *, iou=0.5, class_names=CLASSES):
    """VOC 2007 (11-point) mean average precision of detections.

    Parameters
    ----------
    detections : list of (ids, scores, boxes)
        A detector's outputs for successive batches: ``(N, K, 1)`` class ids (-1 for
        none), ``(N, K, 1)`` scores, ``(N, K, 4)`` ``x1, y1, x2, y2`` boxes.
    boxes, ids : list of numpy.ndarray
        Ground truth per image, ``(k, 4)`` boxes and ``(k,)`` class ids, in the order of the
        detections.
    iou : float
        Overlap that makes a detection a true positive.
    class_names : sequence of str

    Returns
    -------
    float
        The mAP in [0, 1].
    """
    from gluoncv.utils.metrics.voc_detection import VOC07MApMetric
    metric = VOC07MApMetric(iou_thresh=iou, class_names=list(class_names))
    start = 0
    for pred_ids, pred_scores, pred_boxes in detections:
        pred_ids, pred_scores = _numpy(pred_ids), _numpy(pred_scores)
        count = len(pred_ids)
        if start + count > len(boxes):
            raise ConfigError("detection_map got detections for %d images but labels for %d."
                              % (start + count, len(boxes)))
        metric.update(_numpy(pred_boxes), pred_ids[..., 0], pred_scores[..., 0],
                      _pad(boxes[start:start + count], 4),
                      _pad(ids[start:start + count], 1)[..., 0])
        start += count
    if start != len(boxes):
        raise ConfigError("detection_map got detections for %d images but labels for %d."
                          % (start, len(boxes)))
    return float(metric.get()[1][-1])


def miou(predicted, labels, num_classes=len(CLASSES) + 1):
    """Mean intersection over union of label maps, over the classes present (background too).

    Parameters
    ----------
    predicted, labels : numpy.ndarray
        Integer class maps of the same shape (``(N, H, W)``), or predicted scores
        ``(N, C, H, W)`` whose arg-max over axis 1 is taken.
    num_classes : int
        Classes including background.

    Returns
    -------
    float
        Mean IoU in [0, 1] over classes that occur in either map.
    """
    predicted, labels = _labels(predicted, labels)
    ious = []
    for cls in range(num_classes):
        pred, true = predicted == cls, labels == cls
        union = np.logical_or(pred, true).sum()
        if union:
            ious.append(np.logical_and(pred, true).sum() / union)
    return float(np.mean(ious))


def pixel_agreement(a, b):
    """Fraction of pixels with the same class in two label maps (or arg-max of scores)."""
    a, b = _labels(a, b)
    return float((a == b).mean())


def _labels(a, b):
    a, b = _numpy(a), _numpy(b)
    if a.ndim == 4:
        a = a.argmax(axis=1)
    if b.ndim == 4:
        b = b.argmax(axis=1)
    if a.shape != b.shape:
        raise ConfigError("Label maps of shapes %s and %s cannot be compared: give (N, H, W) "
                          "maps or (N, C, H, W) scores." % (a.shape, b.shape))
    return a, b


def heatmap_keypoints(heatmaps, stride):
    """Keypoints ``(N, K, 2)`` (x, y in input pixels) at the peaks of ``(N, K, h, w)`` heatmaps.

    The peak cell is moved a quarter cell towards its higher neighbour (as GluonCV's
    ``get_final_preds``); heatmap cell ``u`` is input pixel ``(u + 0.5) * stride - 0.5``.
    """
    heatmaps = _numpy(heatmaps)
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1).argmax(axis=2)
    ys, xs = np.divmod(flat, w)
    xy = np.stack([xs, ys], axis=-1).astype(np.float32)
    for i in range(n):
        for j in range(k):
            x, y, hm = xs[i, j], ys[i, j], heatmaps[i, j]
            if 0 < x < w - 1:
                xy[i, j, 0] += 0.25 * np.sign(hm[y, x + 1] - hm[y, x - 1])
            if 0 < y < h - 1:
                xy[i, j, 1] += 0.25 * np.sign(hm[y + 1, x] - hm[y - 1, x])
    return (xy + 0.5) * stride - 0.5


def pck(predicted, keypoints, boxes, *, alpha=0.1):
    """Percentage of correct keypoints: within ``alpha`` x the object's longer box side.

    Parameters
    ----------
    predicted, keypoints : numpy.ndarray
        ``(N, K, 2)`` predicted and true ``x, y``, in pixels.
    boxes : numpy.ndarray
        ``(N, 4)`` object boxes ``x1, y1, x2, y2``.
    alpha : float

    Returns
    -------
    float
        Fraction of keypoints in [0, 1].
    """
    predicted, keypoints, boxes = (np.asarray(a, np.float32) for a in
                                   (predicted, keypoints, boxes))
    if predicted.shape != keypoints.shape or boxes.shape != (len(keypoints), 4):
        raise ConfigError("pck needs (N, K, 2) keypoints and (N, 4) boxes, got %s, %s and %s."
                          % (predicted.shape, keypoints.shape, boxes.shape))
    size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    distance = np.linalg.norm(predicted - keypoints, axis=-1)
    return float((distance <= alpha * size[:, None]).mean())


def row_agreement(reference, candidate):
    """Row-by-row agreement of two detectors' outputs with NMS off (rows in anchor order).

    Parameters
    ----------
    reference, candidate : list of (ids, scores, boxes)
        Outputs of the same batches.

    Returns
    -------
    dict
        ``score_cosine``, ``box_cosine`` (over all rows), ``id_agreement`` (fraction of
        rows with the same class id, -1 for scores below the decoder's threshold) and
        ``box_error``: the mean absolute difference of box coordinates (in the boxes'
        units) over the rows the reference scores at least 0.1, the rows that can become
        detections (the cosine of raw coordinates is close to 1 for any small error).
    """
    if len(reference) != len(candidate):
        raise ConfigError("row_agreement needs outputs of the same batches, got %d and %d."
                          % (len(reference), len(candidate)))
    parts = [[np.concatenate([_numpy(out[i]).ravel() for out in outputs])
              for i in range(3)] for outputs in (reference, candidate)]
    (ref_ids, ref_scores, ref_boxes), (ids, scores, boxes) = parts
    confident = np.repeat(ref_scores >= 0.1, 4)
    box_error = float(np.abs(ref_boxes - boxes)[confident].mean()) if confident.any() else 0.0
    return {"score_cosine": cosine(ref_scores, scores), "box_cosine": cosine(ref_boxes, boxes),
            "id_agreement": float((ref_ids == ids).mean()), "box_error": box_error}
