"""Where the int8 graph's time goes: per-operator profile, oneDNN primitives, thread settings.

For each model (GluonCV ``resnet50_v1`` and ``mobilenetv2_1.0`` with random weights, and a
BERT encoder written with GluonNLP's operators, ``tests/nlp/_nets.MiniBert`` at the size
given by ``--bert``), quantized once with ``gluon_quant.quantize`` (minmax, 2 batches) and
exported, this prints, each measurement in its own process:

1. **Operators** (``mx.profiler`` aggregate statistics, operator bulking off): the time of
   each operator type per call, grouped into convolutions, dense layers, attention,
   quantize/dequantize/requantize, pooling, concat/flatten/reshape, element-wise and the
   rest, and the gap between the sum of operators and the wall-clock time of a call
   (engine, CachedOp and Python).
2. **First and last nodes** of one call in execution order (the profiler's trace): the
   first convolution reads 3 float channels and the last dense layer is small, so they run
   far below the int8 peak that the middle of the net reaches.
3. **oneDNN primitives** (``DNNL_VERBOSE=1``): time per primitive kind, of which
   **reorders** (layout or data-type conversions between operators, and of inputs/outputs).
4. **Thread settings** (``OMP_NUM_THREADS``, ``OMP_PROC_BIND``/``OMP_PLACES``,
   ``OMP_WAIT_POLICY``, ``MXNET_ENGINE_TYPE``, ``MXNET_CPU_WORKER_NTHREADS``,
   ``MXNET_EXEC_BULK_EXEC_INFERENCE``): the int8 model timed in one subprocess per
   setting, settings run round-robin ``--rounds`` times, best round kept, as ratios to the
   first setting. MXNet's pip build uses GNU OpenMP (libgomp), which ignores Intel's
   ``KMP_AFFINITY``; ``OMP_PROC_BIND``/``OMP_PLACES`` are its affinity settings.

Usage::

    python benchmarks/op_profile.py                      # the three models, batch 16 (BERT 8)
    python benchmarks/op_profile.py --models resnet50_v1 --batch 16 --iters 20
    python benchmarks/op_profile.py --quick              # small inputs, a smoke run

Absolute times on a shared machine are noise; read the shares and the ratios.
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Operator type -> group, by the first matching prefix/substring rule below.
GROUPS = (
    ("qdq", ("_contrib_quantize_v2", "_contrib_dequantize", "_contrib_requantize",
             "_sg_mkldnn_quantize", "_sg_mkldnn_dequantize")),
    ("conv", ("conv", "Convolution")),
    ("dense", ("fully_connected", "FullyConnected", "batch_dot", "dot")),
    ("attention", ("selfatt", "softmax", "interleaved")),
    ("pooling", ("Pooling", "pooling")),
    ("concat/flatten/reshape", ("Concat", "concat", "Flatten", "flatten", "Reshape",
                                "reshape", "transpose", "slice", "expand_dims")),
    ("elementwise", ("elemwise", "broadcast", "Activation", "act", "add", "LayerNorm",
                     "BatchNorm", "layer_norm", "Cast", "cast", "Embedding", "_plus")),
)

#: Engine bookkeeping the profiler lists as operators; not work of the graph.
ENGINE_OPS = ("DeleteVariable", "WaitForVar", "CopyCPU2CPU", "ResourceParallelRandomSetSeed")

#: Thread settings swept (name, environment). The first is the reference.
SETTINGS = (
    ("omp1", {"OMP_NUM_THREADS": "1"}),
    ("omp2", {"OMP_NUM_THREADS": "2"}),
    ("omp2 bind=close places=cores", {"OMP_NUM_THREADS": "2", "OMP_PROC_BIND": "close",
                                      "OMP_PLACES": "cores"}),
    ("omp2 wait=passive", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "passive"}),
    ("omp2 wait=active", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "active"}),
    ("omp2 NaiveEngine", {"OMP_NUM_THREADS": "2", "MXNET_ENGINE_TYPE": "NaiveEngine"}),
    ("omp1 2 engine workers", {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "2"}),
    ("omp2 no bulking", {"OMP_NUM_THREADS": "2", "MXNET_EXEC_BULK_EXEC_INFERENCE": "0"}),
)
QUICK_SETTINGS = ("omp1", "omp2 NaiveEngine")

#: The environment variables a setting may set; cleared from the parent's for each worker.
SWEPT = sorted({k for _, env in SETTINGS for k in env} | {"KMP_AFFINITY", "DNNL_VERBOSE"})


def group_of(op):
    """The group of an operator type (see :data:`GROUPS`), else ``'other'``."""
    for group, keys in GROUPS:
        if any(key in op for key in keys):
            return group
    return "other"


# ----------------------------------------------------------------------------- workers
# Each runs in its own process (environment variables are read once, at MXNet's start).

def _model_inputs(args):
    import mxnet as mx
    import numpy as np
    if args.model == "bert":
        sys.path.insert(0, os.path.join(ROOT, "tests", "nlp"))
        from _nets import bert_batches
        return [b[:3] for b in bert_batches(200, count=2, batch=args.batch,
                                            length=args.length, seed=0)]
    rs = np.random.RandomState(0)
    return [mx.nd.array(rs.uniform(-2, 2, (args.batch, 3, args.size, args.size)))
            for _ in range(2)]


def _build(args):
    """Quantize the model and export it to ``args.prefix``."""
    import mxnet as mx
    import gluon_quant as gq
    batches = _model_inputs(args)
    if args.model == "bert":
        from _nets import MiniBert
        units, layers = (int(v) for v in args.bert.split("x"))
        net = MiniBert(vocab=200, units=units, hidden=4 * units, heads=max(1, units // 64),
                       layers=layers, max_length=max(64, args.length))
        net.initialize(mx.init.Normal(0.02))
    else:
        sys.path.insert(0, HERE)
        from _common import zoo_net
        net = zoo_net(args.model, size=args.size)
    net(*([batches[0]] if args.model != "bert" else batches[0]))
    qnet = gq.quantize(net, batches, calibrator="minmax", progress=False,
                       bias_correction=False, num_inputs=3 if args.model == "bert" else None)
    qnet.export(args.prefix)
    return {"params": sum(int(p.data().size) for p in net.collect_params().values())}


def _load(args):
    import gluon_quant as gq
    block = gq.QuantizedSymbolBlock.imports(args.prefix)
    inputs = _model_inputs(args)[0]
    inputs = [inputs] if args.model != "bert" else list(inputs)
    return block, inputs


def _run(block, inputs, iters):
    import mxnet as mx
    for _ in range(iters):
        out = block(*inputs)
        for o in (out if isinstance(out, (list, tuple)) else [out]):
            o.wait_to_read()
    mx.nd.waitall()


def _profile(args):
    """Aggregate operator times and the first/last nodes of one call (bulking off)."""
    import mxnet as mx
    block, inputs = _load(args)
    _run(block, inputs, 2)
    start = time.perf_counter()
    _run(block, inputs, args.iters)
    wall = (time.perf_counter() - start) / args.iters
    trace = os.path.join(os.path.dirname(args.prefix), "trace.json")
    mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=trace)
    mx.profiler.set_state("run")
    _run(block, inputs, args.iters)
    mx.profiler.set_state("stop")
    stats = json.loads(mx.profiler.dumps(reset=True, format="json"))
    mx.profiler.dump()
    ops = {name: s["Total"] / args.iters for name, s in stats["Time"]["operator"].items()
           if name not in ENGINE_OPS}
    with open(trace) as f:
        events = json.load(f)["traceEvents"]
    sequence, begin = [], {}
    for e in events:
        if e.get("cat") != "operator" or e.get("name") in ENGINE_OPS:
            continue
        if e["ph"] == "B":
            begin[(e["name"], e.get("tid"))] = e["ts"]
        elif e["ph"] == "E" and (e["name"], e.get("tid")) in begin:
            sequence.append((e["name"], (e["ts"] - begin.pop((e["name"], e.get("tid")))) / 1e3))
    per_call = len(sequence) // args.iters
    nodes = []
    for i in range(per_call):      # average each position over the calls
        times = [sequence[c * per_call + i][1] for c in range(args.iters)]
        nodes.append((sequence[i][0], statistics.median(times)))
    return {"wall_ms": wall * 1e3, "ops_ms": ops, "nodes": nodes}


def _verbose(args):
    """oneDNN primitive times per call, from ``DNNL_VERBOSE=1`` lines of timed calls."""
    from gluon_quant import _mxnet
    block, inputs = _load(args)
    _run(block, inputs, 2)
    lines = []
    with _mxnet.native_output(lines):
        _run(block, inputs, args.iters)
    kinds = collections.defaultdict(float)
    counts = collections.Counter()
    reorders = collections.Counter()
    for line in lines:
        parts = line.split(",")
        if len(parts) < 4 or parts[0] != "dnnl_verbose" or parts[1] != "exec":
            continue
        kind, ms = parts[3], float(parts[-1])
        kinds[kind] += ms / args.iters
        counts[kind] += 1
        if kind == "reorder":
            reorders[parts[6].replace("::blocked", "").replace(":f0", "")] += ms / args.iters
    return {"kinds_ms": dict(kinds), "counts": {k: v / args.iters for k, v in counts.items()},
            "reorders": reorders.most_common(5)}


def _time(args):
    """Median ms per call of the int8 model."""
    block, inputs = _load(args)
    _run(block, inputs, 3)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        _run(block, inputs, 1)
        times.append(time.perf_counter() - start)
    return {"ms": statistics.median(times) * 1e3}


WORKERS = {"build": _build, "profile": _profile, "verbose": _verbose, "time": _time}


# ------------------------------------------------------------------------------ parent

def _worker(kind, args, prefix, env=None):
    out = prefix + "-" + kind + ".json"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--prefix", prefix,
           "--result", out, "--model", args.model, "--batch", str(args.batch),
           "--size", str(args.size), "--length", str(args.length), "--bert", args.bert,
           "--iters", str(args.iters)]
    full = {k: v for k, v in os.environ.items() if k not in SWEPT}
    full.update({"OMP_NUM_THREADS": str(args.threads)}, **(env or {}))
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    done = subprocess.run(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False)
    if done.returncode != 0 or not os.path.exists(out):
        tail = done.stdout.decode("utf-8", "replace").strip().splitlines()[-15:]
        raise RuntimeError("worker %s for %s failed (rc %d):\n%s"
                           % (kind, args.model, done.returncode, "\n".join(tail)))
    with open(out) as f:
        return json.load(f)


def report_model(args, tmp):
    prefix = os.path.join(tmp, args.model.replace(".", "_"))
    built = _worker("build", args, prefix)
    prof = _worker("profile", args, prefix, {"MXNET_EXEC_BULK_EXEC_INFERENCE": "0"})
    verbose = _worker("verbose", args, prefix, {"DNNL_VERBOSE": "1"})
    total = sum(prof["ops_ms"].values())
    print("\n== %s  batch %d  (%.1fM parameters), %d threads: %.2f ms per call, operators "
          "%.2f ms" % (args.model, args.batch, built["params"] / 1e6, args.threads,
                       prof["wall_ms"], total))
    groups = collections.defaultdict(float)
    for op, ms in prof["ops_ms"].items():
        groups[group_of(op)] += ms
    print("  %-26s %9s %7s" % ("operator group", "ms/call", "share"))
    for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print("  %-26s %9.3f %6.1f%%" % (group, ms, 100 * ms / total))
    gap = prof["wall_ms"] - total
    print("  %-26s %9.3f %6.1f%% of wall (engine, CachedOp, Python; can be < 0 as the "
          "profiled run is a different run)" % ("outside operators", gap,
                                               100 * gap / prof["wall_ms"]))
    print("  top operator types:")
    for op, ms in sorted(prof["ops_ms"].items(), key=lambda kv: -kv[1])[:8]:
        print("    %-40s %9.3f %6.1f%%" % (op, ms, 100 * ms / total))
    nodes = prof["nodes"]
    if nodes:
        print("  first and last nodes of one call (of %d):" % len(nodes))
        for i in list(range(min(3, len(nodes)))) + list(range(max(3, len(nodes) - 3),
                                                             len(nodes))):
            print("    #%-4d %-36s %9.3f %6.1f%%" % (i, nodes[i][0], nodes[i][1],
                                                    100 * nodes[i][1] / total))
    kinds = verbose["kinds_ms"]
    prim_total = sum(kinds.values())
    print("  oneDNN primitives (DNNL_VERBOSE): %.2f ms per call" % prim_total)
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print("    %-20s %9.3f %6.1f%%  %5.1f calls" % (kind, ms, 100 * ms / max(prim_total, 1e-9),
                                                   verbose["counts"][kind]))
    for what, ms in verbose["reorders"]:
        print("      reorder %-60s %8.3f ms" % (what[:60], ms))
    return prefix


def sweep(args, prefixes):
    names = QUICK_SETTINGS if args.quick else tuple(n for n, _ in SETTINGS)
    envs = dict(SETTINGS)
    print("\n== thread settings: int8 ms per call, best of %d rounds (settings round-robin), "
          "ratio to %r" % (args.rounds, names[0]))
    for sub, prefix in prefixes:
        best = {}
        for _ in range(args.rounds):
            for name in names:
                ms = _worker("time", sub, prefix, envs[name])["ms"]
                best[name] = min(ms, best.get(name, float("inf")))
        print("  %s:" % sub.model)
        for name in names:
            print("    %-32s %9.2f ms  %5.2fx" % (name, best[name], best[names[0]] / best[name]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["resnet50_v1", "mobilenetv2_1.0", "bert"])
    parser.add_argument("--batch", type=int, default=16, help="images per call (BERT: half)")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--length", type=int, default=128, help="BERT sequence length")
    parser.add_argument("--bert", default="256x4", help="BERT UNITSxLAYERS (default 256x4)")
    parser.add_argument("--iters", type=int, default=10, help="profiled calls")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the sweep")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the profile runs (default 1)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 32x32 images, batch 2, BERT 64x1 length 16, 2 calls")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import logging
        logging.basicConfig(level=logging.ERROR)
        result = WORKERS[args.worker](args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return
    if args.quick:
        args.size, args.batch, args.length, args.bert = 32, 2, 16, "64x1"
        args.iters, args.rounds = 2, 1
    with tempfile.TemporaryDirectory(prefix="gq_profile_") as tmp:
        prefixes = []
        for model in args.models:
            sub = argparse.Namespace(**dict(vars(args), model=model,
                                            batch=max(1, args.batch // 2)
                                            if model == "bert" else args.batch))
            prefixes.append((sub, report_model(sub, tmp)))
        if not args.no_sweep:
            sweep(args, prefixes)


if __name__ == "__main__":
    main()
