"""The ``gluon-quant`` command line: quantize, tune, report, compare, bench, demo.

Every subcommand prints a human summary on stdout (or, with ``--json``, one JSON object),
logs and progress bars on stderr.  Exit codes: 0 success, 1 a gluon_quant error (bad
input, unreadable file...: one line on stderr saying what and how to fix it), 2 bad
usage (unknown option, missing argument), 3 an unexpected internal error, 130
interrupted.  ``--verbose`` adds the traceback and the library's log.
"""
import argparse
import json
import logging
import os
import statistics
import sys
import time
import traceback

from ._io import json_default, loads_json, write_json

__all__ = ["main", "build_parser", "Top1", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERNAL"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141       # 128 + SIGPIPE, as a shell reports a command whose reader closed

_log = logging.getLogger("gluon_quant.cli")


def _file_prefix(value):
    """``--out``: a prefix with a file name (``out/`` would write hidden ``-*.json`` files)."""
    if not os.path.basename(value):
        raise argparse.ArgumentTypeError("%r names a folder: give a prefix with a file name, "
                                         "e.g. %s" % (value, os.path.join(value or ".", "mynet")))
    return value

_EXIT_HELP = """exit codes: 0 ok, 1 gluon_quant error (message on stderr), 2 usage error,
            3 internal error (rerun with --verbose and report it), 130 interrupted,
            141 output pipe closed by its reader"""

_MAIN_EPILOG = """examples:
  gluon-quant demo
  gluon-quant quantize resnet18_v1 --calib ./images --out out/resnet18 --plot out/plots
  gluon-quant report out/resnet18
  gluon-quant compare resnet18_v1 --calib ./images --plot out/plots   (or: doctor)
  gluon-quant bench resnet18_v1 --calib ./images --batch-sizes 1,16

MODEL is efficientnet_lite0, a GluonCV model-zoo name, or an exported fp32 pair
(PREFIX-symbol.json, PREFIX-NNNN.params: net.export or a Module checkpoint). Offline, add
--no-pretrained to GluonCV names (random weights, BatchNorm re-estimated on the data).

""" + _EXIT_HELP

_QUANTIZE_EPILOG = """examples:
  gluon-quant quantize efficientnet_lite0 --calib ~/photos --out out/effnet
  gluon-quant quantize resnet18_v1 --no-pretrained --calib ./images --out out/r18 \\
      --calibrator entropy --exclude 'resnetv10_dense0' --plot out/plots
  gluon-quant quantize mynet --calib inputs.npy --out out/mynet --json   # mynet-symbol.json
  gluon-quant quantize resnet50_v1 --calib ./images --out out/r50 --engine ray --shards 8
  gluon-quant quantize resnet50_v1 --calib ./images --out out/r50 --engine ray --address auto

writes the int8 export (PREFIX-symbol.json, PREFIX-int8.params, PREFIX-meta.json: load it
with gluon_quant.QuantizedSymbolBlock.imports(PREFIX)), PREFIX-report.json (per-layer
table) and PREFIX-calib.json (calibration table).
With --engine, the calibration pass runs on --shards shards side by side (Ray tasks, or
worker processes) and merges to the same ranges as one pass; the same int8 model results.

""" + _EXIT_HELP

_TUNE_EPILOG = """examples:
  gluon-quant tune mynet --calib calib.npy --eval-data val.npz --tolerance 0.01 --out out/t
  gluon-quant tune resnet18_v1 --calib ./images --eval-data val.npz --tolerance 0.005 \\
      --max-trials 8 --engine ray --address auto --out out/r18

--eval-data is a .npz with the inputs (x) and integer labels (y), or a folder of images
in class subfolders, labelled by their folder's place in sorted order (ImageNet's synset
folders, ImageFolderDataset's layout): the score is top-1 accuracy. A .npy (or a .npz
without y, or images not in class folders) holds inputs only: the score is top-1
agreement with the fp32 model. Trials are quantized variants (other calibrators, the other weight
granularity, sensitive layers kept in fp32) tried until the score is within --tolerance
of fp32's; with --engine ray they are evaluated side by side, same result as one by one.
Writes the chosen model as quantize does, plus PREFIX-tune.json (every trial).

""" + _EXIT_HELP


# ---------------------------------------------------------------------- arguments
def _add_common(parser):
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only errors (and --json output); no progress bars")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what happens (-vv: debug); tracebacks on errors")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of text")


