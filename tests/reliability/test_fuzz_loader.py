"""Fuzzing the loaders: a mutated file either loads to the identical model or is refused.

Exports (``PREFIX-symbol.json``, ``PREFIX-int8.params``, ``PREFIX-meta.json``) and
calibration tables are mutated hundreds of times: truncated, bytes flipped, JSON fields
edited, files swapped between two exports.  Every mutated copy is loaded in a child
process (many per child, so that MXNet is imported once per batch of cases), which
reports one JSON line per case.  A child that dies (segfault, abort) or hangs is caught
by the parent, the case it was on is counted as a crash, and the rest are re-run in a
new child.

Allowed outcomes: ``same`` (loads, outputs bit-identical to the original export) or
``error`` (a :class:`GluonQuantError`).  Anything else fails the test: ``differs`` (a
silently different model), ``foreign`` (another exception type), ``crash``, ``hang``.
Re-signed mutations (the damaged file's size and sha256 rewritten in the metadata, as a
deliberate editor would) exercise the structural checks behind the checksums; for them a
different model is a legitimate outcome, but crashes and foreign exceptions are not.
"""
import copy
import hashlib
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant.zoo.batchnorm import reestimate_batchnorm

from conftest import build_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = {"symbol": "-symbol.json", "params": "-int8.params", "meta": "-meta.json"}
NAME = "m"
FAST_ITERATIONS = 200
SLOW_ITERATIONS = 2000
CHILD_TIMEOUT_S = 300

# The child: loads each case, reports START before and one RESULT line after it.
CHILD = r"""
import json, sys
import numpy as np
import mxnet as mx
import gluon_quant as gq

job = json.load(open(sys.argv[1]))
x = mx.nd.array(np.load(job["input"]))

def flat(out):
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in flat(o)]
    return [out.asnumpy()]

ref = None
if job["kind"] == "export":
    ref = flat(gq.QuantizedSymbolBlock.imports(job["pristine"])(x))
    print("PRISTINE " + json.dumps(float(sum(np.abs(r).sum() for r in ref))), flush=True)
else:
    ref = gq.CalibrationTable.load(job["pristine"]).to_dict()
for case_id, path in job["cases"]:
    print("START " + case_id, flush=True)
    try:
        if job["kind"] == "export":
            out = flat(gq.QuantizedSymbolBlock.imports(path)(x))
            same = len(out) == len(ref) and all(
                o.dtype == r.dtype and o.shape == r.shape and np.array_equal(o, r)
                for o, r in zip(out, ref))
        else:
            same = gq.CalibrationTable.load(path).to_dict() == ref
        outcome, detail = ("same" if same else "differs"), ""
    except gq.GluonQuantError as err:
        outcome, detail = "error", type(err).__name__ + ": " + str(err)[:300]
    except Exception as err:
        outcome, detail = "foreign", type(err).__name__ + ": " + str(err)[:300]
    print("RESULT " + json.dumps({"id": case_id, "outcome": outcome, "detail": detail}),
          flush=True)
"""


# ------------------------------------------------------------------------ assets
def _export(seed, folder):
    mx.random.seed(seed)
    rs = np.random.RandomState(seed)
    net = build_cnn()
    net.initialize(mx.init.Xavier())
    data = rs.rand(16, 1, 28, 28).astype("float32")
    reestimate_batchnorm(net, mx.nd.array(data))
    qnet = gq.quantize(net, [data[:8], data[8:]], progress=False)
    os.makedirs(folder, exist_ok=True)
    qnet.export(os.path.join(folder, NAME))
    files = {role: open(os.path.join(folder, NAME + suffix), "rb").read()
             for role, suffix in ROLES.items()}
    return qnet, files


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    qnet, files_a = _export(1, str(root / "a"))
    _, files_b = _export(2, str(root / "b"))
    x = np.random.RandomState(9).rand(4, 1, 28, 28).astype("float32")
    np.save(root / "x.npy", x)
    table_path = root / "table.json"
    qnet.calibration_table.save(str(table_path))
    return {"root": root, "a": files_a, "b": files_b, "x": root / "x.npy",
            "expected": qnet(mx.nd.array(x)).asnumpy(), "table": table_path.read_bytes()}


# ------------------------------------------------------------------------ mutations
_ODD_VALUES = [None, -1, 0, 1, 2 ** 63, 1e308, -1e-300, "", "x", "../../etc/passwd", [], {},
               [[]], True, "9.0", "0.9", "float64", "int8", {"name": "data"}, "a" * 5000]


