"""Minimal reproductions of the failures the generated-architecture fuzz test found (#13).

Each entry is a few lines of Gluon that fail against the package as of the fuzz branch;
``python tests/fuzz/repros.py [NAME ...]`` runs each in its own process (several crash)
and prints how it ended. A repro prints ``OK`` when the package handles the net.
"""
import os
import subprocess
import sys

_PRELUDE = '''
import mxnet as mx, numpy as np, gluon_quant as gq
from mxnet.gluon import nn, rnn
def cosine(a, b):
    a, b = a.ravel().astype("float64"), b.ravel().astype("float64")
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
def data(*shape, n=5):
    return [np.random.RandomState(i).randn(*shape).astype("float32") for i in range(n)]
def ready(net, calib, init=None):
    """Initialize and run once, so that no parameter is left in deferred initialization."""
    net.initialize(init or mx.init.Uniform())
    net(mx.nd.array(calib[0]))
    return net
'''

REPROS = {
    # int8 LSTM: bias correction raises; without it, the first call raises. MXNet 1.9.1's
    # CachedOp builds a backward graph and _contrib_quantized_rnn has no FGradient.
    "lstm": '''
net = nn.HybridSequential()
net.add(rnn.LSTM(16, layout="NTC"), nn.Dense(10))
calib = data(8, 12, 8)
ready(net, calib)
try:
    gq.quantize(net, calib)
except gq.GluonQuantError as err:
    print("default:", type(err).__name__, str(err)[:90])
qnet = gq.quantize(net, calib, bias_correction=False)
qnet(mx.nd.array(calib[0]))
print("OK")
''',
    # An int8 FullyConnected whose output is both a net output and another layer's input:
    # segfault in post-quantization fusion (get_backend_symbol, MKLDNN_QUANTIZE).
    "fc_output_also_consumed": '''
class TwoOutputs(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body, self.head = nn.Dense(16), nn.Dense(10)
    def hybrid_forward(self, F, x):
        feat = self.body(x)
        return self.head(feat), feat
calib = data(8, 20)[:4]
gq.quantize(ready(TwoOutputs(), calib), calib)
print("OK")
''',
    # The same with an int8 elemwise_mul: "infer_type error", then heap corruption.
    "mul_output_also_consumed": '''
class GatedTwoOutputs(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a, self.b, self.head = nn.Dense(16), nn.Dense(16), nn.Dense(10)
    def hybrid_forward(self, F, x):
        feat = self.a(x) * F.sigmoid(self.b(x))
        return self.head(feat), feat
calib = data(8, 20)[:4]
gq.quantize(ready(GatedTwoOutputs(), calib), calib)
print("OK")
''',
    # Two ResNet basic blocks written with F.relu: abort or segfault (F.Activation(...,
    # act_type="relu") works; MXNet's quantize_net_v2 handles this net, cosine 0.9998).
    "resnet_blocks_with_F_relu": '''
class Residual(nn.HybridBlock):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1 = nn.Conv2D(channels, 3, padding=1, activation="relu")
            self.conv2 = nn.Conv2D(channels, 3, padding=1)
    def hybrid_forward(self, F, x):
        return F.relu(self.conv2(self.conv1(x)) + x)
net = nn.HybridSequential()
net.add(nn.Conv2D(8, 3, padding=1, activation="relu"), Residual(8), Residual(8),
        nn.GlobalAvgPool2D(), nn.Dense(10))
calib = data(8, 3, 16, 16)[:4]
gq.quantize(ready(net, calib), calib)
print("OK")
''',
    # int8 Convolution fused with GELU computes ReLU (MXNet's flow too); FC+GELU is fine.
    "conv_gelu": '''
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(8, 3, padding=1), nn.GELU())
calib = data(8, 3, 32, 32)
ready(net, calib, mx.init.Xavier())
qnet, x = gq.quantize(net, calib[:4]), mx.nd.array(calib[4])
ref, out = net(x).asnumpy(), qnet(x).asnumpy()
print("cosine %.4f, int8 min %.3f, fp32 min %.3f" % (cosine(ref, out), out.min(), ref.min()))
print("OK" if cosine(ref, out) > 0.999 else "FAIL")
''',
    # int8 elemwise_mul wraps around past its calibrated range (2.78 comes out as -2.72);
    # the default (clipping) calibrator makes that happen on every batch of real photos.
    "swish_mul_overflow": '''
from gluon_quant.zoo.gluoncv import sample_batches
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(16, 3, padding=1), nn.Swish(), nn.Conv2D(16, 3, padding=1))
calib = sample_batches(5, 8, size=32)
ready(net, calib, mx.init.Xavier())
x = mx.nd.array(calib[4])
cosines = [cosine(net(x).asnumpy(), gq.quantize(net, calib[:4], **kw)(x).asnumpy())
           for kw in ({}, {"exclude": ["elemwise_mul"]})]
print("cosine %.4f; with elemwise_mul in fp32 %.4f" % tuple(cosines))
print("OK" if cosines[0] > 0.999 else "FAIL")
''',
    # FullyConnected + LeakyReLU fused in int8 emits uint8: every negative output is 0.
    "fc_leaky_relu_uint8": '''
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Dense(16), nn.LeakyReLU(0.1), nn.Dense(10))
calib = data(64, 20)
ready(net, calib, mx.init.Xavier())
qnet, x = gq.quantize(net, calib[:4]), mx.nd.array(calib[4])
r = qnet.report()[0]
c = cosine(net(x).asnumpy(), qnet(x).asnumpy())
print(r.pattern, r.dtype, r.threshold, "cosine %.4f" % c)
print("OK" if r.dtype != "uint8" and c > 0.999 else "FAIL")
''',
    # Squeeze-excite with 1x1 convolutions, then global pooling: "Check failed:
    # !IsMKLDNNData()", reported as InputMismatchError (or a raw MXNetError at run time).
    "se_then_global_pool": '''
class SqueezeExcite(nn.HybridBlock):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.pool = nn.GlobalAvgPool2D()
            self.fc1 = nn.Conv2D(channels // 4, 1, activation="relu")
            self.fc2 = nn.Conv2D(channels, 1)
    def hybrid_forward(self, F, x):
        return F.broadcast_mul(x, F.sigmoid(self.fc2(self.fc1(self.pool(x)))))
net = nn.HybridSequential()
net.add(nn.Conv2D(16, 3, padding=1), SqueezeExcite(16), nn.GlobalAvgPool2D(), nn.Dense(10))
calib = data(8, 3, 16, 16)[:4]
gq.quantize(ready(net, calib), calib)
print("OK")
''',
    # A Conv1D net whose parameters are still in deferred initialization (never run):
    # ValueError "Cannot reshape array of size 48 into shape ()" from graph/rewrites.py:68
    # (the same net run once, or a Conv2D net never run, quantizes).
    "conv1d_deferred_init": '''
net = nn.HybridSequential()
net.add(nn.Conv1D(8, 3), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(10))
net.initialize()
gq.quantize(net, data(8, 2, 32)[:4])
print("OK")
''',
    # One pooling block called twice: ValueError "There are multiple outputs with name".
    "pool_block_called_twice": '''
class Net(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1, self.conv2 = nn.Conv2D(8, 3), nn.Conv2D(8, 3)
            self.pool, self.head = nn.GlobalAvgPool2D(), nn.Dense(10)
    def hybrid_forward(self, F, x):
        return self.head(self.pool(self.conv1(x)) + self.pool(self.conv2(x)))
calib = data(8, 3, 16, 16)[:4]
gq.quantize(ready(Net(), calib), calib)
print("OK")
''',
    # The doctor on a Conv1D+BatchNorm net: "Shape inconsistent, Provided = [8,2,3],
    # inferred shape=(8,2,1,3)" in its fp32 pass.
    "compare_conv1d_bn": '''
from gluon_quant.debug import compare
net = nn.HybridSequential()
net.add(nn.Conv1D(8, 3), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(10))
calib = data(8, 2, 32)
ready(net, calib)
compare(gq.quantize(net, calib[:4]), calib[4:])
print("OK")
''',
    # The doctor on a Dense+BatchNorm net: "The graph needs parameters ... folded_bias".
    "compare_dense_bn": '''
from gluon_quant.debug import compare
net = nn.HybridSequential()
net.add(nn.Dense(16), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(10))
calib = data(8, 20)
ready(net, calib)
compare(gq.quantize(net, calib[:4]), calib[4:])
print("OK")
''',
    # Two dropouts in a row after the input (seeds 1530, 1544): oneDNN's fusion left a
    # variable reading the input, "inputs that are neither network inputs nor parameters".
    "dropouts_after_input": '''
net = nn.HybridSequential()
net.add(nn.Dropout(0.5), nn.Dropout(0.5), nn.Dense(128, flatten=False))
calib = data(32, 12, 64)
gq.quantize(ready(net, calib), calib[:4])
print("OK")
''',
}


def run(name, timeout=300):
    """Run one repro in a child process; returns ``(ending, last lines of its output)``."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        proc = subprocess.run([sys.executable, "-c", _PRELUDE + REPROS[name]],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "hang", ""
    lines = [l for l in (proc.stdout + proc.stderr).splitlines()
             if l.strip() and not l.startswith("[")]
    if proc.returncode < 0 or proc.returncode == 255 and "Segmentation fault" in proc.stderr:
        ending = "crash"
    elif proc.returncode:
        ending = "raises"
    else:
        ending = "OK" if lines and lines[-1] == "OK" else "wrong"
    return ending, "\n".join(lines[-3:])


def main(names):
    for name in names or REPROS:
        ending, tail = run(name)
        print("%-28s %-6s %s" % (name, ending, tail.replace("\n", "\n" + " " * 36)))


if __name__ == "__main__":
    main(sys.argv[1:])