def _add_model(parser, *, calib_required=True):
    parser.add_argument("model", metavar="MODEL",
                        help="efficientnet_lite0, a GluonCV zoo name (resnet18_v1, "
                             "mobilenet1.0, ...), or an exported fp32 PREFIX/-symbol.json")
    parser.add_argument("--calib", metavar="DIR|FILE", required=calib_required,
                        help="folder of images (jpg/png/bmp/tif, read as ImageNet classifiers take "
                             "them) or a .npy/.npz of input arrays (any other input)")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="random weights (offline); BatchNorm statistics are re-estimated "
                             "on the calibration data")
    parser.add_argument("--image-size", type=int, default=None, metavar="S",
                        help="square input side for image folders (default: the model's, "
                             "e.g. 224; 512 for ssd_512_*)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B",
                        help="calibration batch size (default 16)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N",
                        help="read at most N images/samples")
    parser.add_argument("--config", metavar="FILE.json", default=None,
                        help="settings as a JSON object of gluon_quant.QuantConfig fields "
                             "(QuantConfig.to_dict()); the options below override it")
    parser.add_argument("--num-calib-batches", type=int, default=None, metavar="N",
                        help="calibrate on at most N batches")
    parser.add_argument("--calibrator", default=None,
                        help="minmax, entropy, percentile or mse (default mse)")
    parser.add_argument("--dtype", default=None, choices=["auto", "int8", "uint8"],
                        help="activation type (default auto: uint8 where never negative)")
    parser.add_argument("--granularity", default=None, choices=["channel", "tensor"],
                        help="weight scales per output channel or per tensor "
                             "(default channel on oneDNN)")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="layers of a model family kept in fp32 (default: automatic for "
                             "GluonCV models; 'none' turns it off)")
    parser.add_argument("--exclude", action="append", default=None, metavar="NAME",
                        help="keep in fp32: layer name, glob pattern or operator type "
                             "(Convolution, FullyConnected...); repeatable")
    parser.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                        default=None, help="do not correct the mean error of linear layers")
    parser.add_argument("--equalization", action="store_true", default=None, help="cross-"
                        "layer equalization of conv/dense pairs joined by ReLU first")
    parser.add_argument("--int8-stem", dest="fp32_stem", action="store_false", default=None,
                        help="quantize the convolution reading the image too")
    parser.add_argument("--weight-rounding", choices=["nearest", "adaround"], help="round "
                        "int8 weights to nearest (default) or learn it per layer (adaround)")


def _add_engine(parser, what):
    parser.add_argument("--engine", default=None, choices=["ray", "process"],
                        help="run %s side by side: Ray tasks (pip install "
                        "'gluon_quant[ray]') or worker processes on this machine" % what)
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster to use: 'auto' (this node's cluster) or "
                        "HEAD_IP:6379; default: a local Ray started for this command")


