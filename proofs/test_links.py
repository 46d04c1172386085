"""The links from proofs/ to the numeric tests: every cited pytest node id must exist.

``proofs/README.md`` and each ``proofs/0N_*.md`` name the tests that measure a statement on
real models by pytest node id, ``tests/<file>.py::<function>`` or
``tests/<file>.py::<Class>::<method>``. This module parses those files and checks, without
importing any test module (the files are read with :mod:`ast`):

* every node id names an existing file that defines that test (a module-level function, or
  a class with that method) — so renaming or deleting a cited test fails here;
* every row of a numeric-test table (a Markdown table with a column whose header mentions
  "numeric test" or "node id") names at least one node id, or says "no numeric test yet";
* a test file is never cited without ``::name`` (the vague form this replaced).

Only the standard library and pytest are needed; the run takes well under a second.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

PROOFS = Path(__file__).resolve().parent
ROOT = PROOFS.parent

#: tests/<path>.py::<name>[::<name>] — a pytest node id without parameters
NODE_ID = re.compile(r"(?<![\w/.-])(tests/[\w/.-]+?\.py)((?:::[A-Za-z_]\w*)+)")
#: a test file cited without ::name
BARE_FILE = re.compile(r"(?<![\w/.-])tests/[\w/.-]+?\.py(?!::)")
GAP = re.compile(r"no numeric test yet", re.IGNORECASE)
TEST_COLUMN = re.compile(r"numeric test|node id", re.IGNORECASE)


def statement_files(proofs: Path = PROOFS) -> list[Path]:
    """README.md and every 0N_*.md, in order."""
    return [proofs / "README.md", *sorted(proofs.glob("0[0-9]_*.md"))]


# --------------------------------------------------------------------------------------------
# resolving node ids
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _definitions(path: Path) -> dict[str, set[str] | None]:
    """Module-level test functions (→ None) and classes (→ their method names) of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: dict[str, set[str] | None] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = None
        elif isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return out


def resolve(node_id: str, root: Path = ROOT) -> str | None:
    """None if ``node_id`` names a test defined in the repository at ``root``, else why not."""
    file, sep, rest = node_id.partition("::")
    parts = rest.split("::") if sep else []
    if not parts or not all(parts):
        return f"{node_id}: not a node id (tests/<file>.py::<test>)"
    path = root / file
    if not path.is_file():
        return f"{node_id}: no file {file}"
    try:
        defs = _definitions(path.resolve())
    except SyntaxError as e:
        return f"{node_id}: {file} does not parse ({e})"
    if len(parts) == 1:
        (name,) = parts
        if name not in defs or defs[name] is not None:
            return f"{node_id}: {file} defines no module-level function {name}"
        if not name.startswith("test"):
            return f"{node_id}: {name} is not a test (pytest collects test* functions)"
        return None
    if len(parts) == 2:
        cls, meth = parts
        methods = defs.get(cls)
        if methods is None:
            return f"{node_id}: {file} defines no class {cls}"
        if meth not in methods:
            return f"{node_id}: class {cls} in {file} has no method {meth}"
        if not (cls.startswith("Test") and meth.startswith("test")):
            return f"{node_id}: {cls}.{meth} is not a test (pytest collects Test*.test*)"
        return None
    return f"{node_id}: nested classes are not supported"


# --------------------------------------------------------------------------------------------
# parsing the Markdown
# --------------------------------------------------------------------------------------------


def node_ids(text: str) -> list[str]:
    return [m.group(1) + m.group(2) for m in NODE_ID.finditer(text)]


def bare_file_refs(text: str) -> list[str]:
    return [m.group(0) for m in BARE_FILE.finditer(text)]


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row (no escaped pipes are used in proofs/)."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


@dataclass(frozen=True)
class Row:
    file: str
    line: int
    label: str
    cell: str


