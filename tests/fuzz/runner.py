"""Quantize generated nets, each in its own process, and record what happened to each.

:func:`run_cases` (called by the test) starts one server, ``python -m fuzz.runner``, which
imports MXNet and gluon_quant once and runs no MXNet operator itself; it forks one child
per net (MXNet's fork handlers stop and restart its engine around ``fork``), at most
``workers`` at a time. A child generates its net, quantizes it with the defaults, and
writes one JSON record; a child that dies (signal, abort) or runs past the time limit is
recorded as ``crash`` or ``hang`` by the server. Forking saves the 2-5 s import of MXNet
per net that a fresh interpreter would cost. In a forked child MXNet runs its operators
on one OpenMP thread, so the speed ratios are single-threaded.

Outcomes (``OUTCOMES``):

``ok``          quantize returned and every output has cosine >= ``COSINE_MIN``
``floor``       some output's cosine is lower, but so is the net's own 8-bit activation
                floor (``gluon_quant.debug.activation_floor`` on the held-out batches), and
                int8 is within ``FLOOR_MARGIN_DB`` of it: no 8-bit int8 net could do better
``inaccurate``  quantize returned but some output's cosine is lower (or not finite)
``refused``     quantize raised a :class:`gluon_quant.GluonQuantError` (allowed)
``exception``   quantize, or the int8 net, raised another exception type
``crash``       the child died by a signal or exited without a record
``hang``        the child ran past the time limit
``generator``   the fp32 net could not be built or run: a bug of ``netgen``
"""
import argparse
import faulthandler
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

__all__ = ["OUTCOMES", "COSINE_MIN", "QUANTIZABLE_OPS", "run_case", "run_cases"]

OUTCOMES = ("ok", "floor", "inaccurate", "refused", "exception", "crash", "hang",
            "generator")
COSINE_MIN = 0.99
#: How far (output SQNR, dB) int8 may sit below a floor that is itself under COSINE_MIN.
FLOOR_MARGIN_DB = 1.0
#: Operators counted in the int8 share (``LayerReport.op``).
QUANTIZABLE_OPS = ("Convolution", "FullyConnected", "RNN")
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ one net (child)
def _outputs(out):
    return [o.asnumpy() for o in (out if isinstance(out, (list, tuple)) else [out])]


def _short_path(path):
    parts = path.replace("\\", "/").split("/")
    for root in ("gluon_quant", "mxnet", "fuzz"):
        if root in parts:
            return "/".join(parts[parts.index(root):])
    return parts[-1]


def _where(err):
    """The innermost MXNet, gluon_quant and fuzz-runner frames of the traceback (an
    asynchronous MXNet error surfaces where the result is read, in the runner)."""
    frames = traceback.extract_tb(err.__traceback__)
    picked = []
    for root in ("mxnet", "gluon_quant", "fuzz"):
        inside = [f for f in frames if "/%s/" % root in f.filename.replace("\\", "/")]
        if inside:
            picked.append("%s:%d" % (_short_path(inside[-1].filename), inside[-1].lineno))
    return " <- ".join(picked)


