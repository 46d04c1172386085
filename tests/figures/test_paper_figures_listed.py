"""Every figure paper_figures/README.md lists is in the repository (PDF, PNG and the CSV it was
drawn from), in paper_figures/ or one of its folders: a README that names a file nobody
committed (as `.gitignore`'s old `runs/` once hid paper_figures/runs/) fails here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "paper_figures"


def listed() -> list[str]:
    """The first-column names of the README's file table (``NAME`` or ``NAME_*``)."""
    text = (FIGURES / "README.md").read_text()
    table = text[text.index("| file | what it shows |"):]
    table = table[: table.index("\n\n")]
    return re.findall(r"^\| `([A-Za-z0-9_*]+)` \|", table, flags=re.M)


def test_the_readme_lists_figures():
    names = listed()
    assert len(names) >= 20 and "runs_baselines" in names and "baselines_*" in names


def test_every_listed_figure_exists_with_its_table():
    missing = []
    for name in listed():
        stem = name.rstrip("*")
        for ext in ("pdf", "png", "csv"):
            if not list(FIGURES.rglob(f"{stem}*.{ext}")):
                missing.append(f"{name}.{ext}")
    assert missing == []


def test_the_figures_are_not_ignored_by_git():
    res = subprocess.run(["git", "check-ignore", "-q", "paper_figures/runs/runs_baselines.png"], cwd=ROOT)
    assert res.returncode == 1, "paper_figures/runs/ is ignored by .gitignore"
