"""GluonCV task families: int8 vs fp32 speed and output agreement, gluon_quant vs MXNet's flow.

For each family (SSD, YOLOv3, Faster R-CNN, CenterNet, FCN/PSPNet/DeepLab, simple_pose,
R(2+1)D) one child process builds the net (random weights, BatchNorm statistics set from
crops of the offline sample photos, SymbolBlock feature extractors included), then:

* ``gq``     ``gluon_quant.quantize(net, calib)`` (the family's preset applies itself);
* ``mxnet``  ``mxnet.contrib.quantization.quantize_net_v2(net, quantized_dtype='auto',
  calib_mode='naive', exclude_layers_match=...)`` with GluonCV's own exclusions (its
  ``scripts/`` quantization: ``flatten`` everywhere, ``concat`` too for SSD, PSPNet and
  DeepLab).

Agreement with fp32 on held-out crops, per task: detectors with NMS off (rows stay in
anchor order) give the lower of score and box cosine; segmentation the pixel argmax
agreement; pose the heatmap cosine; video the logit cosine. Times are medians of
round-robin calls, so that int8 and fp32 share the machine's load::

    python benchmarks/gluoncv_tasks.py                 # every family
    python benchmarks/gluoncv_tasks.py --families ssd_300 simple_pose --repeat 5
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

#: family -> (GluonCV name, input shape at the batch timed, task, GluonCV's exclusions).
FAMILIES = {
    "ssd_300": ("ssd_300_vgg16_atrous_voc", (4, 3, 300, 300), "detection", ["flatten", "concat"]),
    "ssd_512_resnet": ("ssd_512_resnet50_v1_voc", (2, 3, 512, 512), "detection",
                       ["flatten", "concat"]),
    "ssd_512_mobilenet": ("ssd_512_mobilenet1.0_voc", (4, 3, 512, 512), "detection",
                          ["flatten", "concat"]),
    "yolo3_darknet": ("yolo3_darknet53_voc", (2, 3, 416, 416), "detection", ["flatten"]),
    "yolo3_mobilenet": ("yolo3_mobilenet1.0_voc", (4, 3, 416, 416), "detection", ["flatten"]),
    "faster_rcnn": ("faster_rcnn_resnet50_v1b_voc", (1, 3, 480, 480), "detection", ["flatten"]),
    "center_net": ("center_net_resnet18_v1b_voc", (4, 3, 512, 512), "centernet", ["flatten"]),
    "fcn": ("fcn_resnet50_voc", (1, 3, 480, 480), "segmentation", ["flatten"]),
    "psp": ("psp_resnet50_ade", (1, 3, 480, 480), "segmentation", ["flatten", "concat"]),
    "deeplab": ("deeplab_resnet50_ade", (1, 3, 480, 480), "segmentation", ["flatten", "concat"]),
    "simple_pose": ("simple_pose_resnet18_v1b", (8, 3, 256, 192), "pose", ["flatten"]),
    "r2plus1d": ("r2plus1d_resnet18_kinetics400", (1, 3, 16, 112, 112), "video", ["flatten"]),
}


def _outputs(out):
    return [o.asnumpy() for o in (out if isinstance(out, (list, tuple)) else [out])]


def _cos(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def agreement(task, ref, out):
    """The task's agreement of int8 outputs ``out`` with fp32 ``ref`` (lists of arrays)."""
    if task == "detection":         # (ids, scores, boxes) with NMS off
        return min(_cos(ref[1], out[1]), _cos(ref[2], out[2]))
    if task == "centernet":         # top-k lists: compare the score and box sets
        return min(_cos(np.sort(ref[1], axis=None), np.sort(out[1], axis=None)),
                   _cos(ref[2], out[2]))
    if task == "segmentation":
        return float((ref[0].argmax(axis=1) == out[0].argmax(axis=1)).mean())
    return _cos(ref[0], out[0])


def _images(shape, seed):
    import mxnet as mx
    from gluon_quant.zoo.gluoncv import sample_batches
    size = shape[-2:]
    crops = sample_batches(1, shape[0], size=max(size), seed=seed)[0][..., :size[0], :size[1]]
    if len(shape) == 5:             # a clip: the crop drifting one pixel a frame
        crops = np.stack([np.roll(crops, t, axis=-1) for t in range(shape[2])], axis=2)
    return mx.nd.array(np.ascontiguousarray(crops))


def _net(name, x, task, source=None):
    import mxnet as mx
    from gluoncv.model_zoo import get_model
    from gluon_quant.zoo.gluoncv import initialize_random, set_batchnorm_statistics
    net = get_model(name, pretrained=False, pretrained_base=False)
    initialize_random(net)
    if task == "detection":
        net.set_nms(nms_thresh=0)   # GluonCV: <= 0 turns NMS off, rows stay in order
    if source is None:
        set_batchnorm_statistics(net, x)
    else:
        net(x)
        for dst, src in zip(net.collect_params().values(), source.collect_params().values()):
            dst.set_data(src.data())
    mx.nd.waitall()
    return net


