"""Written with gluon_quant at main 564cf79 (export format 1.0) to test reading old files."""
import mxnet as mx, numpy as np, sys
import gluon_quant as gq
from mxnet.gluon import nn
out = sys.argv[1]
mx.random.seed(3)
net = nn.HybridSequential(prefix="old_")
with net.name_scope():
    net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(4),
            nn.Flatten(), nn.Dense(10))
net.initialize(mx.init.Xavier())
rs = np.random.RandomState(0)
from gluon_quant.zoo.batchnorm import reestimate_batchnorm
reestimate_batchnorm(net, mx.nd.array(rs.rand(16, 1, 28, 28).astype("float32")))
batches = [rs.rand(8, 1, 28, 28).astype("float32") for _ in range(2)]
qnet = gq.quantize(net, batches, progress=False)
qnet.export(out + "/old")
x = rs.rand(4, 1, 28, 28).astype("float32")
np.savez(out + "/expected.npz", x=x, y=qnet(mx.nd.array(x)).asnumpy())
import json; print(json.load(open(out + "/old-meta.json"))["version"])
