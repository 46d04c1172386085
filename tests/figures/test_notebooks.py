"""Every notebook in notebooks/ runs top to bottom, headless, against a tiny finished run, and
writes the figures it promises; committed notebooks carry no outputs.

Kernel: the notebooks must run in *this* interpreter's environment (the project's .venv), not
whatever a machine's ``python3`` kernelspec points at (a user-level kernelspec of that name
would shadow ipykernel's built-in one). So the kernel is started by a ``KernelManager`` whose
kernelspec manager answers every name with ``[sys.executable, -m, ipykernel_launcher, -f,
{connection_file}]`` — nothing is installed or registered — and a cell prepended to each run
prints ``sys.executable``, which the test compares with its own. Environment: QGEOM_RUN_DIR
(the tiny run), QGEOM_FIGURES_DIR (a fresh folder per notebook), MPLBACKEND=Agg and
OMP_NUM_THREADS=1, inherited by the kernel; the working directory is notebooks/, as in Jupyter.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
EXPECTED = {  # the file names `qgeom figures` writes (bit width in the name)
    "01_baselines_and_heatmaps.ipynb": ["baselines_2bit", "delta_heatmaps_2bit", "radar_2bit", "improvement_2bit",
                                        "proportions_2bit"],
    "02_lambda_and_alignment.ipynb": ["lambda_curves_2bit", "alignment_heatmaps_2bit", "alignment_scatter_2bit",
                                      "lambda_sensitivity_2bit", "lambda_calibration_2bit"],
    "03_proposition1_and_spectrum.ipynb": ["proposition1_2bit", "spectrum_2bit"],
    "04_landscape.ipynb": ["landscape_2bit"],
    "05_invariance.ipynb": ["invariance_2bit"],
}


@pytest.fixture(scope="module")
def cli_figures(tiny_run, tmp_path_factory):  # noqa: F811
    """``qgeom figures RUN --cheap`` on the tiny run: what the notebooks must reproduce byte for byte."""
    from qgeom.commands.figures import render_all

    out = tmp_path_factory.mktemp("cli_figures")
    render_all(tiny_run, out, cheap=True)
    return out


class ThisPythonKernelSpecs(KernelSpecManager):
    """Every kernel name resolves to an IPython kernel of the running interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                          display_name=f"Python ({sys.executable})", language="python", resource_dir=str(NOTEBOOKS))


#: A notebook on a researcher's own model (no run): timm ViT → cosines, λ*, spectrum, a symmetry, a
#: hypothesis property test through qgeom.testing, a restyled figure (issue 26).
OWN_MODEL = {"06_your_own_model.ipynb": ["own_model_spectrum"]}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED | OWN_MODEL)


@pytest.mark.parametrize("name", sorted(EXPECTED | OWN_MODEL))
def test_committed_notebook_has_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.cells[0].cell_type == "markdown" and all(
        nb.cells[i - 1].cell_type == "markdown" for i, c in enumerate(nb.cells) if c.cell_type == "code" and i > 1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, tiny_run, cli_figures, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "figures"
    monkeypatch.setenv("QGEOM_RUN_DIR", str(tiny_run))
    monkeypatch.setenv("QGEOM_FIGURES_DIR", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # small products: one thread (no OpenMP spinning on shared cores)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPythonKernelSpecs())
    NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == sys.executable
    setup = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert f"run: {tiny_run}" in setup and f"figures: {out}" in setup
    for fig in EXPECTED[name]:
        for ext in ("pdf", "png", "csv"):
            assert (out / f"{fig}.{ext}").stat().st_size > 0, f"{name} did not write {fig}.{ext}"
    for fig in EXPECTED[name]:  # the same CSV as `qgeom figures` (table figures; the others share its cache)
        if (cli_figures / f"{fig}.csv").exists():
            assert (out / f"{fig}.csv").read_bytes() == (cli_figures / f"{fig}.csv").read_bytes(), fig
    cached = sorted(p.name for p in out.glob("*.params.json"))
    assert all(re.fullmatch(r"[a-z0-9]+_2bit(_quadratic)?\.params\.json", c) for c in cached)  # the CLI's cache names
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(EXPECTED[name])  # each figure is shown inline too


def _execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPythonKernelSpecs())
    NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.mark.parametrize("name", sorted(OWN_MODEL))
def test_own_model_notebook_runs(name, tmp_path, monkeypatch):
    """Headless, top to bottom, on a timm ViT of its own (no run directory): every check in it is an
    assert against a dense or independent reference, so running it is the test."""
    out = tmp_path / "figures"
    monkeypatch.setenv("QGEOM_FIGURES_DIR", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = _execute(name, tmp_path)  # it reads nothing from the checkout; hypothesis's .hypothesis/ goes to tmp_path
    assert not (NOTEBOOKS / ".hypothesis").exists()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "cos_G(u, v) =" in text and "8 random elements: logits invariant" in text
    for fig in OWN_MODEL[name]:
        for ext in ("pdf", "png", "csv"):
            assert (out / f"{fig}.{ext}").stat().st_size > 0, f"{name} did not write {fig}.{ext}"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(OWN_MODEL[name])
