"""Real-data accuracy of sequence models: an LSTM and a small Transformer read each image of
the installed real dataset (MNIST-5k digits, or Fashion-MNIST) row by row as a 28-step
sequence, are trained here in seconds, and keep their fp32 test accuracy in int8 within
half a point with every built-in calibrator."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_quant as gq

from _nets import RowLSTM, RowTransformer
from conftest import coverage

CALIBRATORS = ("mse", "entropy", "minmax", "percentile")


def _accuracy(net, images, labels, batch=500):
    correct = 0
    for i in range(0, len(images), batch):
        out = net(mx.nd.array(images[i:i + batch]))
        correct += int((out.argmax(axis=1).asnumpy() == labels[i:i + batch]).sum())
    return correct / len(images)


def _train(cls, data, epochs):
    mx.random.seed(0)
    np.random.seed(0)
    net = cls()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    images, labels = data["train"]
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 3e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(images, labels.astype("float32")),
                                   batch_size=64, shuffle=True)
    for _ in range(epochs):
        for x, y in loader:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
    return net


@pytest.fixture(scope="module", params=[(RowLSTM, 3), (RowTransformer, 4)],
                ids=["lstm", "transformer"])
def trained(request, small_data):
    cls, epochs = request.param
    net = _train(cls, small_data, epochs)
    test_x, test_y = small_data["test"]
    images = small_data["train"][0]
    return {"net": net, "fp32": _accuracy(net, test_x, test_y), "test": (test_x, test_y),
            "calib": [images[i:i + 64] for i in range(0, 512, 64)]}


@pytest.mark.parametrize("calibrator", CALIBRATORS)
def test_int8_accuracy_within_half_a_point(trained, calibrator):
    assert trained["fp32"] > 0.75        # the model learned something to lose
    qnet = gq.quantize(trained["net"], trained["calib"], calibrator=calibrator,
                       progress=False)
    int8 = _accuracy(qnet, *trained["test"])
    assert abs(int8 - trained["fp32"]) <= 0.005, (calibrator, trained["fp32"], int8)
    report = qnet.report()
    assert coverage(report)[0] == coverage(report)[1]      # every dense layer in int8
    for layer in report:
        if layer.op == "RNN":
            assert not layer.quantized and "opt-in" in layer.reason
        if layer.op in ("LayerNorm", "softmax"):
            assert not layer.quantized and "no int8" in layer.reason
