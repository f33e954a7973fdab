"""Training the task nets from scratch on their scenes, deterministically, on one core.

Each net trains with Adam and a cosine learning-rate decay on a fixed pool of rendered
training scenes (:mod:`.scenes`, split ``train``), in shuffled mini-batches drawn from a
seeded generator; MXNet's generator is seeded too, so the same machine with
``OMP_NUM_THREADS=1`` gives the same weights bit for bit. What each net is trained with is
in :data:`RECIPES`.
"""
import logging
import time
from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from . import nets
from .scenes import IMAGE_SIZE, render

__all__ = ["Recipe", "RECIPES", "train", "POSE_STRIDE", "heatmap_targets"]

_log = logging.getLogger(__name__)

#: Input pixels per heatmap cell of the pose net.
POSE_STRIDE = 4
_SIGMA = 1.0    # of the target Gaussians, in heatmap cells (simple_pose: 2 at 64 x 48)


@dataclass(frozen=True)
class Recipe:
    """How one task net is trained."""
    kind: str
    scenes: int
    steps: int
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


#: Net name -> its training recipe.
RECIPES = {
    "detector": Recipe("detection", scenes=2000, steps=1000),
    "segmenter": Recipe("segmentation", scenes=2000, steps=800),
    "pose": Recipe("pose", scenes=2000, steps=1000),
}
_BUILDERS = {"detector": nets.detector, "segmenter": nets.segmenter, "pose": nets.pose_net}


def heatmap_targets(keypoints, side, stride=POSE_STRIDE, sigma=_SIGMA):
    """Gaussian heatmaps ``(N, K, side/stride, side/stride)`` at ``(N, K, 2)`` keypoints."""
    cells = side // stride
    grid = np.arange(cells, dtype=np.float32)
    centre = (np.asarray(keypoints, np.float32) + 0.5) / stride - 0.5
    gx = np.exp(-(grid - centre[..., 0:1]) ** 2 / (2 * sigma ** 2))
    gy = np.exp(-(grid - centre[..., 1:2]) ** 2 / (2 * sigma ** 2))
    return gy[..., :, None] * gx[..., None, :]


def _detection_targets(net, data):
    """SSD's per-anchor class and box targets for every scene, as GluonCV trains SSD."""
    from gluoncv.model_zoo.ssd.target import SSDTargetGenerator
    side = IMAGE_SIZE["detection"]
    with autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, side, side)))
    generator = SSDTargetGenerator(iou_thresh=0.5, stds=(0.1, 0.1, 0.2, 0.2),
                                   negative_mining_ratio=-1)
    cls_targets, box_targets = [], []
    for boxes, ids in zip(data["boxes"], data["ids"]):
        cls_t, box_t, _ = generator(anchors, None, mx.nd.array(boxes[None]),
                                    mx.nd.array(ids[None, :, None].astype(np.float32)))
        cls_targets.append(cls_t[0].asnumpy())
        box_targets.append(box_t[0].asnumpy())
    return np.stack(cls_targets), np.stack(box_targets)


def _loss_function(name, net, data):
    """``(targets, loss(net, images, *targets))`` for net ``name`` on the rendered ``data``."""
    if name == "detector":
        from gluoncv.loss import SSDMultiBoxLoss
        multibox = SSDMultiBoxLoss()

        def detection_loss(images, cls_t, box_t):
            cls_preds, box_preds, _ = net(images)
            total, _, _ = multibox([cls_preds], [box_preds], [cls_t], [box_t])
            return total[0]
        return _detection_targets(net, data), detection_loss
    if name == "segmenter":
        softmax = gluon.loss.SoftmaxCrossEntropyLoss(axis=1)
        return (data["labels"],), lambda images, labels: softmax(net(images), labels)
    heatmaps = heatmap_targets(np.stack([k[0] for k in data["keypoints"]]),
                               IMAGE_SIZE["pose"])
    heatmaps /= heatmaps.sum(axis=(2, 3), keepdims=True)

    def heatmap_loss(images, target):
        # Cross-entropy of each heatmap's spatial softmax with the normalised Gaussian:
        # simple_pose's L2 to the Gaussian sits ~500 steps on the all-zero answer (measured:
        # loss 2.69 -> 2.23 in 900 steps), this learns from the first steps.
        scores = net(images)
        log_p = mx.nd.log_softmax(scores.reshape((0, 0, -1)), axis=-1)
        return -(log_p * target.reshape((0, 0, -1))).sum(axis=-1).mean(axis=1)
    return (heatmaps,), heatmap_loss


def train(name, recipe=None):
    """Train the task net ``name`` (``'detector'``, ``'segmenter'`` or ``'pose'``) from scratch.

    Parameters
    ----------
    name : str
    recipe : Recipe, optional
        Defaults to ``RECIPES[name]``.

    Returns
    -------
    mxnet.gluon.HybridBlock
        The trained net, hybridized, in inference mode.
    """
    recipe = recipe or RECIPES[name]
    started = time.time()
    data = render(recipe.kind, "train", 0, recipe.scenes)
    net = nets.initialize(_BUILDERS[name](), recipe.seed)
    net.hybridize(static_alloc=True)
    targets, loss_fn = _loss_function(name, net, data)
    _log.info("%s: %d scenes rendered in %.1f s", name, recipe.scenes, time.time() - started)
    schedule = _CosineSchedule(recipe.learning_rate, recipe.steps)
    trainer = gluon.Trainer(net.collect_params(), "adam",
                            {"learning_rate": recipe.learning_rate, "wd": recipe.weight_decay,
                             "lr_scheduler": schedule})
    rng = np.random.RandomState(recipe.seed)
    order = np.empty(0, np.int64)
    for step in range(recipe.steps):
        if len(order) < recipe.batch_size:
            order = np.concatenate([order, rng.permutation(recipe.scenes)])
        batch, order = order[:recipe.batch_size], order[recipe.batch_size:]
        arrays = [mx.nd.array(data["images"][batch])] + [mx.nd.array(t[batch]) for t in targets]
        with autograd.record():
            loss = loss_fn(*arrays)
        loss.backward()
        trainer.step(recipe.batch_size)
        if step % 100 == 0 or step == recipe.steps - 1:
            _log.info("%s step %d/%d loss %.4f (%.0f s)", name, step, recipe.steps,
                      float(loss.mean().asscalar()), time.time() - started)
    _log.info("%s trained in %.0f s", name, time.time() - started)
    net.hybridize()     # static_alloc reuses output buffers between calls: not for users
    return net


class _CosineSchedule(mx.lr_scheduler.LRScheduler):
    """Cosine decay from ``base_lr`` to 0 over ``steps`` updates, after 50 warm-up steps."""

    def __init__(self, base_lr, steps, warmup=50):
        super().__init__(base_lr)
        self.steps, self.warmup = steps, warmup

    def __call__(self, num_update):
        if num_update < self.warmup:
            return self.base_lr * (num_update + 1) / self.warmup
        progress = min(1.0, (num_update - self.warmup) / max(1, self.steps - self.warmup))
        return self.base_lr * 0.5 * (1 + np.cos(np.pi * progress))

