"""int8 on any net: gluon_quant and MXNet's own flow over fourteen families of user-written nets.

One representative net per family, written the way Gluon users write them (the blocks of
the fuzz test's generator, ``tests/fuzz/blocks.py``), with realistic inputs for its kind
(``tests/fuzz/data.py``): Xavier weights, trained-like biases, BatchNorm statistics set
from the calibration batches.

For each family this measures, in a child process per family and flow (so that a crash
of either flow is a row of the table, not the end of the benchmark):

* ``fp32``   the net hybridized with ``static_alloc`` / ``static_shape``;
* ``gq``     ``gluon_quant.quantize(net, calib)`` with the defaults;
* ``mxnet``  ``mxnet.contrib.quantization.quantize_net_v2(net, quantized_dtype='auto',
  calib_mode='naive', calib_data=DataLoader(...), num_calib_examples=..., ctx=mx.cpu())``.

Columns: milliseconds per batch (median over ``--repeat`` rounds, fp32 and int8 timed
round-robin in the same process), the speed-up over fp32 (fp32 time / int8 time), the
lowest cosine over the net's outputs on held-out batches, and the Convolution /
FullyConnected / RNN layers that run in int8. The speed depends on ``OMP_NUM_THREADS``.

Usage::

    python benchmarks/any_net.py                 # every family
    python benchmarks/any_net.py --quick         # smaller batches, fewer repeats
    python benchmarks/any_net.py --families lstm gru --repeat 30
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The families are built from the fuzz test's user-style blocks and realistic inputs.
sys.path.insert(0, os.path.join(ROOT, "tests"))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet.gluon import nn, rnn  # noqa: E402

from fuzz import blocks, data, netgen  # noqa: E402

#: Layers counted in the int8 column (a hand-written ``F.dot(x, W)`` is a dense layer).
QUANTIZABLE_OPS = ("Convolution", "FullyConnected", "RNN", "dot")
#: MXNet operators that run a Convolution / FullyConnected / RNN in int8.
_MXNET_INT8_OPS = ("_contrib_quantized_conv", "_contrib_quantized_fully_connected",
                   "_contrib_quantized_rnn")


# ------------------------------------------------------------------- the families
def _conv_bn_relu(conv):
    seq = nn.HybridSequential()
    seq.add(conv, nn.BatchNorm(), nn.Activation("relu"))
    return seq


def text_cnn(rows, calib_rows):
    """Embedding + Conv1D over time + max over time + Dense (a Kim-style text classifier)."""
    rng = np.random.RandomState(1)
    net = nn.HybridSequential()
    conv = nn.HybridSequential()
    conv.add(_conv_bn_relu(nn.Conv1D(64, 5, padding=2, use_bias=False)),
             _conv_bn_relu(nn.Conv1D(64, 3, padding=1, use_bias=False)),
             nn.GlobalMaxPool1D())
    net.add(nn.Embedding(5000, 64), blocks.TemporalConv(conv), nn.Flatten(),
            nn.Dropout(0.3), nn.Dense(4))
    return net, "tokens", data.token_data(rng, rows, 64, 5000)


def audio_cnn(rows, calib_rows):
    """A 1-D CNN on raw waveforms (M5-style): strided Conv1D, BN, ReLU, pooling."""
    rng = np.random.RandomState(2)
    net = nn.HybridSequential()
    net.add(_conv_bn_relu(nn.Conv1D(32, 80, strides=4, padding=38, use_bias=False)),
            nn.MaxPool1D(4))
    for channels in (32, 64, 64):
        net.add(_conv_bn_relu(nn.Conv1D(channels, 3, padding=1, use_bias=False)),
                nn.MaxPool1D(2))
    net.add(nn.GlobalAvgPool1D(), nn.Dense(10))
    return net, "signal", data.audio_data(rng, rows, 1, 4000)


def tabular_mlp(rows, calib_rows):
    """Dense-BN-ReLU x3 + Dense on standardised mixed columns."""
    rng = np.random.RandomState(3)
    net = nn.HybridSequential()
    for units in (256, 128, 64):
        net.add(nn.Dense(units, use_bias=False), nn.BatchNorm(), nn.Activation("relu"))
    net.add(nn.Dense(2))
    return net, "tabular", data.tabular_data(rng, rows, calib_rows, 48)


def _res_block(channels, stride, in_channels):
    body = nn.HybridSequential()
    body.add(_conv_bn_relu(nn.Conv2D(channels, 3, strides=stride, padding=1, use_bias=False)),
             nn.Conv2D(channels, 3, padding=1, use_bias=False), nn.BatchNorm())
    shortcut = None
    if stride != 1 or channels != in_channels:
        shortcut = nn.HybridSequential()
        shortcut.add(nn.Conv2D(channels, 1, strides=stride, use_bias=False), nn.BatchNorm())
    return blocks.ResidualBlock(body, shortcut)          # relu(body(x) + shortcut(x))


def manual_mlp(rows, calib_rows):
    """Hand-written linear layers (``F.dot(x, W) + b``, relu) x3 + ``F.dot`` head."""
    rng = np.random.RandomState(3)
    net = nn.HybridSequential()
    for in_units, units in ((48, 512), (512, 512), (512, 256)):
        net.add(blocks.ManualDense(in_units, units))
    net.add(nn.Dense(2))
    return net, "tabular", data.tabular_data(rng, rows, calib_rows, 48)


def frozen_bn_cnn(rows, calib_rows):
    """A detectron-style backbone: Conv2D + frozen BatchNorm (``x * scale + shift``) + ReLU."""
    net = nn.HybridSequential()
    for channels, stride in ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2)):
        net.add(nn.Conv2D(channels, 3, strides=stride, padding=1, use_bias=False),
                blocks.FrozenBatchNorm(channels), nn.Activation("relu"))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net, "image", data.image_data(6, rows, 64)


def prelu_cnn(rows, calib_rows):
    """A face-recognition style backbone: Conv2D + BatchNorm + PReLU, per-channel slopes
    (trained ones differ by channel) in the first blocks, Gluon's one shared slope after."""
    net = nn.HybridSequential()
    for channels, stride, shared in ((32, 1, False), (64, 2, False), (64, 1, False),
                                     (128, 2, True), (128, 1, True)):
        net.add(nn.Conv2D(channels, 3, strides=stride, padding=1, use_bias=False),
                nn.BatchNorm(), nn.PReLU() if shared else nn.PReLU(
                    mx.init.Uniform(0.25), in_channels=channels))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net, "image", data.image_data(8, rows, 64)