def _paths(tree, prefix=()):
    """Every (path, value) inside a JSON tree."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _paths(value, prefix + (index,))


def _edit_json(rng, data):
    """Change, delete or retype one random field of a JSON document."""
    tree = json.loads(data.decode("utf-8"))
    paths = [p for p, _ in _paths(tree) if p]
    path = paths[rng.randint(len(paths))]
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    key, value = path[-1], parent[path[-1]]
    choice = rng.randint(4)
    if choice == 0 and isinstance(parent, dict):
        del parent[key]
    elif choice == 1 and isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = value * [2, -1, 0.5, 1 + 1e-7][rng.randint(4)] + rng.randint(2)
    elif choice == 2 and isinstance(value, str) and value:
        pos = rng.randint(len(value))
        parent[key] = value[:pos] + chr((ord(value[pos]) + 1 - 32) % 95 + 32) + value[pos + 1:]
    else:
        parent[key] = copy.deepcopy(_ODD_VALUES[rng.randint(len(_ODD_VALUES))])
    return json.dumps(tree).encode("utf-8"), "/".join(map(str, path))


def _flip(rng, data):
    data = bytearray(data)
    count = 1 + rng.randint(8)
    for _ in range(count):
        data[rng.randint(len(data))] ^= 1 << rng.randint(8)
    return bytes(data), "%d bits" % count


def _truncate(rng, data):
    keep = int(rng.randint(len(data)))
    return data[:keep], "to %d of %d bytes" % (keep, len(data))


def _resign(files, role):
    """Rewrite ``role``'s size and sha256 in the metadata, as a deliberate editor would."""
    meta = json.loads(files["meta"].decode("utf-8"))
    meta["files"][role]["size"] = len(files[role])
    meta["files"][role]["sha256"] = hashlib.sha256(files[role]).hexdigest()
    files["meta"] = json.dumps(meta, indent=1).encode("utf-8")


def export_mutation(rng, a, b):
    """One mutated copy of export ``a``: (files, description, re-signed?)."""
    files = dict(a)
    kind = rng.randint(7)
    if kind == 0:
        role = list(ROLES)[rng.randint(3)]
        files[role], how = _truncate(rng, files[role])
        return files, "truncate %s %s" % (role, how), False
    if kind == 1:
        role = list(ROLES)[rng.randint(3)]
        files[role], how = _flip(rng, files[role])
        return files, "flip %s %s" % (role, how), False
    if kind == 2:
        files["meta"], where = _edit_json(rng, files["meta"])
        return files, "edit meta %s" % where, False
    if kind == 3:
        roles = [r for r in ROLES if rng.rand() < 0.5][:2] or ["params"]   # all 3 = export b
        for role in roles:
            files[role] = b[role]
        return files, "swap %s from another export" % "+".join(roles), False
    if kind == 4:
        files["symbol"], where = _edit_json(rng, files["symbol"])
        _resign(files, "symbol")
        return files, "re-signed edit symbol %s" % where, True
    if kind == 5:
        files["params"], how = _flip(rng, files["params"])
        _resign(files, "params")
        return files, "re-signed flip params %s" % how, True
    files["params"], how = _truncate(rng, files["params"])
    _resign(files, "params")
    return files, "re-signed truncate params %s" % how, True


def table_mutation(rng, data):
    kind = rng.randint(3)
    if kind == 0:
        return _truncate(rng, data)[0], "truncate"
    if kind == 1:
        return _flip(rng, data)[0], "flip"
    return _edit_json(rng, data)[0], "edit"


# ------------------------------------------------------------------------ running
def run_children(kind, pristine, cases, x_path, folder):
    """Load every ``(id, path)`` in child processes; return ``{id: (outcome, detail)}``."""
    results = {}
    remaining = list(cases)
    while remaining:
        job = os.path.join(folder, "job.json")
        with open(job, "w") as handle:
            json.dump({"kind": kind, "pristine": pristine, "cases": remaining,
                       "input": str(x_path)}, handle)
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, job], capture_output=True,
                                  text=True, cwd=ROOT, timeout=CHILD_TIMEOUT_S, check=False)
            stdout, died = proc.stdout, proc.returncode != 0
        except subprocess.TimeoutExpired as err:
            stdout, died = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) \
                else (err.stdout or ""), "hang"
        started = None
        for line in stdout.splitlines():
            if line.startswith("START "):
                started = line[6:]
            elif line.startswith("RESULT "):
                record = json.loads(line[7:])
                results[record["id"]] = (record["outcome"], record["detail"])
                started = None
            elif line.startswith("PRISTINE "):
                pass
        if "PRISTINE " not in stdout and kind == "export" and not results:
            raise AssertionError("the pristine export did not load: %s" % stdout[-2000:])
        if died and started is not None:
            results[started] = ("hang" if died == "hang" else "crash", stdout[-300:])
        elif died and started is None and not any(c[0] in results for c in remaining):
            raise AssertionError("child failed before the first case")
        remaining = [c for c in remaining if c[0] not in results]
    return results