def build_parser():
    """The argument parser of ``gluon-quant`` (exposed for documentation and tests)."""
    from ._version import __version__
    parser = argparse.ArgumentParser(
        prog="gluon-quant", description="Quantize MXNet Gluon models to int8, inspect and "
        "benchmark them.", epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="gluon_quant " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("quantize", help="quantize MODEL on calibration data and export it",
                       description="Quantize MODEL to int8 with calibration data; write the "
                       "export, the per-layer report and the calibration table.",
                       epilog=_QUANTIZE_EPILOG, formatter_class=raw)
    _add_model(p)
    p.add_argument("--out", required=True, metavar="PREFIX", type=_file_prefix,
                   help="output prefix, e.g. out/resnet18 (folders are created)")
    p.add_argument("--plot", metavar="DIR", help="save per-layer histograms with each "
                   "calibrator's threshold as PNG files in DIR")
    _add_engine(p, "the calibration pass on shards of the data")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="with --engine: split the calibration batches into N shards "
                        "(default: one per CPU here, at most one per batch)")
    _add_common(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("tune", help="quantize MODEL, adjusting settings until top-1 "
                       "accuracy is within a tolerance of fp32",
                       description="Accuracy-aware quantization: try calibrators, weight "
                       "granularities and fp32 fallbacks of sensitive layers until the "
                       "int8 score on --eval-data is within --tolerance of fp32.",
                       epilog=_TUNE_EPILOG, formatter_class=raw)
    _add_model(p)
    p.add_argument("--eval-data", required=True, metavar="FILE|DIR",
                   help=".npz with x (inputs) and y (labels), or a folder of images in "
                        "class subfolders (val/<class>/*.jpg): top-1 accuracy; a .npy, a "
                        ".npz without y or a folder of images alone: top-1 agreement with "
                        "fp32")
    p.add_argument("--tolerance", type=float, required=True, metavar="T",
                   help="allowed loss of the score against fp32 (e.g. 0.01 = 1 point)")
    p.add_argument("--max-trials", type=int, default=12, metavar="N",
                   help="most quantized variants evaluated (default 12)")
    p.add_argument("--out", required=True, metavar="PREFIX", type=_file_prefix,
                   help="output prefix of the chosen model (as for quantize)")
    p.add_argument("--plot", metavar="DIR", help="save the chosen model's calibration "
                   "histograms as PNG files in DIR")
    _add_engine(p, "trials")
    _add_common(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("report", help="print the per-layer table of a quantized export",
                       description="Print which layers were fused and quantized, and why.",
                       epilog="examples:\n  gluon-quant report out/resnet18\n"
                       "  gluon-quant report out/resnet18 --json | jq '.layers[0]'\n"
                       "  gluon-quant report out/resnet18 --fp32-only\n\n" + _EXIT_HELP,
                       formatter_class=raw)
    p.add_argument("prefix", metavar="PREFIX", help="the --out PREFIX of `gluon-quant "
                   "quantize` (or its PREFIX-report.json)")
    p.add_argument("--fp32-only", action="store_true",
                   help="list only the layers that stayed in fp32")
    _add_common(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", aliases=["doctor"],
                       help="the doctor: fp32 vs int8 agreement per layer",
                       description="Quantize MODEL, run fp32 and int8 side by side and rank "
                       "layers by SQNR (worst first).",
                       epilog="examples:\n  gluon-quant compare resnet18_v1 --no-pretrained "
                       "--calib ./images --plot out/plots\n  gluon-quant compare mynet "
                       "--calib x.npy --calibrator entropy --top 5 --json\n\n" + _EXIT_HELP,
                       formatter_class=raw)
    _add_model(p)
    p.add_argument("--num-batches", type=int, default=4, metavar="N",
                   help="compare on N batches of the calibration data (default 4)")
    p.add_argument("--top", type=int, default=None, metavar="K",
                   help="print only the K worst layers")
    p.add_argument("--plot", metavar="DIR", help="save the per-layer SQNR chart in DIR")
    p.add_argument("--floor", action="store_true",
                   help="also run the 8-bit activation floor (fp32 with every calibrated "
                        "tensor rounded to 8 bits) and name the layer that falls furthest "
                        "behind it")
    p.add_argument("--timing", action="store_true",
                   help="also time each int8 node and the fp32 node it replaces, each run "
                        "alone on the first batch, and name those slower in int8")
    _add_common(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("bench", help="fp32 vs int8 latency and throughput",
                       description="Time MODEL in fp32 (hybridized) and int8 on this machine; "
                       "ratios > 1 mean int8 is faster.",
                       epilog="examples:\n  gluon-quant bench resnet18_v1 --no-pretrained "
                       "--batch-sizes 1,16\n  gluon-quant bench efficientnet_lite0 --calib "
                       "./images --repeat 50 --json\n\nWithout --calib, random inputs are "
                       "used for calibration (fine for timing, not for accuracy).\n\n"
                       + _EXIT_HELP, formatter_class=raw)
    _add_model(p, calib_required=False)
    p.add_argument("--batch-sizes", default="1,16", metavar="B1,B2",
                   help="comma-separated batch sizes to time (default 1,16)")
    p.add_argument("--repeat", type=int, default=20, metavar="N",
                   help="timed calls per batch size (default 20; the median is reported)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed calls first (default 3)")
    _add_common(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="the offline demo: EfficientNet-Lite fp32 vs int8 "
                       "on real photos it was not calibrated on",
                       description="Run the offline demo (python -m gluon_quant.demo).",
                       epilog="examples:\n  gluon-quant demo\n  gluon-quant demo "
                       "--max-photos 3 --repeat 3\n  gluon-quant demo --model "
                       "efficientnet_lite2\n\n" + _EXIT_HELP, formatter_class=raw)
    p.add_argument("--model", default="efficientnet_lite0",
                   choices=("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
                   help="the EfficientNet-Lite to quantize (default efficientnet_lite0)")
    p.add_argument("--max-photos", type=int, default=None, metavar="N",
                   help="use only the first N calibration and N held-out photos")
    p.add_argument("--repeat", type=int, default=10, metavar="N",
                   help="timed passes per model (default 10)")
    p.add_argument("--calibrator", default="mse", help="calibration method (default mse)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log what happens; tracebacks on errors")
    p.set_defaults(func=_cmd_demo)
    return parser


# ---------------------------------------------------------------------- output
class _Output:
    """Where a command's results go: text on stdout (unless quiet) or one JSON object."""

    def __init__(self, args, stdout):
        self.json = getattr(args, "json", False)
        self.quiet = getattr(args, "quiet", False)
        self.stdout = stdout

    def text(self, message=""):
        if not (self.json or self.quiet):
            print(message, file=self.stdout)

    def result(self, obj):
        if self.json:
            print(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False,
                             default=json_default), file=self.stdout)


# ---------------------------------------------------------------------- shared steps
def _positive(value, option):
    from .errors import ConfigError
    if value is not None and value < 1:
        raise ConfigError("%s must be a positive integer, got %r." % (option, value))


def _prepare(args, out):
    """Load MODEL and the calibration batches; re-estimate BatchNorm for random weights."""
    from .cli_models import check_image_inputs, load_calibration, load_model, set_batchnorm_from
    for option in ("batch_size", "max_images", "num_calib_batches"):
        _positive(getattr(args, option), "--" + option.replace("_", "-"))
    start = time.perf_counter()
    model = load_model(args.model, pretrained=args.pretrained, image_size=args.image_size)
    out.text("model: %s (%s%s)" % (model.name, model.kind,
                                   ", random weights" if model.random_weights else ""))
    if args.calib is None:
        batches = _random_batches(model, args.batch_size)
        check_image_inputs(model, batches[0].shape)
        out.text("calibration: random inputs (no --calib given)")
    else:
        batches = load_calibration(args.calib, model, batch_size=args.batch_size,
                                   max_images=args.max_images, progress=not args.quiet)
        out.text("calibration: %d batch(es) of up to %d from %s"
                 % (len(batches), args.batch_size, args.calib))
    if model.random_weights:
        count = set_batchnorm_from(model.net, batches)
        _log.info("Re-estimated %d BatchNorm layers on the calibration data.", count)
    return model, batches, time.perf_counter() - start


def _random_batches(model, batch_size, count=2):
    import numpy as np
    rs = np.random.RandomState(0)
    shape = (batch_size, 3, model.image_size, model.image_size)
    return [rs.standard_normal(shape).astype(np.float32) for _ in range(count)]


def quant_config(args, num_inputs=None):
    """The :class:`~gluon_quant.QuantConfig` of a command: ``--config FILE``, then the
    options given on the command line (an option left out keeps the file's value)."""
    import gluon_quant as gq
    from .errors import ArtifactError
    base = {}
    if getattr(args, "config", None):
        try:
            with open(args.config, encoding="utf-8") as handle:
                base = loads_json(handle.read())
        except (OSError, ValueError) as err:
            raise ArtifactError("Cannot read --config %r: %s. Pass a JSON object of "
                                "QuantConfig settings." % (args.config, err)) from err
    given = {name: getattr(args, name, None) for name in (
        "calibrator", "dtype", "granularity", "exclude", "preset", "bias_correction",
        "num_calib_batches", "equalization", "weight_rounding", "fp32_stem")}
    given = {k: v for k, v in given.items() if v is not None}
    if num_inputs is not None:
        given["num_inputs"] = num_inputs
    if getattr(args, "quiet", False):
        given["progress"] = False
    return gq.QuantConfig.from_dict(base, **given)


def _quantize(args, model, batches):
    import gluon_quant as gq
    config = quant_config(args, model.num_inputs)
    start = time.perf_counter()
    if getattr(args, "engine", None) is None:
        if getattr(args, "address", None) is not None:
            raise _engine_needed(args.address)
        qnet = gq.quantize(model.net, batches, config=config)
    else:
        qnet = _quantize_on_engine(args, model.net, batches, config)
    return qnet, time.perf_counter() - start


def _engine_needed(address):
    from .errors import ConfigError
    return ConfigError("--address %r needs --engine ray." % (address,))


def _quantize_on_engine(args, net, batches, config):
    """``quantize`` with the calibration pass on shards: the same int8 model.

    The ranges come from ``calibrate_parallel``; bias corrections are measured, as in one
    process, on the first calibration samples, which a pass over just the batches holding
    them keeps.
    """
    import gluon_quant as gq
    from .api import finalize_with_table
    _positive(args.shards, "--shards")
    if config.num_calib_batches is not None:
        batches = batches[:config.num_calib_batches]
    count = min(args.shards or os.cpu_count() or 1, len(batches))
    size = -(-len(batches) // count)
    shards = [batches[i:i + size] for i in range(0, len(batches), size)]
    qnet = gq.QuantizedHybridBlock(net, config)
    table = gq.calibrate_parallel(qnet, shards, engine=args.engine, address=args.address,
                                  progress=config.progress)
    return finalize_with_table(qnet, table, batches)


def _coverage(report):
    quantized, total = report.coverage()
    return {"layers": len(report), "layers_int8": len(report.quantized),
            "conv_dense_int8": quantized, "conv_dense_total": total,
            "fused_nodes": sum(r.fused for r in report)}


# ---------------------------------------------------------------------- commands
def _cmd_quantize(args, out):
    model, batches, load_s = _prepare(args, out)
    qnet, quant_s = _quantize(args, model, batches)
    summary = _write_model(args, out, qnet, model, batches, quant_s)
    out.result(dict(summary, seconds={"load": round(load_s, 3), "quantize": round(quant_s, 3)}))
    return EXIT_OK


def _write_model(args, out, qnet, model, batches, quant_s):
    """Write the report, the calibration table and the export; print and return a summary."""
    report = qnet.report()
    prefix = args.out
    files = {"report": write_json(prefix + "-report.json", dict(
        report.to_dict(), model=model.name, input_names=qnet.input_names,
        input_shapes=[list(s) for s in _input_shapes(batches)]))}
    qnet.calibration_table.save(prefix + "-calib.json")
    files["calibration_table"] = prefix + "-calib.json"
    files.update(_export(qnet, prefix))
    plots = []
    if args.plot:
        plots = _plot_calibration(qnet, args.plot, out)
    cov = _coverage(report)
    out.text("quantized in %.1f s: %d of %d conv/dense layers in int8, %d fused nodes "
             "(calibrator %s, dtype %s, granularity %s)"
             % (quant_s, cov["conv_dense_int8"], cov["conv_dense_total"], cov["fused_nodes"],
                report.calibrator, report.dtype, report.granularity))
    for what, path in sorted(files.items()):
        out.text("  %-18s %s" % (what, path))
    if plots:
        out.text("  %-18s %d PNG files in %s" % ("plots", len(plots), args.plot))
    out.text("next: gluon-quant report %s" % prefix)
    return {"model": model.name, "kind": model.kind, "files": files, "plots": plots,
            "coverage": cov, "calibrator": report.calibrator, "dtype": report.dtype,
            "granularity": report.granularity, "batches": len(batches)}


def _cmd_tune(args, out):
    import gluon_quant as gq
    from .errors import ConfigError
    _positive(args.max_trials, "--max-trials")
    if args.address is not None and args.engine != "ray":
        raise _engine_needed(args.address)
    if args.engine == "process":
        raise ConfigError("tune evaluates trials in this process or on Ray: pass --engine "
                          "ray, or leave --engine out.")
    model, batches, load_s = _prepare(args, out)
    from .cli_models import class_folders, load_eval_data
    inputs, labels, classes = load_eval_data(args.eval_data, batches, model,
                                             progress=not args.quiet)
    eval_fn = Top1(inputs, labels, batch_size=args.batch_size)
    samples = len(eval_fn.inputs[0])
    which = eval_fn.scored_output(model.net)
    if eval_fn.labels is None:
        eval_fn = Top1(eval_fn.inputs, eval_fn.predictions(model.net), args.batch_size)
        out.text("score: top-1 agreement with fp32%s on %d samples" % (which, samples))
    else:
        out.text("score: top-1 accuracy%s on %d labelled samples%s"
                 % (which, samples, class_folders(classes)))
    start = time.perf_counter()
    qnet, result = gq.tune(model.net, batches, eval_fn, tolerance=args.tolerance,
                           max_trials=args.max_trials, engine=args.engine,
                           address=args.address,
                           config=quant_config(args, model.num_inputs))
    tune_s = time.perf_counter() - start
    out.text(str(result))
    trials = [dict(vars(t), exclude=list(t.exclude)) for t in result.trials]
    state = {"fp32_score": result.fp32_score, "tolerance": result.tolerance,
             "stopped": result.stopped.name.lower(), "trials": trials,
             "chosen": result.trials.index(result.chosen)}
    summary = _write_model(args, out, qnet, model, batches, tune_s)
    summary["files"]["tune"] = write_json(args.out + "-tune.json", state)
    out.result(dict(summary, tune=state, seconds={"load": round(load_s, 3),
                                                  "tune": round(tune_s, 3)}))
    return EXIT_OK


class Top1:
    """``eval_fn`` of ``tune``: top-1 accuracy of ``model`` on ``inputs`` against ``labels``.

    ``inputs`` is a list of arrays, one per model input, of N samples each. A plain class
    of this module, so that Ray can send it to its workers.
    """

    def __init__(self, inputs, labels, batch_size=64):
        self.inputs, self.labels, self.batch_size = inputs, labels, batch_size

    def predictions(self, model):
        """Top-1 class of every sample (batched)."""
        import mxnet as mx
        import numpy as np
        parts = []
        for i in range(0, len(self.inputs[0]), self.batch_size):
            out = model(*[mx.nd.array(a[i:i + self.batch_size]) for a in self.inputs])
            out = out[0] if isinstance(out, (list, tuple)) else out
            parts.append(out.argmax(axis=1).asnumpy().astype(np.int64))
        return np.concatenate(parts)

    def __call__(self, model):
        return float((self.predictions(model) == self.labels).mean())

    def scored_output(self, model):
        """`` of its first output (of 2)`` where ``model`` returns several (the first is
        scored); empty otherwise."""
        import mxnet as mx
        out = model(*[mx.nd.array(a[:1]) for a in self.inputs])
        count = len(out) if isinstance(out, (list, tuple)) else 1
        return " of its first output (of %d)" % count if count > 1 else ""


def _input_shapes(batches):
    from .cli_models import input_shapes
    return input_shapes(batches)


def _export(qnet, prefix):
    """Write the int8 export; the written paths by role."""
    return {str(k): str(v) for k, v in qnet.export(prefix).items()}


def _plot_calibration(qnet, directory, out):
    from . import plot
    from .errors import ConfigError
    try:
        paths = plot.plot_calibration(qnet, directory)
    except ConfigError as err:
        if "matplotlib" in str(err):
            raise
        _log.warning("No calibration plots: %s", err)
        return []
    out.text("plots: %s (thresholds.png and %d histograms)" % (directory, len(paths) - 1))
    return paths


def _export_files(prefix):
    """``{role: (path, bytes)}`` of the int8 export beside a report, if there is one."""
    from .export import file_names
    names = file_names(prefix)
    if not all(os.path.isfile(p) for p in names.values()):
        return {}
    return {role: (p, os.path.getsize(p)) for role, p in names.items()}


def _cmd_report(args, out):
    from .cli_models import load_report
    from .report import QuantReport
    report, state, path = load_report(args.prefix)
    if args.fp32_only:
        report = QuantReport([r for r in report if not r.quantized], backend=report.backend,
                             dtype=report.dtype, granularity=report.granularity,
                             calibrator=report.calibrator)
    out.text("%s (%s)" % (state.get("model", "?"), path))
    out.text(str(report))
    files = next((_export_files(path[:-len(end)]) for end in ("-report.json", "-meta.json")
                  if path.endswith(end)), {})
    for role, (name, size) in sorted(files.items()):
        out.text("  %-8s %s (%.2f MB)" % (role, name, size / 1e6))
    out.result(dict(report.to_dict(), model=state.get("model"), coverage=_coverage(report),
                    files={role: {"path": n, "bytes": b} for role, (n, b) in files.items()}))
    return EXIT_OK


def _cmd_compare(args, out):
    from . import debug
    _positive(args.num_batches, "--num-batches")
    _positive(args.top, "--top")
    model, batches, _ = _prepare(args, out)
    qnet, _ = _quantize(args, model, batches)
    result = debug.compare(qnet, batches, num_batches=args.num_batches, floor=args.floor)
    rows = list(result)[:args.top] if args.top else list(result)
    plots = []
    if args.plot:
        from . import plot
        plots = [plot.plot_sqnr(rows, os.path.join(args.plot, "sqnr.png"),
                                title="%s: int8 vs fp32 per layer (worst first)" % model.name)]
    shown = type(result)(rows, output_sqnr_db=result.output_sqnr_db,
                         output_cosine=result.output_cosine, batches=result.batches,
                         outputs=result.outputs)
    out.text(str(shown))
    worst = [r for r in rows if r.quantized][:1]
    if worst:
        out.text("worst int8 layer: %s; to keep it in fp32: --exclude %s"
                 % (worst[0].layer, worst[0].layer))
    if args.floor and rows:
        behind = result.by_floor_gap()[0]
        out.text("furthest behind the 8-bit floor: %s (+%.1f dB)%s"
                 % (behind.layer, behind.floor_gap_added_db,
                    "" if behind.floor_gap_added_db > 6.0 else
                    ": every layer is within 6 dB of it (weight rounding and 8-bit "
                    "arithmetic), int8 is about as good as its ranges allow"))
    timing = debug.layer_timing(qnet, next(iter(batches))) if args.timing else None
    if timing is not None:
        out.text(str(timing))
        for slow in timing.slower:
            out.text("slower in int8: %s (%.2fx); to keep it in fp32: --exclude %s"
                     % (slow.layer, slow.speedup, slow.layer))
    if plots:
        out.text("plot: %s" % plots[0])
    out.result(dict(shown.to_dict(), model=model.name, plots=plots,
                    timing=timing.to_dict() if timing is not None else None))
    return EXIT_OK


def _time_calls(block, x, warmup, repeat, progress, desc):
    import mxnet as mx
    from .progress import progress_bar
    for _ in range(warmup):
        block(*x)
    mx.nd.waitall()
    times = []
    for _ in progress_bar(range(repeat), enabled=progress, desc=desc, total=repeat,
                          unit="call"):
        start = time.perf_counter()
        block(*x)
        mx.nd.waitall()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cmd_bench(args, out):
    import mxnet as mx
    import numpy as np
    from . import kernels
    from .errors import ConfigError
    try:
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError("--batch-sizes must be comma-separated positive integers such as "
                          "1,16, got %r." % (args.batch_sizes,))
    _positive(args.repeat, "--repeat")
    if args.warmup < 0:
        raise ConfigError("--warmup must be >= 0, got %r." % (args.warmup,))
    model, batches, _ = _prepare(args, out)
    qnet, _ = _quantize(args, model, batches)
    model.net.hybridize(static_alloc=True, static_shape=True)
    first = batches[0] if isinstance(batches[0], tuple) else (batches[0],)
    sample_shape = tuple(first[0].shape[1:])
    rows = []
    for size in sizes:
        # The calibration samples, repeated to the batch size (every input of the model).
        x = [mx.nd.array(np.resize(a, (size,) + a.shape[1:])) for a in first]
        fp32 = _time_calls(model.net, x, args.warmup, args.repeat, not args.quiet,
                           "fp32 batch %d" % size)
        int8 = _time_calls(qnet, x, args.warmup, args.repeat, not args.quiet,
                           "int8 batch %d" % size)
        rows.append({"batch": size, "fp32_ms": fp32 * 1e3, "int8_ms": int8 * 1e3,
                     "fp32_per_s": size / fp32, "int8_per_s": size / int8,
                     "speedup": fp32 / int8})
    out.text("%-6s %12s %12s %14s %14s %9s" % ("batch", "fp32 ms", "int8 ms", "fp32 samples/s",
                                               "int8 samples/s", "speedup"))
    for r in rows:
        out.text("%-6d %12.2f %12.2f %14.1f %14.1f %8.2fx" % (
            r["batch"], r["fp32_ms"], r["int8_ms"], r["fp32_per_s"], r["int8_per_s"],
            r["speedup"]))
    shapes = [tuple(a.shape[1:]) for a in first]     # per sample: () for one value each
    out.text("(median of %d calls, %s, inputs %s; calibration samples repeated to each "
             "batch size; speedup = fp32 time / int8 time; oneDNN: %s)" % (
                 args.repeat, model.name,
                 ", ".join("x".join(map(str, s)) or "scalar" for s in shapes),
                 kernels.describe()))
    out.result({"model": model.name, "repeat": args.repeat, "input_shape": sample_shape,
                "input_shapes": shapes, "kernels": kernels.describe(), "results": rows})
    return EXIT_OK


def _cmd_demo(args, out):
    from . import demo
    _positive(args.max_photos, "--max-photos")
    _positive(args.repeat, "--repeat")
    result = demo.run_demo(model=args.model, max_photos=args.max_photos, repeat=args.repeat,
                           calibrator=args.calibrator)
    out.text(demo.format_summary(result))
    out.result(result)
    return EXIT_OK


# ---------------------------------------------------------------------- entry point
def _configure_logging(verbosity, quiet):
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO,
                                         logging.DEBUG)[min(verbosity, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("gluon_quant")
    saved = (root.level, root.propagate)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return handler, saved


def main(argv=None, *, stdout=None):
    """Run ``gluon-quant`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Parameters
    ----------
    argv : list of str, optional
    stdout : file, optional
        Where results go (default ``sys.stdout``); errors always go to ``sys.stderr``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:   # --help, --version and usage errors
        return int(exit_.code or 0)
    out = _Output(args, stdout if stdout is not None else sys.stdout)
    handler, saved = _configure_logging(args.verbose, args.quiet)
    try:
        from .errors import GluonQuantError
        try:
            return args.func(args, out)
        except GluonQuantError as err:
            if args.verbose:
                traceback.print_exc(file=sys.stderr)
            print("gluon-quant %s: error: %s" % (args.command, _one_line(err)), file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("gluon-quant: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:     # the reader went away (`... --json | head`): stop quietly
            if stdout is None:      # and let Python's exit flush into nothing
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_PIPE
        except Exception as err:  # pylint: disable=broad-except
            if args.verbose:
                traceback.print_exc(file=sys.stderr)
            print("gluon-quant %s: internal error: %s: %s (rerun with --verbose for the "
                  "traceback)" % (args.command, type(err).__name__, _one_line(err)),
                  file=sys.stderr)
            return EXIT_INTERNAL
    finally:
        root = logging.getLogger("gluon_quant")
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]


def _one_line(err):
    text = " ".join(str(err).split())
    return text if len(text) <= 600 else text[:597] + "..."


if __name__ == "__main__":
    sys.exit(main())
