"""Generated-architecture fuzzing: random user-style nets quantized with the defaults (#13).

Each seed is one net from ``tests/fuzz/netgen.py`` (images, residual CNNs, 1-D signals,
3-D video, sensor sequences, token ids, tabular rows; 40+ layer kinds), quantized by
``gq.quantize(net, calib)`` in its own forked process (``tests/fuzz/runner.py``), so a
crash is recorded instead of killing pytest. Allowed: the int8 net agrees with fp32
(cosine >= 0.99 on every output over held-out batches), or its cosine is lower but so is
the net's own 8-bit activation floor and int8 is within 1 dB of it (``floor``: random deep
nets amplify rounding; seed 156's floor is 0.982), or quantize refuses with a
``GluonQuantError``. Not allowed: a crash, a hang, another exception type, a worse cosine.

The default run has 50 nets (seeds 0-49, about a minute on two cores); ``-m slow`` runs
500 more (seeds 50-549). When the module finishes, a summary is written to the terminal:
outcomes, the share of conv/dense/RNN layers in int8, the median fp32/int8 time ratio
and the failures grouped by cause; every net's record is in ``fuzz/records.jsonl``
under pytest's temporary folder. Reproduce one net with::

    from fuzz import netgen           # with tests/ on sys.path
    case = netgen.generate(SEED)      # case.net, case.calib, case.held_out
"""
import collections
import json
import re
import statistics

import mxnet as mx
import numpy as np
import pytest

from fuzz import netgen, runner

DEFAULT_SEEDS = range(50)
SLOW_SEEDS = range(50, 550)
WORKERS = 2
TIMEOUT_S = 180
ALLOWED = ("ok", "floor", "refused")


def _seed_params():
    return ([pytest.param(s, id="seed%d" % s) for s in DEFAULT_SEEDS]
            + [pytest.param(s, id="seed%d" % s, marks=pytest.mark.slow) for s in SLOW_SEEDS])


def _describe(record):
    lines = ["seed %s (%s): %s" % (record["seed"], record.get("kind"), record["outcome"])]
    if record.get("layer_kinds"):
        lines.append("layer kinds: " + " ".join(record["layer_kinds"]))
    for key in ("cosine", "int8_layers", "fp32_reasons", "where"):
        if record.get(key) not in (None, []):
            lines.append("%s: %s" % (key, record[key]))
    if record.get("error"):
        lines.append("error: " + record["error"])
    return "\n".join(lines)


def _cause(record):
    """A short key grouping records that fail the same way (node numbers left out)."""
    error = (record.get("error") or "").strip().splitlines()
    first = re.sub(r"\d+", "N", error[0]) if error else ""
    if record["outcome"] == "inaccurate":
        first = "cosine < %.2f" % runner.COSINE_MIN
    elif record["outcome"] in ("crash", "hang"):
        first = first.split(";")[0]
    return "%s | %s | %s" % (record["outcome"], record.get("where") or "-", first[:150])


def summarize(records):
    """The summary lines of a run: outcomes, int8 share, speed, failures by cause."""
    records = sorted(records, key=lambda r: r["seed"])
    outcomes = collections.Counter(r["outcome"] for r in records)
    kinds = collections.Counter(r.get("kind") for r in records)
    quantized = sum(r["int8_layers"][0] for r in records if r.get("int8_layers"))
    total = sum(r["int8_layers"][1] for r in records if r.get("int8_layers"))
    ratios = [r["speed_ratio"] for r in records if r.get("speed_ratio")]
    lines = [
        "fuzz: %d nets (%s)" % (len(records), ", ".join("%s %d" % kv for kv in
                                                         sorted(kinds.items(), key=str))),
        "fuzz outcomes: " + ", ".join("%s %d" % (o, outcomes[o]) for o in runner.OUTCOMES),
        "fuzz: conv/dense/RNN layers in int8: %d of %d (%.0f%%) over the %d nets quantize "
        "returned; median int8/fp32 speed ratio %.2f (fp32 time / int8 time per held-out "
        "batch, 1 OpenMP thread)" % (quantized, total, 100.0 * quantized / max(total, 1),
                              sum(1 for r in records if r.get("int8_layers")),
                              statistics.median(ratios) if ratios else float("nan"))]
    by_kind = collections.defaultdict(list)
    for r in records:
        if r.get("int8_layers"):
            by_kind[r["kind"]].append(r)
    for kind, rs in sorted(by_kind.items()):
        q = sum(r["int8_layers"][0] for r in rs)
        t = sum(r["int8_layers"][1] for r in rs)
        lines.append("  %-9s int8 layers %3d of %3d, median speed ratio %.2f, lowest cosine "
                     "%.4f" % (kind, q, t, statistics.median(r["speed_ratio"] for r in rs),
                               min(r["cosine"] for r in rs)))
    causes = collections.defaultdict(list)
    for r in records:
        if r["outcome"] != "ok":
            causes[_cause(r)].append(r["seed"])
    if causes:
        lines.append("fuzz: not ok, by cause (outcome | where | error):")
        for cause, seeds in sorted(causes.items(), key=lambda kv: -len(kv[1])):
            lines.append("  %3d x %s  seeds %s" % (len(seeds), cause, seeds[:12]))
    return lines


@pytest.fixture(scope="module")
def fuzz_records(request, tmp_path_factory):
    """Every selected seed's record, all run at once (``WORKERS`` children at a time)."""
    seeds = sorted({item.callspec.params["seed"] for item in request.session.items
                    if getattr(item, "originalname", None) == "test_generated_net"})
    folder = tmp_path_factory.mktemp("fuzz")
    records = runner.run_cases(seeds, workers=WORKERS, timeout_s=TIMEOUT_S,
                               folder=str(folder)) if seeds else {}
    path = folder / "records.jsonl"
    path.write_text("".join(json.dumps(records[s]) + "\n" for s in sorted(records)))
    yield records
    if records:       # to the terminal even under output capture, as pytest's own summary
        lines = summarize(records.values()) + ["fuzz records: %s" % path]
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print("\n" + "\n".join(lines))


@pytest.mark.parametrize("seed", _seed_params())
def test_generated_net(fuzz_records, seed):
    record = fuzz_records[seed]
    assert record["outcome"] in ALLOWED, _describe(record)


def test_generated_nets_cover_the_layer_kinds(fuzz_records):
    default = [fuzz_records[s] for s in DEFAULT_SEEDS if s in fuzz_records]
    if len(default) < len(DEFAULT_SEEDS):
        pytest.skip("needs the whole default run")
    seen = {k for r in default for k in r.get("layer_kinds") or ()}
    assert {r.get("kind") for r in default} >= set(netgen.INPUT_KINDS)
    assert len(seen) >= 25 and seen <= set(netgen.LAYER_KINDS), sorted(seen)


@pytest.mark.parametrize("seed", [3, 11])
def test_generator_is_deterministic(seed):
    first, second = netgen.generate(seed), netgen.generate(seed)
    assert first.layer_kinds == second.layer_kinds
    assert all(np.array_equal(a, b) for a, b in zip(first.calib + first.held_out,
                                                    second.calib + second.held_out))
    for (name, a), b in zip(first.net.collect_params().items(),
                            second.net.collect_params().values()):
        assert np.array_equal(a.data().asnumpy(), b.data().asnumpy()), name
    x = mx.nd.array(first.held_out[0])
    outs = [net(x) for net in (first.net, second.net)]
    outs = [out if isinstance(out, tuple) else (out,) for out in outs]
    assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(*outs))
