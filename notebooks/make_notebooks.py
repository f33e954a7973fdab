"""Write the tutorial notebooks of this folder (run: python notebooks/make_notebooks.py).

The notebooks are kept as code here so that they are reviewed like code; the test suite
(tests/test_notebooks.py) executes every ``*.ipynb`` of this folder.
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text):
    return new_markdown_cell(text.strip())


def code(text):
    return new_code_cell(text.strip())


QUICKSTART = [
    md("""
# 1. Quick start: a GluonCV model in int8 in one call

This notebook runs offline. Without internet the GluonCV weights are random
(`pretrained=False`) and BatchNorm statistics are re-estimated on the calibration data, so
the *agreement* between fp32 and int8 is meaningful even though the classes are not.
With internet, pass `pretrained=True`.
"""),
    code("""
import os, tempfile
import mxnet as mx
import numpy as np
import gluon_quant as gq
from gluon_quant import zoo

calib = zoo.sample_batches(num_batches=2, batch_size=8)   # crops of real photos, 224x224
qnet = zoo.get_model("resnet18_v1", calib_data=calib)      # fp32 net + calibration + int8
print(type(qnet).__name__, "- fp32 net:", type(qnet.net).__name__)
"""),
    md("The same thing for any Gluon `HybridBlock` you own is `gq.quantize(net, calib_data)`."
       " The report answers *was my conv+bn fused? which layers are int8, and why?*"),
    code("""
report = qnet.report()
print(str(report)[:1500])
print("conv/dense layers in int8:", report.coverage())
"""),
    md("## fp32 vs int8 on the same images"),
    code("""
x = mx.nd.array(calib[0])
fp32, int8 = qnet.net(x).asnumpy(), qnet(x).asnumpy()
cos = (fp32 * int8).sum() / np.linalg.norm(fp32) / np.linalg.norm(int8)
print("logit cosine %.4f, top-1 agreement %.2f" % (cos, (fp32.argmax(1) == int8.argmax(1)).mean()))
"""),
    md("## Export with int8 weights, and load it back"),
    code("""
out = tempfile.mkdtemp()
paths = qnet.export(os.path.join(out, "resnet18_int8"))
for role, path in paths.items():
    print("%-7s %-40s %6.2f MB" % (role, os.path.basename(path), os.path.getsize(path) / 1e6))

loaded = gq.QuantizedSymbolBlock.imports(os.path.join(out, "resnet18_int8"))
print("max |loaded - in memory| =", float(mx.nd.abs(loaded(x) - qnet(x)).max().asscalar()))
"""),
    md("""
## The calibration table is an artifact too

Save it, and quantize again later without any data (it is refused for another graph).
"""),
    code("""
table_path = os.path.join(out, "calib.json")
qnet.calibration_table.save(table_path)
again = gq.quantize(qnet.net, calib_table=gq.CalibrationTable.load(table_path))
print("same outputs:", bool((again(x) == qnet(x)).asnumpy().all()))
"""),
    md("""
## Pictures: histograms with each calibrator's threshold

All methods are scored from the one calibration pass (no new pass over the data).
From the command line:
`gluon-quant quantize resnet18_v1 --no-pretrained --calib DIR --out PREFIX --plot DIR`.
"""),
    code("""
from gluon_quant import plot
pngs = plot.plot_calibration(qnet, os.path.join(out, "plots"), max_plots=3)
print([os.path.basename(p) for p in pngs])
from IPython.display import Image
Image(filename=pngs[1])
"""),
]

CUSTOM = [
    md("""
# 2. Writing your own Calibrator

A calibrator collects statistics (`collect`) and turns them into ranges (`compute`). The
built-in ones keep a mergeable histogram per tensor; a subclass of `HistogramCalibrator`
only says how to pick the threshold `t` of one tensor. No registration step.
"""),
    code("""
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
import gluon_quant as gq
from gluon_quant.calib import HistogramCalibrator
from gluon_quant.datasets import load_small_images

data = load_small_images(max_train=4000)          # Fashion-MNIST, else MNIST-5k
train_x, train_y = data["train"]
test_x, test_y = data["test"]
print(data["name"], train_x.shape, test_x.shape)
"""),
    code("""
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
        nn.Conv2D(32, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(64, activation="relu"), nn.Dense(10))
net.initialize(mx.init.Xavier())
net.hybridize()
trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 2e-3})
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
loader = gluon.data.DataLoader(gluon.data.ArrayDataset(train_x, train_y.astype("float32")),
                               batch_size=128, shuffle=True)
for x, y in loader:
    with autograd.record():
        loss = loss_fn(net(x), y)
    loss.backward()
    trainer.step(x.shape[0])

def accuracy(model):
    out = model(mx.nd.array(test_x[:2000])).argmax(axis=1).asnumpy()
    return float((out == test_y[:2000]).mean())

print("fp32 accuracy %.4f" % accuracy(net))
"""),
    md("""
## A calibrator that clips a fixed fraction of the largest values

`stats.magnitude_histogram()` returns counts of `|x|` in bins of width `width`; the
threshold is returned in the tensor's units. The base class handles uint8 vs int8,
all-zero and constant tensors, and never lets `t` exceed the observed maximum.
"""),
    code("""