def norm_cnn(rows, calib_rows):
    """Convolutions normalized without BatchNorm, as style-transfer, GAN and ConvNeXt-style
    nets write them: InstanceNorm, GroupNorm and a channels-first LayerNorm after them."""
    net = nn.HybridSequential()
    for channels, stride, norm in (
            (32, 1, lambda c: nn.InstanceNorm(in_channels=c)),
            (64, 2, lambda c: nn.GroupNorm(num_groups=8)),
            (64, 1, lambda c: nn.LayerNorm(axis=1, in_channels=c)),
            (128, 2, lambda c: nn.InstanceNorm(in_channels=c)),
            (128, 1, lambda c: nn.GroupNorm(num_groups=16))):
        net.add(nn.Conv2D(channels, 3, strides=stride, padding=1), norm(channels),
                nn.Activation("relu"))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net, "image", data.image_data(9, rows, 64)


def residual_cnn(rows, calib_rows):
    """A small ResNet whose blocks end in ``F.relu(body(x) + shortcut(x))``."""
    net = nn.HybridSequential()
    net.add(_conv_bn_relu(nn.Conv2D(32, 3, padding=1, use_bias=False)))
    channels = 32
    for out, stride in ((32, 1), (64, 2), (64, 1), (128, 2)):
        net.add(_res_block(out, stride, channels))
        channels = out
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net, "image", data.image_data(4, rows, 64)