def table_rows(text: str, file: str = "") -> Iterator[Row]:
    """Each body row of each table that has a numeric-test column, with that column's cell."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        is_table = (lines[i].lstrip().startswith("|") and i + 1 < len(lines)
                    and re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-{3,}:?\s*\|?", lines[i + 1].strip()) is not None)
        if not is_table:
            i += 1
            continue
        header = _cells(lines[i])
        cols = [j for j, h in enumerate(header) if TEST_COLUMN.search(h)]
        i += 2
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            cells = _cells(lines[i])
            for j in cols:
                yield Row(file, i + 1, " | ".join(cells[:2])[:80], cells[j] if j < len(cells) else "")
            i += 1


def row_problem(row: Row) -> str | None:
    """None if the row names a node id or states the gap explicitly."""
    if node_ids(row.cell) or GAP.search(row.cell):
        return None
    return f"{row.file}:{row.line} ({row.label}): names no node id and does not say 'no numeric test yet'"


def link_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    """Every problem with the links in ``files`` (empty when all is well)."""
    problems = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        problems += [f"{f.name}: {why}" for nid in dict.fromkeys(node_ids(text)) if (why := resolve(nid, root))]
        problems += [f"{f.name}: {ref} cited without ::<test>" for ref in bare_file_refs(text)]
        problems += [p for r in table_rows(text, f.name) if (p := row_problem(r))]
    return problems


# --------------------------------------------------------------------------------------------
# the links of this repository
# --------------------------------------------------------------------------------------------

FILES = statement_files()
ALL_IDS = sorted({nid for f in FILES for nid in node_ids(f.read_text(encoding="utf-8"))})
ALL_ROWS = [r for f in FILES for r in table_rows(f.read_text(encoding="utf-8"), f.name)]


def test_every_statement_file_is_present():
    names = [f.name for f in FILES]
    assert names[0] == "README.md" and len(names) == 8, names


@pytest.mark.parametrize("node_id", ALL_IDS)
def test_cited_test_exists(node_id):
    assert resolve(node_id) is None, resolve(node_id)


@pytest.mark.parametrize("row", ALL_ROWS, ids=[f"{r.file}:{r.line}" for r in ALL_ROWS])
def test_every_statement_row_names_a_test_or_the_gap(row):
    assert row_problem(row) is None, row_problem(row)


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_each_file_links_its_statements(path):
    """Every file has a numeric-test table, cites node ids, and no test file without ::name."""
    text = path.read_text(encoding="utf-8")
    rows = list(table_rows(text, path.name))
    assert rows, f"{path.name}: no table with a numeric-test column"
    assert node_ids(text), f"{path.name}: cites no node id"
    assert not bare_file_refs(text), f"{path.name}: vague references {bare_file_refs(text)}"


def test_readme_table_has_one_row_per_result():
    readme = FILES[0]
    rows = list(table_rows(readme.read_text(encoding="utf-8"), readme.name))
    assert [r.label.split(" | ")[0] for r in rows] == [str(i) for i in range(1, 8)]


def test_all_links_resolve():
    assert link_problems(FILES) == []


# --------------------------------------------------------------------------------------------
# the checker can fail
# --------------------------------------------------------------------------------------------


def test_made_up_node_ids_are_reported_missing():
    assert resolve("tests/curvature/test_geometry.py::test_cosine_scale_fraction_match_dense_formulas") is None
    for bad, why in [
        ("tests/curvature/test_geometry.py::test_this_test_does_not_exist", "no module-level function"),
        ("tests/test_no_such_file.py::test_anything", "no file"),
        ("tests/curvature/test_geometry.py::TestNoSuchClass::test_method", "no class"),
        ("tests/curvature/test_geometry.py::op_for", "not a test"),  # a helper, not a test
        ("tests/curvature/test_geometry.py", "not a node id"),
    ]:
        msg = resolve(bad)
        assert msg is not None and why in msg, (bad, msg)


def test_a_renamed_test_is_reported(tmp_path):
    """Copy a cited test file, rename one cited function: the same node id no longer resolves."""
    nid = "tests/symmetry/test_invariance.py::test_pipeline_level_qat_commutes_with_a_permutation_and_breaks_under_a_rescaling"
    assert nid in ALL_IDS
    file, _, name = nid.partition("::")
    (tmp_path / file).parent.mkdir(parents=True)
    src = (ROOT / file).read_text(encoding="utf-8")
    (tmp_path / file).write_text(src, encoding="utf-8")
    assert resolve(nid, tmp_path) is None
    (tmp_path / file).write_text(src.replace(f"def {name}(", f"def {name}_renamed("), encoding="utf-8")
    _definitions.cache_clear()
    assert "no module-level function" in resolve(nid, tmp_path)
    # and the whole check reports it for a statement file citing it
    md = tmp_path / "proofs.md"
    md.write_text(f"| claim | numeric test |\n| --- | --- |\n| x | `{nid}` |\n", encoding="utf-8")
    assert len(link_problems([md], tmp_path)) == 1


def test_class_methods_resolve(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test_k.py").write_text(
        "class TestThing:\n    def test_a(self):\n        pass\n\n    def helper(self):\n        pass\n"
        "\n\ndef test_b():\n    pass\n", encoding="utf-8")
    assert resolve("tests/test_k.py::TestThing::test_a", tmp_path) is None
    assert resolve("tests/test_k.py::test_b", tmp_path) is None
    assert "no method" in resolve("tests/test_k.py::TestThing::test_renamed", tmp_path)
    assert "not a test" in resolve("tests/test_k.py::TestThing::helper", tmp_path)
    assert "no module-level function" in resolve("tests/test_k.py::TestThing", tmp_path)
    assert "no module-level function" in resolve("tests/test_k.py::test_a", tmp_path)  # a method is not a function


def test_rows_without_a_node_id_or_gap_are_reported(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "| # | statement | numeric test on real models |\n| --- | --- | --- |\n"
        "| 1 | linked | `tests/curvature/test_geometry.py::test_readme_example` (the example) |\n"
        "| 2 | gap | no numeric test yet: nothing measures it |\n"
        "| 3 | vague | the geometry tests (fractions against dense formulas) |\n"
        "\n| symmetry | level 2 |\n| --- | --- |\n| head permutation | yes |\n", encoding="utf-8")
    problems = link_problems([md])
    assert len(problems) == 1 and "x.md:5" in problems[0] and "no node id" in problems[0]


def test_bare_file_references_are_reported(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("| claim | node ids |\n| --- | --- |\n| a | `tests/test_quant.py` (property tests) |\n",
                  encoding="utf-8")
    problems = link_problems([md])
    assert any("cited without ::<test>" in p for p in problems)
    assert any("no node id" in p for p in problems)
    assert bare_file_refs("`tests/test_quant.py::test_paper_grid_by_hand`") == []