class TailCalibrator(HistogramCalibrator):
    \"\"\"Clip the largest `tail` fraction of |x|.\"\"\"

    method = "tail"

    def __init__(self, *, tail=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.tail = tail

    def _options(self):
        return dict(super()._options(), tail=self.tail)

    def _threshold(self, stats, unsigned):
        counts, width = stats.magnitude_histogram()
        kept = np.cumsum(counts) / counts.sum()
        return (int(np.searchsorted(kept, 1.0 - self.tail)) + 1) * width

calib = [train_x[i:i + 64] for i in range(0, 512, 64)]
for calibrator in ["minmax", "mse", TailCalibrator(tail=1e-3)]:
    qnet = gq.quantize(net, calib, calibrator=calibrator)
    print("%-28s int8 accuracy %.4f" % (calibrator, accuracy(qnet)))
"""),
    md("## Its state saves as JSON, and one pass of statistics can be scored by any method"),
    code("""
import json
cal = qnet.calibrator
state = json.loads(json.dumps(cal.state_dict()))          # JSON-safe
restored = TailCalibrator.from_state_dict(state)
print("restored equals original:", restored.compute() == cal.compute())
entropy = cal.rescore(gq.EntropyCalibrator).compute()      # no new pass over the data
name = cal.names[1]
print(name, "tail:", cal.compute()[name], "entropy:", entropy[name])
"""),
    code("""
import os, tempfile
from gluon_quant import plot
pngs = plot.plot_calibration(qnet, tempfile.mkdtemp(), max_plots=2)
from IPython.display import Image
Image(filename=pngs[2])
"""),
]

DEBUG = [
    md("""
# 3. Debugging an accuracy drop: the doctor and tuning

We build a network whose first layer sees rare, extreme outliers: min-max calibration
then wastes almost all int8 levels on them. The doctor (`gq.debug`) finds the layer, its
checks say what to do, and `gq.tune` fixes it automatically within a tolerance.
"""),
    code("""
import mxnet as mx
import numpy as np
from mxnet.gluon import nn
import gluon_quant as gq
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

rs = np.random.RandomState(0)
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
        nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
        nn.GlobalAvgPool2D(), nn.Dense(10))
net.initialize(mx.init.Xavier())
images = rs.rand(64, 3, 16, 16).astype("float32")
images[0, :, 0, 0] = 400.0                        # one pixel far outside the data's range
reestimate_batchnorm(net, mx.nd.array(images[1:]))
calib = [images[i:i + 16] for i in range(0, 64, 16)]
clean = [rs.rand(16, 3, 16, 16).astype("float32") for _ in range(4)]

qnet = gq.quantize(net, calib, calibrator="minmax")
"""),
    code("""
result = gq.debug.compare(qnet, clean)
print(result)
"""),
    code("""
from gluon_quant import plot
import tempfile, os
png = plot.plot_sqnr(result, os.path.join(tempfile.mkdtemp(), "sqnr.png"))
from IPython.display import Image
Image(filename=png)
"""),
    md("""
Is this the price of 8-bit activations, or does a kernel lose more? The activation floor
runs the fp32 net with every calibrated tensor rounded to 8 bits. Here even the floor is
far from fp32: the ranges themselves lose the signal (the outlier stretched the input's
range so far that ordinary pixels round to 0), so no kernel could do better with them.
"""),
    code("""
print(gq.debug.activation_floor(qnet, clean))
"""),
    md("The checks name the pitfalls and the fix:"),
    code("""
for finding in gq.debug.run_checks(qnet, log=False):
    print("-", finding)
"""),
    md("""
## Tuning: calibrators and granularity first, then fp32 fallback of the most sensitive layers

`eval_fn` is any score of a model (higher is better by default); here, agreement of the
top-1 class with fp32 on clean data.
"""),
    code("""
reference = [net(mx.nd.array(b)).argmax(axis=1).asnumpy() for b in clean]

def agreement(model):
    return float(np.mean([(model(mx.nd.array(b)).argmax(axis=1).asnumpy() == r).mean()
                          for b, r in zip(clean, reference)]))

print("min-max int8 agreement: %.3f" % agreement(qnet))
tuned = gq.tune(net, calib, agreement, tolerance=0.02, calibrator="minmax", max_trials=6)
print(tuned)
"""),
]

DETECTION = [
    md("""
# 4. Detection: a GluonCV SSD in int8

Offline, the backbone is random (`pretrained_base=False`) and BatchNorm is re-estimated on
the calibration data; with internet pass `pretrained=True`. The detector preset keeps box
decoding and NMS in fp32 (see the report). A small 256x256 input keeps this fast.
"""),
    code("""
import mxnet as mx
import numpy as np
import gluon_quant as gq
from gluon_quant import zoo

from gluoncv import model_zoo
from gluon_quant.cli_models import initialize_random
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

calib = zoo.sample_batches(num_batches=2, batch_size=2, size=256)
net = model_zoo.get_model("ssd_512_resnet50_v1_voc", pretrained=False, pretrained_base=False)
initialize_random(net)
reestimate_batchnorm(net, mx.nd.array(calib[0]))
qnet = gq.quantize(net, calib)          # the GluonCV detector preset is applied automatically
report = qnet.report()
print("conv/dense layers in int8:", report.coverage())
print("\\n".join("%s: %s" % (r.layer, r.reason) for r in report if not r.quantized)[:1500])
"""),
    code("""
x = mx.nd.array(calib[0][:1])
ids_f, scores_f, boxes_f = qnet.net(x)
ids_q, scores_q, boxes_q = qnet(x)
k = 10
print("top-%d classes fp32:" % k, ids_f[0, :k, 0].asnumpy().astype(int))
print("top-%d classes int8:" % k, ids_q[0, :k, 0].asnumpy().astype(int))
a, b = scores_f.asnumpy().ravel(), scores_q.asnumpy().ravel()
print("score cosine: %.4f" % (a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
"""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_custom_calibrator.ipynb": CUSTOM,
    "03_debug_accuracy.ipynb": DEBUG,
    "04_detection.ipynb": DETECTION,
}


def main():
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        nbformat.validate(nb)
        nbformat.write(nb, os.path.join(HERE, name))
        print("wrote", name)


if __name__ == "__main__":
    main()