def mobile_se(rows, calib_rows):
    """MobileNetV3-style: depthwise conv, hard-swish, squeeze-excite, pointwise conv."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, strides=2, padding=1, use_bias=False), nn.BatchNorm(),
            blocks.HardSwish())
    channels = 16
    for expand, out, stride in ((64, 24, 2), (72, 24, 1), (96, 40, 2), (120, 40, 1)):
        unit = nn.HybridSequential()
        unit.add(nn.Conv2D(expand, 1, use_bias=False), nn.BatchNorm(), blocks.HardSwish(),
                 nn.Conv2D(expand, 3, strides=stride, padding=1, groups=expand,
                           use_bias=False), nn.BatchNorm(), blocks.HardSwish(),
                 blocks.SqueezeExcite(expand, 2, dense=False, hard=True),
                 nn.Conv2D(out, 1, use_bias=False), nn.BatchNorm())
        net.add(blocks.ResidualBlock(unit, relu=False) if stride == 1 and out == channels
                else unit)
        channels = out
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net, "image", data.image_data(5, rows, 64)


def unet(rows, calib_rows):
    """A two-level U-Net with Conv2DTranspose upsampling and a per-pixel head."""
    def cbr(channels):
        return _conv_bn_relu(nn.Conv2D(channels, 3, padding=1, use_bias=False))

    def up(channels):
        seq = nn.HybridSequential()
        seq.add(nn.Conv2DTranspose(channels, 2, strides=2, use_bias=False),
                nn.Activation("relu"))
        return seq

    inner = blocks.UNetLevel(cbr(32), cbr(64), up(32), cbr(32))
    net = nn.HybridSequential()
    net.add(blocks.UNetLevel(cbr(16), inner, up(16), cbr(16)), nn.Conv2D(3, 1))
    return net, "image", data.image_data(6, rows, 64)


def lstm_classifier(rows, calib_rows):
    """Embedding + LSTM + the last step + Dense."""
    rng = np.random.RandomState(7)
    net = nn.HybridSequential()
    net.add(nn.Embedding(5000, 64), rnn.LSTM(128, layout="NTC"), blocks.LastStep(),
            nn.Dense(4))
    return net, "tokens", data.token_data(rng, rows, 32, 5000)


def gru_regressor(rows, calib_rows):
    """Two-layer GRU over sensor series, mean over time, Dense."""
    rng = np.random.RandomState(8)
    net = nn.HybridSequential()
    net.add(rnn.GRU(64, num_layers=2, layout="NTC"), blocks.MeanOverTime(), nn.Dense(1))
    return net, "sequence", data.sensor_data(rng, rows, calib_rows, 32, 16)


def attention(rows, calib_rows):
    """Two hand-written transformer layers (multi-head self-attention, feed-forward)."""
    rng = np.random.RandomState(9)
    net = nn.HybridSequential()
    net.add(nn.Dense(64, flatten=False), blocks.PositionalEmbedding(32, 64))
    for _ in range(2):
        net.add(blocks.SelfAttention(64, heads=4),
                blocks.FeedForward(64, 256, nn.GELU()), nn.LayerNorm())
    net.add(blocks.MeanOverTime(), nn.Dense(5))
    return net, "sequence", data.sensor_data(rng, rows, calib_rows, 32, 16)


def conv3d(rows, calib_rows):
    """A C3D-style video net: Conv3D-BN-ReLU, 3-D pooling, global pooling, Dense."""
    net = nn.HybridSequential()
    net.add(_conv_bn_relu(nn.Conv3D(16, 3, padding=1, use_bias=False)),
            nn.MaxPool3D((1, 2, 2)),
            _conv_bn_relu(nn.Conv3D(32, 3, padding=1, use_bias=False)),
            nn.MaxPool3D(2),
            _conv_bn_relu(nn.Conv3D(64, 3, padding=1, use_bias=False)),
            nn.GlobalAvgPool3D(), nn.Dense(10))
    return net, "video", data.video_data(10, rows, frames=8, size=32)


FAMILIES = {"text_cnn": text_cnn, "audio_cnn": audio_cnn, "tabular_mlp": tabular_mlp,
            "manual_mlp": manual_mlp, "frozen_bn_cnn": frozen_bn_cnn, "prelu_cnn": prelu_cnn,
            "norm_cnn": norm_cnn, "residual_cnn": residual_cnn, "mobile_se": mobile_se,
            "unet": unet, "lstm": lstm_classifier, "gru": gru_regressor,
            "attention": attention, "conv3d": conv3d}


def build(family, batch):
    """The family's net, initialized, with its calibration and held-out batches."""
    rows = batch * (netgen.CALIB_BATCHES + netgen.HELD_OUT_BATCHES)
    net, kind, inputs = FAMILIES[family](rows, batch * netgen.CALIB_BATCHES)
    return netgen.make_case(net, kind, inputs, seed=0, batch=batch)


