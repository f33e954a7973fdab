"""Where the 8-bit activation floor of a net comes from, on held-out photos.

For one model of ``benchmarks/accuracy.py`` (same photos, same split, same nets), with
default settings:

* int8 and the floor (``gluon_quant.debug.fake_quant_block``: the fp32 net with every
  calibrated tensor rounded to its 8-bit grid, weights fp32), against fp32;
* how far the fp32 net itself moves when its input gets uniform noise of +-0.5 and
  +-0.25 pixel level (the photos' own 8-bit grid rounded once more): where this alone
  costs about 0.01 of logit cosine, no 8-bit rounding of the first layers can keep 0.99;
* the floor with the first K calibrated tensors (graph order) left unrounded;
* with ``--per-tensor``: for each tensor, the cosine lost when it alone is rounded, and
  gained when it alone is left unrounded (two forward passes a tensor: minutes).

Scores are the mean over the held-out images of the logit cosine (and top-1 agreement).
Results and what they mean: ``docs/accuracy.md``.

::

    python benchmarks/activation_floor.py mobilenetv2_0.5 --per-tensor
"""
import argparse
import json
import logging

import mxnet as mx
import numpy as np

import gluon_quant as gq
from gluon_quant.debug import fake_quant_block
from gluon_quant.debug.floor import fake_quant_graph
from gluon_quant.graph.passes import insert_fake_quant
from gluon_quant.zoo.evaluation import evaluation_data, score
from gluon_quant.zoo.gluoncv import IMAGENET_MEAN, IMAGENET_STD
from accuracy import BATCH, EFFICIENTNETS, build, input_size

PREFIXES = (0, 1, 2, 5, 8, 12, 20, 30)


def floor_block(qnet, ranges):
    """The fp32 net of ``qnet`` with only the tensors of ``ranges`` rounded to 8 bits."""
    graph = json.loads(qnet.fused_graph.tojson())
    insert_fake_quant(graph, ranges)
    sym = mx.sym.load_json(json.dumps(graph))
    block = mx.gluon.SymbolBlock(sym, [mx.sym.var(n) for n in qnet.input_names])
    params = block.collect_params()
    params.initialize(mx.init.Zero())     # deferred (shapes unknown): set_data fills it
    for name, value in qnet.fp32_params.items():
        if name in params:
            params[name].set_data(value)
    return block


def rounded_ranges(qnet):
    """Table key -> range of every tensor the floor rounds, in graph order."""
    _, rounded = fake_quant_graph(qnet)
    table = qnet.calibration_table
    order = [n["name"] for n in json.loads(qnet.fused_graph.tojson())["nodes"]]
    keys = [name if name in table else name + "_output" for name in order if name in rounded]
    return {key: table[key] for key in keys}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--per-tensor", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    size = input_size(args.model)
    if args.model in EFFICIENTNETS:
        data, std = evaluation_data(size, batch_size=BATCH), (128.0,) * 3
    else:
        data = evaluation_data(size, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=BATCH)
        std = IMAGENET_STD
    net, copy = build(args.model, data)
    held = mx.nd.array(data.held_out)
    fp32 = net(held).asnumpy()

    def cosine(block):
        return score(fp32, block(held).asnumpy()).cosine

    rng = np.random.RandomState(0)
    std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    for level in (0.5, 0.25):
        noisy = data.held_out + rng.uniform(-level, level, data.held_out.shape).astype(
            np.float32) / std
        print("fp32, input +-%.2f pixel level: %s" % (
            level, score(fp32, net(mx.nd.array(noisy)).asnumpy())), flush=True)
    qnet = gq.quantize(copy(), data.calibration, progress=False)
    print("int8: %s" % (score(fp32, qnet(held).asnumpy()),))
    print("floor: %s" % (score(fp32, fake_quant_block(qnet)[0](held).asnumpy()),))
    ranges = rounded_ranges(qnet)
    keys = list(ranges)
    for k in PREFIXES:
        if k < len(keys):
            print("floor, first %2d of %d tensors unrounded: %.4f" % (
                k, len(keys), cosine(floor_block(qnet, {j: ranges[j] for j in keys[k:]}))),
                flush=True)
    if args.per_tensor:
        full = cosine(floor_block(qnet, ranges))
        rows = []
        for key in keys:
            alone = 1.0 - cosine(floor_block(qnet, {key: ranges[key]}))
            rest = cosine(floor_block(qnet, {j: v for j, v in ranges.items() if j != key}))
            rows.append((alone, rest - full, key, ranges[key]))
        print("%-50s %10s %10s  range" % ("tensor", "loss alone", "gain fp32"))
        for alone, gain, key, (lo, hi) in sorted(rows, key=lambda r: -r[0]):
            print("%-50s %10.5f %10.5f  [%.3g, %.3g]" % (key, alone, gain, lo, hi))


if __name__ == "__main__":
    main()
