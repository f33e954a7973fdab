"""The package's structure, measured from its code: one adapter to MXNet internals, no
private reads across objects, no import cycles, a thin runtime block, modules of sane size."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gluon_quant"
ADAPTER = PACKAGE / "_mxnet"        # the adapter package: its modules only

#: Private attributes read on objects of the reading class itself, in its own module
#: (merging two statistics, copying a table): ``module -> names of such objects``.
SAME_CLASS = {
    "calib/statistics.py": {"other", "new"},
    "calib/table.py": {"other"},
    "calib/base.py": {"other", "calibrator", "target"},   # target: a Calibrator subclass
    "block.py": {"twin"},
}


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _rel(path):
    try:
        return path.relative_to(PACKAGE).as_posix()
    except ValueError:      # a file outside the package (the scan's own test)
        return path.name


def _private_modules(tree):
    """Names bound to the package's own private modules (``_mxnet``, ``_packing``...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names.update(a.asname or a.name for a in node.names
                         if (a.asname or a.name).startswith("_"))
    return names


def _private_reads(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = _private_modules(tree) | SAME_CLASS.get(_rel(path), set())
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in {"self", "cls"} | allowed:
            continue
        if isinstance(base, ast.Call) and getattr(base.func, "id", None) == "super":
            continue
        unparse = getattr(ast, "unparse", ast.dump)     # Python 3.9+
        found.append("%s:%d %s.%s" % (_rel(path), node.lineno, unparse(base), node.attr))
    return found


def _mxnet_private_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mxnet"):
            for alias in node.names:
                if (alias.asname or "").startswith("_") or alias.name.startswith("_") or \
                        node.module in ("mxnet.contrib.quantization", "mxnet.gluon.block"):
                    found.append("%s:%d from %s import %s" % (_rel(path), node.lineno,
                                                              node.module, alias.name))
    return found


def test_only_the_adapter_touches_mxnet_privates():
    assert (ADAPTER / "__init__.py").is_file()
    offenders = []
    for path in _modules():
        if ADAPTER in path.parents:
            continue
        offenders += _private_reads(path) + _mxnet_private_imports(path)
    assert offenders == [], "\n".join(offenders)


def test_the_check_catches_a_private_read(tmp_path):
    """The scan itself must fail on the patterns it exists to find."""
    bad = tmp_path / "bad.py"
    bad.write_text("from mxnet.gluon import block as _gb\n"
                   "def f(net, p):\n    return net._children, p._data\n")
    assert len(_private_reads(bad)) == 2 and len(_mxnet_private_imports(bad)) == 1


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path, known):
    """Package modules ``path`` imports, anywhere in the file (deferred imports too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                target = module + "." + alias.name
                found.add(target if target in known else module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known and m != name}


def _cycles():
    paths = {_module_name(p): p for p in _modules()}
    graph = {name: _imports(path, paths) for name, path in paths.items()}
    # A package's __init__ re-exports its modules: edges into a package are edges into
    # the module that defines the name, so they are left out of the cycle search.
    packages = {n for n, p in paths.items() if p.name == "__init__.py"}
    graph = {n: {m for m in deps if m not in packages} for n, deps in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_cycles():
    assert _cycles() == []


def test_the_import_graph_is_read():
    """Edges the cycle check must see (deferred imports included)."""
    paths = {_module_name(p): p for p in _modules()}
    assert "gluon_quant.tune" in _imports(PACKAGE / "api.py", paths)          # deferred
    assert "gluon_quant.export" in _imports(PACKAGE / "block.py", paths)      # deferred
    assert "gluon_quant.debug.metrics" in _imports(PACKAGE / "debug" / "floor.py", paths)


def test_runtime_block_is_thin():
    tree = ast.parse((PACKAGE / "block.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
               and n.name == "QuantizedHybridBlock")
    assert cls.end_lineno - cls.lineno + 1 <= 200


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_modules_stay_under_800_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 800


def test_settings_live_in_one_config():
    """No entry point spells the settings out again: they take ``config`` and **settings."""
    import inspect
    import gluon_quant as gq
    from gluon_quant.zoo import get_model
    fields = set(gq.QuantConfig.fields())
    for fn in (gq.quantize, gq.tune, gq.QuantizedHybridBlock.__init__,
               gq.QuantizedHybridBlock.clone, get_model):
        params = inspect.signature(fn).parameters
        assert not fields & set(params), fn.__qualname__
        assert any(p.kind is p.VAR_KEYWORD for p in params.values()), fn.__qualname__