# ------------------------------------------------------------------- measuring
def _outputs(out):
    return [o.asnumpy() for o in (out if isinstance(out, (list, tuple)) else [out])]


def _lowest_cosine(refs, outs):
    def cos(a, b):
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

    return min(cos(np.concatenate([r[i].ravel() for r in refs]),
                   np.concatenate([o[i].ravel() for o in outs]))
               for i in range(len(refs[0])))


def _time_pair(fp32, int8, x, repeat, min_seconds=0.02):
    """Median seconds per call of both blocks, timed round-robin."""
    inner = {}
    for key, block in (("fp32", fp32), ("int8", int8)):
        start = time.perf_counter()
        _outputs(block(x))
        inner[key] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    samples = {"fp32": [], "int8": []}
    for _ in range(repeat):
        for key, block in (("fp32", fp32), ("int8", int8)):
            start = time.perf_counter()
            for _ in range(inner[key]):
                out = block(x)
            _outputs(out)
            samples[key].append((time.perf_counter() - start) / inner[key])
    return statistics.median(samples["fp32"]), statistics.median(samples["int8"])


def _quantize_gq(case):
    import gluon_quant as gq
    qnet = gq.quantize(case.net, case.calib)
    layers = [r for r in qnet.report() if r.op in QUANTIZABLE_OPS]
    return qnet, (sum(r.quantized for r in layers), len(layers))


def _quantize_mxnet(case):
    from mxnet.contrib import quantization as mxq
    calib = np.concatenate(case.calib)
    loader = mx.gluon.data.DataLoader(
        mx.gluon.data.ArrayDataset(calib, np.zeros(len(calib), np.float32)),
        batch_size=len(case.calib[0]))
    case.net.hybridize()                          # quantize_net_v2 exports the net
    qnet = mxq.quantize_net_v2(case.net, quantized_dtype="auto", calib_mode="naive",
                               calib_data=loader, num_calib_examples=len(calib),
                               ctx=mx.cpu())
    nodes = json.loads(qnet(mx.sym.var("data")).tojson())["nodes"]
    quantized = sum(1 for n in nodes if n["op"] in _MXNET_INT8_OPS or (
        n["op"] in ("_sg_mkldnn_conv", "_sg_mkldnn_fully_connected")
        and str(n.get("attrs", {}).get("quantized", "")).lower() == "true"))
    return qnet, (quantized, _count_layers(case))


def _count_layers(case):
    out = case.net(mx.sym.var("data"))
    out = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    return sum(1 for n in json.loads(out.tojson())["nodes"] if n["op"] in QUANTIZABLE_OPS)


def _short_error(err):
    """``Type: message`` on one line; for MXNet errors, the line that says what failed."""
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    useful = [l for l in lines if "Check failed" in l or "Error in operator" in l]
    text = (useful or [l for l in lines if not l.startswith(("Traceback", "File"))]
            or [""])[0]
    return ("%s: %s" % (type(err).__name__, text))[:200]


