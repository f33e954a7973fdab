"""Task metrics of the trained detection, segmentation and pose nets, fp32 against int8.

Run: ``OMP_NUM_THREADS=1 python benchmarks/gluoncv_trained.py [--skip-mxnet]``

The nets are :mod:`gluon_quant.zoo.tasks`' trained SSD, FCN-like segmenter and
simple_pose-like net; metrics are measured on held-out scenes (photos, backgrounds and seeds
that training and calibration never saw), calibrated on 64 ``calib`` scenes. Two flows:

* ``gluon_quant``: ``gq.quantize(net, calib)`` with every default;
* ``mxnet``: ``mxnet.contrib.quantization.quantize_net_v2(net, quantized_dtype='auto',
  calib_mode='naive')`` with GluonCV's own exclusions (its quantization scripts exclude
  layers matching ``flatten``, and ``concat`` for SSD).

For the detector, a second copy with NMS off (``set_nms(nms_thresh=0, nms_topk=-1,
post_nms=-1)``, rows in anchor order) is quantized by the same flow and compared row by row
(score and box cosine, class-id agreement).
"""
import argparse
import logging

import mxnet as mx
import numpy as np

from gluon_quant.zoo.tasks.compare import TASK_NETS, compare, default_quantize

#: GluonCV's ``exclude_layers_match`` for each net (scripts/detection/ssd/eval_ssd.py,
#: scripts/segmentation/test.py, scripts/pose/simple_pose/validate.py).
GLUONCV_EXCLUDES = {"detector": ["flatten", "concat"], "segmenter": ["flatten"],
                    "pose": ["flatten"]}


def mxnet_quantize(name):
    """``quantize_fn`` running MXNet's own ``quantize_net_v2`` flow for task net ``name``."""
    from mxnet.contrib import quantization as mxq

    def run(net, calib_batches):
        calib = np.concatenate(calib_batches)
        loader = mx.gluon.data.DataLoader(
            mx.gluon.data.ArrayDataset(calib, np.zeros(len(calib), np.float32)),
            batch_size=len(calib_batches[0]))
        net.hybridize()
        return mxq.quantize_net_v2(net, quantized_dtype="auto", calib_mode="naive",
                                   exclude_layers_match=GLUONCV_EXCLUDES[name],
                                   calib_data=loader, num_calib_examples=len(calib),
                                   ctx=mx.cpu())
    return run


def _row(name, flow, result):
    points = 100 * (result["int8"] - result["fp32"])
    extra = []
    for key in ("pixel_agreement", "score_cosine", "box_cosine", "id_agreement", "box_error"):
        if key in result:
            extra.append("%s %.4f" % (key, result[key]))
    return "%-9s %-11s %-8s fp32 %.4f  int8 %.4f  (%+.2f points)  %s" % (
        name, flow, result["metric"], result["fp32"], result["int8"], points, "  ".join(extra))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-mxnet", action="store_true", help="skip quantize_net_v2")
    parser.add_argument("--nets", nargs="*", default=sorted(TASK_NETS),
                        choices=sorted(TASK_NETS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in args.nets:
        print(_row(name, "gluon_quant", compare(name, default_quantize)), flush=True)
        if not args.skip_mxnet:
            try:
                print(_row(name, "mxnet", compare(name, mxnet_quantize(name))), flush=True)
            except Exception as err:   # noqa: BLE001  MXNet's flow fails on some nets
                line = next((l for l in str(err).splitlines() if l.strip()), repr(err))
                print("%-9s %-11s failed: %s: %s" % (name, "mxnet", type(err).__name__,
                                                     line[:160]), flush=True)


if __name__ == "__main__":
    main()