def _error_text(err):
    """``Type: the line that says what failed``, then the whole message.

    MXNet's messages start with ``Traceback (most recent call last):``; the line that
    matters is the ``Check failed`` or ``Error in operator`` one.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "Check failed" in line or "Error in operator" in line]
    head = (useful or [line for line in lines if not line.startswith(("Traceback", "File "))]
            or [""])[0]
    text = "%s: %s" % (type(err).__name__, head)
    if len(lines) > 1:
        text += "\n" + "\n".join(lines)
    return text[:3000]


def _median_seconds(block, x, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for o in _outputs(block(x)):
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(seed, *, repeat=9, on_generated=None):
    """Generate net ``seed``, quantize it with the defaults, and measure it.

    Returns
    -------
    dict
        ``seed``, ``kind``, ``layer_kinds``, ``outcome`` (one of ``OUTCOMES``),
        ``cosine`` (the lowest over the outputs, each flattened over the held-out batches),
        ``int8_layers`` ``[quantized, total]`` of the ``QUANTIZABLE_OPS`` layers,
        ``fp32_reasons`` (why the others stayed fp32), ``speed_ratio`` (fp32 seconds over
        int8 seconds per held-out batch, medians; above 1 is faster), ``error``, ``where``.
        ``on_generated(record)`` is called once the net is built, before quantizing it.
    """
    import mxnet as mx
    import numpy as np

    import gluon_quant as gq
    from gluon_quant.debug.metrics import cosine
    from fuzz import netgen

    record = {"seed": seed, "kind": netgen.kind_of(seed), "layer_kinds": [], "outcome": None, "cosine": None,
              "int8_layers": None, "fp32_reasons": [], "speed_ratio": None, "error": None,
              "where": None, "seconds": None}
    start = time.perf_counter()
    try:
        case = netgen.generate(seed)
        record.update(kind=case.kind, layer_kinds=list(case.layer_kinds))
        refs = [_outputs(case.net(mx.nd.array(x))) for x in case.held_out]
    except Exception as err:                       # noqa: BLE001 - recorded, not hidden
        record.update(outcome="generator", error=_error_text(err), where=_where(err))
        return record
    if on_generated is not None:
        on_generated(record)
    try:
        qnet = gq.quantize(case.net, case.calib)
        outs = [_outputs(qnet(mx.nd.array(x))) for x in case.held_out]
        report = qnet.report()
    except gq.GluonQuantError as err:
        record.update(outcome="refused", error=_error_text(err), where=_where(err))
        return record
    except Exception as err:                       # noqa: BLE001 - the finding itself
        record.update(outcome="exception", error=_error_text(err), where=_where(err))
        return record
    layers = [r for r in report if r.op in QUANTIZABLE_OPS]
    record["int8_layers"] = [sum(r.quantized for r in layers), len(layers)]
    record["fp32_reasons"] = sorted({"%s: %s" % (r.op, r.reason) for r in layers
                                     if not r.quantized})
    cosines = []
    for i in range(len(refs[0])):
        if len(outs[0]) != len(refs[0]) or any(o[i].shape != r[i].shape
                                                for o, r in zip(outs, refs)):
            record.update(outcome="inaccurate", error="int8 outputs have other shapes: %s vs "
                          "%s" % ([o.shape for o in outs[0]], [r.shape for r in refs[0]]))
            return record
        ref = np.concatenate([r[i].ravel() for r in refs])
        out = np.concatenate([o[i].ravel() for o in outs])
        cosines.append(cosine(ref, out) if np.isfinite(out).all() else float("nan"))
    record["cosine"] = min(cosines)
    accurate = all(c >= COSINE_MIN for c in cosines)       # False for NaN
    record["outcome"] = "ok" if accurate else "inaccurate"
    if not accurate:
        record["error"] = "cosine per output: %s" % ", ".join("%.4f" % c for c in cosines)
        if all(np.isfinite(c) for c in cosines):
            from gluon_quant.debug import activation_floor
            floor = activation_floor(qnet, [mx.nd.array(x) for x in case.held_out])
            record["floor"] = {"int8_sqnr_db": floor.int8_sqnr_db, "gap_db": floor.gap_db,
                               "floor_cosine": floor.floor_cosine}
            if floor.floor_cosine < COSINE_MIN and floor.gap_db <= FLOOR_MARGIN_DB:
                record["outcome"] = "floor"
    x = mx.nd.array(case.held_out[0])
    case.net.hybridize(static_alloc=True, static_shape=True)
    for block in (case.net, qnet):
        _outputs(block(x))
    fp32_s = _median_seconds(case.net, x, repeat)
    int8_s = _median_seconds(qnet, x, repeat)
    record["speed_ratio"] = fp32_s / int8_s
    record["seconds"] = time.perf_counter() - start
    return record


# ------------------------------------------------------------- the server (forks)
def _write(path, record):
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)


def _child(seed, folder):
    """In the forked child: run one case, write its record, never return."""
    status = 0
    try:
        log = os.open(os.path.join(folder, "%d.log" % seed),
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        faulthandler.enable()            # a fatal signal leaves the Python stack in the log
        started = os.path.join(folder, "%d.started.json" % seed)
        record = run_case(seed, on_generated=lambda partial: _write(started, partial))
        _write(os.path.join(folder, "%d.json" % seed), record)
    except BaseException:                           # noqa: BLE001 - the child must exit
        traceback.print_exc()
        status = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _log_tail(folder, seed, chars=1500):
    try:
        with open(os.path.join(folder, "%d.log" % seed), errors="replace") as handle:
            return handle.read()[-chars:]
    except OSError:
        return ""


_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _fatal_frames(log):
    """``where`` of a fatal signal from faulthandler's stack: the innermost MXNet frame
    and the innermost gluon_quant frame."""
    frames = []
    for path, line, func in _FRAME.findall(log):
        for root in ("mxnet", "gluon_quant"):
            parts = path.replace("\\", "/").split("/")
            if root in parts and not any(f.startswith(root + "/") for f in frames):
                frames.append("%s:%s %s" % ("/".join(parts[parts.index(root):]), line, func))
    return " <- ".join(frames) or None


def _death(folder, seed, kind, status, hung):
    """The record of a child that wrote none (with the net's layer kinds if it got that far)."""
    record = {"seed": seed, "kind": kind}
    try:
        with open(os.path.join(folder, "%d.started.json" % seed)) as handle:
            record.update(json.load(handle))
    except OSError:
        pass
    if hung:
        outcome, why = "hang", "killed after the time limit"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        outcome, why = "crash", "killed by %s" % signal.Signals(sig).name
    else:                                # MXNet's own SIGSEGV handler exits with 255
        outcome, why = "crash", "exited with status %d and no record" % os.WEXITSTATUS(status)
        for fatal in ("Segmentation fault", "Aborted", "free(): invalid pointer"):
            if fatal in _log_tail(folder, seed):
                why += " (%s)" % fatal
    tail = _log_tail(folder, seed, chars=6000)
    record.update(outcome=outcome, where=_fatal_frames(tail),
                  error="%s; log tail:\n%s" % (why, tail[-1500:]))
    return record


def serve(seeds, *, workers, timeout_s, folder):
    """Fork one child per seed, ``workers`` at a time; print ``RESULT {json}`` per seed."""
    # MXNet and gluon_quant (through netgen) and the photo readers are imported once,
    # here, and inherited by every child; no MXNet operator runs in this process.
    from gluon_quant.zoo.samples import sample_images
    from fuzz import netgen

    sample_images()
    pending, running = list(seeds), {}
    while pending or running:
        while pending and len(running) < workers:
            seed = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(seed, folder)
            running[pid] = (seed, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for child, (seed, started) in list(running.items()):
                if not isinstance(started, str) and now - started > timeout_s:
                    os.kill(child, signal.SIGKILL)
                    running[child] = (seed, "hung")
            time.sleep(0.02)
            continue
        seed, started = running.pop(pid)
        path = os.path.join(folder, "%d.json" % seed)
        if os.path.exists(path) and not os.WIFSIGNALED(status):
            with open(path) as handle:
                record = json.load(handle)
        else:
            record = _death(folder, seed, netgen.kind_of(seed), status, started == "hung")
        print("RESULT " + json.dumps(record), flush=True)


# ------------------------------------------------------------- the parent's side
def run_cases(seeds, *, workers=2, timeout_s=180, folder=None, max_restarts=3):
    """Run every seed in child processes; returns ``{seed: record}``.

    The children run with ``OMP_NUM_THREADS=1``. If the server itself dies, the seeds it
    had not reported are run again by a new one (at most ``max_restarts`` times).
    """
    import gluon_quant
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gluon_quant.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, _TESTS, os.environ.get("PYTHONPATH")) if p)
    folder = folder or tempfile.mkdtemp(prefix="gq-fuzz-")
    results, remaining = {}, list(seeds)
    for _ in range(max_restarts + 1):
        if not remaining:
            break
        cmd = [sys.executable, "-m", "fuzz.runner", "--workers", str(workers),
               "--timeout", str(timeout_s), "--folder", folder] + [str(s) for s in remaining]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_TESTS, env=env,
                              check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                record = json.loads(line[7:])
                results[record["seed"]] = record
        remaining = [s for s in remaining if s not in results]
        if remaining and proc.returncode == 0:
            raise RuntimeError("the fuzz server exited without reporting seeds %s:\n%s"
                               % (remaining, proc.stderr[-3000:]))
    for seed in remaining:
        results[seed] = {"seed": seed, "outcome": "crash",
                         "error": "the fuzz server died %d times" % (max_restarts + 1)}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seeds", nargs="+", type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--folder", required=True)
    args = parser.parse_args(argv)
    serve(args.seeds, workers=args.workers, timeout_s=args.timeout, folder=args.folder)


if __name__ == "__main__":
    main()