def run_child(flow, family, batch, repeat, report):
    """In the child: quantize one family's net with one flow; return a JSON-safe dict.

    ``report(row)`` is called with the fp32 time before quantizing, so that a crash of
    the flow still leaves the fp32 column.
    """
    case = build(family, batch)
    refs = [_outputs(case.net(mx.nd.array(x))) for x in case.held_out]
    fp32 = build(family, batch).net             # a copy that no flow traces
    fp32.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.array(case.held_out[0])
    row = {"family": family, "kind": case.kind, "flow": flow,
           "input": "x".join(str(d) for d in case.input_shape),
           "fp32_ms": 1e3 * _time_pair(fp32, fp32, x, repeat)[0]}
    report(row)
    try:
        qnet, layers = (_quantize_gq if flow == "gq" else _quantize_mxnet)(case)
        outs = [_outputs(qnet(mx.nd.array(x))) for x in case.held_out]
    except Exception as err:                # noqa: BLE001 - a row of the table
        row["error"] = _short_error(err)
        return row
    qnet.hybridize(static_alloc=True, static_shape=True)
    fp32_s, int8_s = _time_pair(fp32, qnet, x, repeat)
    row.update(fp32_ms=1e3 * fp32_s, int8_ms=1e3 * int8_s, speedup=fp32_s / int8_s,
               cosine=_lowest_cosine(refs, outs), layers=list(layers))
    return row


# ------------------------------------------------------------------- the parent
def _run(flow, family, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", flow, family,
           "--batch", str(args.batch), "--repeat", str(args.repeat)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"family": family, "flow": flow, "error": "hang (over %ds)" % args.timeout}
    # MXNet's SIGSEGV handler prints "Segmentation fault: 11" and exits with status 255
    partial = {"family": family, "flow": flow}
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
        if line.startswith("FP32 "):
            partial = json.loads(line[5:])
    tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or [""]
    how = ("killed by signal %d" % -proc.returncode if proc.returncode < 0
           else "exit status %d" % proc.returncode)
    partial["error"] = "crash (%s): %s" % (how, tail[0][:120])
    return partial


def _cells(row):
    if "error" in row:
        return ["-", "-", "-", "-"], row["error"]
    return ["%.2f" % row["int8_ms"], "%.2fx" % row["speedup"], "%.4f" % row["cosine"],
            "%d/%d" % tuple(row["layers"])], ""


def table(results):
    """The printed table: one line per family, gq's columns then MXNet's."""
    head = ["family", "input", "fp32 ms", "gq ms", "gq x", "gq cos", "gq int8",
            "mx ms", "mx x", "mx cos", "mx int8"]
    lines, notes = [], []
    for family, rows in results.items():
        gq_cells, gq_note = _cells(rows["gq"])
        mx_cells, mx_note = _cells(rows["mxnet"])
        fp32 = rows["gq"].get("fp32_ms") or rows["mxnet"].get("fp32_ms")
        line = [family, rows["gq"].get("input") or rows["mxnet"].get("input") or "?",
                "%.2f" % fp32 if fp32 else "-"] + gq_cells + mx_cells
        lines.append(line)
        for flow, note in (("gq", gq_note), ("mxnet", mx_note)):
            if note:
                notes.append("%s / %s: %s" % (family, flow, note))
    widths = [max(len(str(r[i])) for r in lines + [head]) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths)))
           for r in [head] + lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out + [""] + notes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES),
                        choices=sorted(FAMILIES))
    parser.add_argument("--batch", type=int, default=16, help="rows per batch (16)")
    parser.add_argument("--repeat", type=int, default=20, help="timed rounds (20)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per child (600)")
    parser.add_argument("--quick", action="store_true",
                        help="batch 8, 5 timed rounds, 300 s per child")
    parser.add_argument("--child", nargs=2, metavar=("FLOW", "FAMILY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        flow, family = args.child
        row = run_child(flow, family, args.batch, args.repeat,
                        lambda partial: print("FP32 " + json.dumps(partial), flush=True))
        print("ROW " + json.dumps(row), flush=True)
        return
    if args.quick:
        args.batch, args.repeat, args.timeout = 8, 5, 300
    print("int8 vs fp32 per family: batch %d, median of %d rounds, OMP_NUM_THREADS=%s"
          % (args.batch, args.repeat, os.environ.get("OMP_NUM_THREADS", "(unset)")))
    results = {}
    for family in args.families:
        results[family] = {flow: _run(flow, family, args) for flow in ("gq", "mxnet")}
        print("  %s done" % family, flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