def _time(blocks, x, repeat):
    """Median seconds per call of each block, timed round-robin."""
    samples = [[] for _ in blocks]
    for block in blocks:
        _outputs(block(x))
    for _ in range(repeat):
        for i, block in enumerate(blocks):
            start = time.perf_counter()
            _outputs(block(x))
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def _mxnet_flow(net, calib, exclusions):
    import mxnet as mx
    from mxnet.contrib import quantization as mxq
    data = np.concatenate([c.asnumpy() for c in calib])
    # A DataIter of the images alone: MXNet's wrapper of a DataLoader names the second
    # array of each (image, label) batch 'data0', which the Module bound with
    # data_shapes=['data'] cannot find (and it asserts lists when batches are arrays).
    loader = mx.io.NDArrayIter(data, batch_size=calib[0].shape[0])
    net.hybridize()
    return mxq.quantize_net_v2(net, quantized_dtype="auto", calib_mode="naive",
                               data_shapes=[mx.io.DataDesc("data", calib[0].shape)],
                               exclude_layers_match=exclusions, calib_data=loader,
                               num_calib_examples=len(data), ctx=mx.cpu())


def run_child(family, repeat, batch):
    """One family: fp32, gluon_quant and MXNet's flow; a JSON-safe row."""
    import gluon_quant as gq
    name, shape, task, exclusions = FAMILIES[family]
    shape = (batch or shape[0],) + tuple(shape[1:])
    calib = [_images(shape, seed) for seed in (1, 2)]
    held_out = _images(shape, 99)
    fp32 = _net(name, calib[0], task)
    ref = _outputs(fp32(held_out))
    row = {"family": family, "model": name, "input": "x".join(map(str, shape))}
    flows = {}
    try:
        start = time.perf_counter()
        flows["gq"] = gq.quantize(fp32, calib, progress=False)
        row["gq_quantize_s"] = time.perf_counter() - start
        row["gq_int8"] = list(flows["gq"].report().coverage())
    except Exception as err:        # noqa: BLE001 - a cell of the table
        row["gq_error"] = "%s: %s" % (type(err).__name__, str(err).splitlines()[0][:150])
    try:
        flows["mx"] = _mxnet_flow(_net(name, calib[0], task, source=fp32), calib, exclusions)
    except Exception as err:        # noqa: BLE001
        row["mx_error"] = "%s: %s" % (type(err).__name__, str(err).splitlines()[0][:150])
    timed = _net(name, calib[0], task, source=fp32)     # fp32, hybridized like the others
    timed.hybridize(static_alloc=True, static_shape=True)
    blocks = [timed]
    for key, block in list(flows.items()):
        try:
            row[key + "_agreement"] = agreement(task, ref, _outputs(block(held_out)))
            block.hybridize(static_alloc=True, static_shape=True)
            blocks.append(block)
        except Exception as err:    # noqa: BLE001
            row[key + "_error"] = "%s: %s" % (type(err).__name__, str(err).splitlines()[0][:150])
            del flows[key]
    seconds = _time(blocks, held_out, repeat)
    row["fp32_ms"] = 1e3 * seconds[0]
    for key, sec in zip(flows, seconds[1:]):
        row[key + "_ms"] = 1e3 * sec
        row[key + "_speedup"] = seconds[0] / sec
    return row


def _cells(row, key):
    if key + "_error" in row:
        return ["-", "-", "-"]
    return ["%.0f" % row[key + "_ms"], "%.2fx" % row[key + "_speedup"],
            "%.4f" % row[key + "_agreement"]]


def table(rows):
    """The printed table and the errors under it."""
    head = ["family", "input", "fp32 ms", "gq ms", "gq x", "gq agree", "gq int8",
            "mx ms", "mx x", "mx agree"]
    lines, notes = [], []
    for row in rows:
        if "fp32_ms" not in row:
            lines.append([row["family"], row.get("input", "?")] + ["-"] * 8)
        else:
            lines.append([row["family"], row["input"], "%.0f" % row["fp32_ms"]]
                         + _cells(row, "gq")
                         + ["%d/%d" % tuple(row["gq_int8"]) if "gq_int8" in row else "-"]
                         + _cells(row, "mx"))
        notes += ["%s / %s: %s" % (row["family"], k[:-6], v) for k, v in row.items()
                  if k.endswith("error")]
    widths = [max(len(str(r[i])) for r in lines + [head]) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths))) for r in [head] + lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out + [""] + notes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds (10)")
    parser.add_argument("--batch", type=int, default=0, help="override every batch size")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per family")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("ROW " + json.dumps(run_child(args.child, args.repeat, args.batch)), flush=True)
        return
    print("int8 vs fp32, median of %d rounds, OMP_NUM_THREADS=%s" % (
        args.repeat, os.environ.get("OMP_NUM_THREADS", "unset")), flush=True)
    rows = []
    for family in args.families:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", family, "--repeat",
               str(args.repeat), "--batch", str(args.batch)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  check=False)
            found = [l[4:] for l in proc.stdout.splitlines() if l.startswith("ROW ")]
            row = json.loads(found[0]) if found else {
                "family": family, "error": "crash: %s" % (proc.stderr.strip().splitlines()
                                                          or ["?"])[-1][:150]}
        except subprocess.TimeoutExpired:
            row = {"family": family, "error": "over %d s" % args.timeout}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
