"""The package's shape (issue 22), measured by scripts/import_graph.py from the source with ast.

Each check has a twin that feeds the analyser a small package with the defect, so a check that
cannot see the defect fails here rather than passing in silence.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph as G  # noqa: E402


def test_the_package_has_no_cycle_no_upward_import_and_no_private_import():
    rep = G.analyse()
    assert rep.cycles == [] and rep.upward == [] and rep.private == []


def test_modules_and_functions_are_short():
    rep = G.analyse()
    assert rep.long_modules == [], rep.long_modules
    assert rep.long_functions == [], rep.long_functions


def test_every_import_inside_a_function_says_why():
    rep = G.analyse()
    assert [x for x in rep.lazy if not x[3]] == []


def test_every_module_sits_in_a_layer():
    rep = G.analyse()
    assert [m for m in rep.edges if G.layer(m) < 0 and m != "qgeom"] == []


def test_command_modules_are_imported_statically():
    text = (ROOT / "qgeom" / "cli.py").read_text()
    assert "importlib" not in text
    modules = {p.stem for p in (ROOT / "qgeom" / "commands").glob("*.py")} - {"__init__", "options", "output", "inputs"}
    rep = G.analyse()
    assert {f"qgeom.commands.{m}" for m in modules} <= rep.edges["qgeom.cli"]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "qgeom"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_analyser_sees_each_defect(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    root = _package(tmp_path, {
        "__init__.py": "",
        "params.py": "from qgeom.experiment.run import go\n",  # upward, and a cycle with run.py
        "experiment/__init__.py": "",
        "experiment/run.py": "from qgeom.params import _hidden\n\ndef go():\n    import qgeom.io\n" + body + "\n",
        "io.py": "\n" * 351,
    })
    rep = G.analyse(root)
    assert rep.cycles == [["qgeom.experiment.run", "qgeom.params"]]
    assert rep.upward == ["qgeom.params → qgeom.experiment.run"]
    assert rep.private == ["qgeom.experiment.run:1 imports qgeom.params._hidden"]
    assert rep.long_modules == [("qgeom.io", 351)]
    assert rep.long_functions == [("qgeom.experiment.run", "go", 62)]
    assert [(m, t, why) for m, _, t, why in rep.lazy] == [("qgeom.experiment.run", "qgeom.io", "")]