def _fuzz_exports(assets, tmp_path, iterations, seed):
    rng = np.random.RandomState(seed)
    pristine = str(assets["root"] / "a" / NAME)
    cases, described = [], {}
    for i in range(iterations):
        files, what, resigned = export_mutation(rng, assets["a"], assets["b"])
        folder = tmp_path / ("case%04d" % i)
        folder.mkdir()
        for role, suffix in ROLES.items():
            (folder / (NAME + suffix)).write_bytes(files[role])
        case_id = "case%04d" % i
        cases.append((case_id, str(folder / NAME)))
        described[case_id] = (what, resigned)
    results = run_children("export", pristine, cases, assets["x"], str(tmp_path))
    return results, described


def _check(results, described):
    counts = {}
    bad = []
    for case_id, (outcome, detail) in sorted(results.items()):
        what, resigned = described[case_id]
        counts[outcome] = counts.get(outcome, 0) + 1
        allowed = {"same", "error", "differs"} if resigned else {"same", "error"}
        if outcome not in allowed:
            bad.append((case_id, what, outcome, detail))
    assert not bad, "%d bad outcomes, e.g. %s" % (len(bad), bad[:5])
    return counts


def test_fuzz_exports(assets, tmp_path):
    results, described = _fuzz_exports(assets, tmp_path, FAST_ITERATIONS, seed=0)
    assert len(results) == FAST_ITERATIONS
    counts = _check(results, described)
    print("export fuzz:", FAST_ITERATIONS, "mutations", counts)
    assert counts.get("crash", 0) == 0 and counts.get("hang", 0) == 0
    assert counts.get("error", 0) >= FAST_ITERATIONS // 2       # most damage is detected


@pytest.mark.slow
def test_fuzz_exports_long(assets, tmp_path):
    results, described = _fuzz_exports(assets, tmp_path, SLOW_ITERATIONS, seed=1)
    counts = _check(results, described)
    print("export fuzz (long):", SLOW_ITERATIONS, "mutations", counts)


def _fuzz_tables(assets, tmp_path, iterations, seed):
    rng = np.random.RandomState(seed)
    pristine = tmp_path / "pristine.json"
    pristine.write_bytes(assets["table"])
    cases, described = [], {}
    for i in range(iterations):
        data, what = table_mutation(rng, assets["table"])
        path = tmp_path / ("table%04d.json" % i)
        path.write_bytes(data)
        cases.append(("table%04d" % i, str(path)))
        described["table%04d" % i] = (what, False)
    return run_children("table", str(pristine), cases, assets["x"], str(tmp_path)), described


def test_fuzz_calibration_tables(assets, tmp_path):
    results, described = _fuzz_tables(assets, tmp_path, FAST_ITERATIONS, seed=0)
    assert len(results) == FAST_ITERATIONS
    counts = _check(results, described)
    print("table fuzz:", FAST_ITERATIONS, "mutations", counts)


def test_pristine_export_loads_identical_to_memory(assets, tmp_path):
    block = gq.QuantizedSymbolBlock.imports(str(assets["root"] / "a" / NAME))
    x = mx.nd.array(np.load(assets["x"]))
    assert np.array_equal(block(x).asnumpy(), assets["expected"])


def test_child_crash_is_caught_and_counted(assets, tmp_path, monkeypatch):
    """The harness itself: a child that segfaults mid-batch is counted, the rest re-run."""
    crashing = CHILD.replace('print("START " + case_id, flush=True)',
                             'print("START " + case_id, flush=True)\n'
                             '    if case_id == "c1":\n'
                             '        import ctypes; ctypes.string_at(0)')
    monkeypatch.setitem(globals(), "CHILD", crashing)
    pristine = str(assets["root"] / "a" / NAME)
    cases = [("c0", pristine), ("c1", pristine), ("c2", pristine)]
    results = run_children("export", pristine, cases, assets["x"], str(tmp_path))
    assert results["c0"][0] == "same" and results["c2"][0] == "same"
    assert results["c1"][0] == "crash"
