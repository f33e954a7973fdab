"""Execute every tutorial notebook in notebooks/ so that none of them rots.

The kernel is the Python running the tests (a kernelspec written to a temporary folder
points at ``sys.executable``), so the notebooks see the same installed gluon_quant as the
tests, in a fresh CI virtual environment as on a developer's machine.
"""
import glob
import os
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
#: Heavier notebooks: run with ``pytest -m slow``.
SLOW = {"04_detection.ipynb"}


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A ``python3`` kernelspec that runs this interpreter."""
    from ipykernel.kernelspec import install
    prefix = tmp_path_factory.mktemp("kernel")
    install(prefix=str(prefix), kernel_name="python3")
    spec = os.path.join(prefix, "share", "jupyter", "kernels")
    return [spec]


def _execute(path, kernel_dirs):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    ksm = KernelSpecManager(kernel_dirs=kernel_dirs)
    spec = ksm.get_kernel_spec("python3")
    spec.argv[0] = sys.executable
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ksm)
    km._kernel_spec = spec  # noqa: SLF001  pin this interpreter whatever the spec file says
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, km=km, timeout=300,
                                     resources={"metadata": {"path": ROOT}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def test_every_notebook_is_listed():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_custom_calibrator.ipynb", "03_debug_accuracy.ipynb",
            "04_detection.ipynb"} <= names


@pytest.mark.parametrize("path", [
    pytest.param(p, id=os.path.basename(p),
                 marks=[pytest.mark.slow] if os.path.basename(p) in SLOW else [])
    for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_dirs):
    nb, seconds = _execute(path, kernel_dirs)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # Every notebook shows results, not only silence.
    assert sum(o.output_type in ("stream", "execute_result", "display_data")
               for o in outputs) >= 3
    print("%s ran in %.1f s" % (os.path.basename(path), seconds))
