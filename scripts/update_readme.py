"""Paste what qgeom prints about finished runs into README.md between marker comments.

    .venv/bin/python scripts/update_readme.py      # runs/demo -> the `demo` block
    python scripts/update_readme.py runs/demo-controls-2-3 demo-controls-2-3
    python scripts/update_readme.py runs/demo demo-replicates --replicate runs/demo-threads2 --replicate runs/demo-seeds345
    python scripts/update_readme.py runs/regime regime --study studies/regime.yaml

The block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` is replaced by what
``qgeom summary RUN_DIR`` (with its ``--replicate`` runs) or ``qgeom study STUDY --table-only``
prints, so the README's numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def qgeom_output(args: list[str]) -> str:
    # this checkout's qgeom, run by the interpreter running this script (a venv's, or .venv's)
    python = sys.executable or str(ROOT / ".venv" / "bin" / "python")
    return subprocess.run([python, "-c", "from qgeom.cli import app; app()", *args], check=True, capture_output=True,
                          text=True, cwd=ROOT, env={"COLUMNS": "150", "PATH": "/usr/bin:/bin", "TERM": "dumb",
                                                    "PYTHONPATH": str(ROOT)}).stdout


def paste(block: str, command: str, out: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    if start not in text or end not in text:
        sys.exit(f"README.md has no {start} … {end} block")
    body = f"{start}\n```text\n$ {command}\n{out.rstrip()}\n```\n{end}"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: body, text, flags=re.S)
    readme.write_text(text)
    print(f"updated the {block} block of README.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="runs/demo", help="a finished run (or, with --study, the study's root)")
    ap.add_argument("block", nargs="?", default="demo", help="the README block to replace")
    ap.add_argument("--replicate", action="append", default=[], help="a replicate run (repeat)")
    ap.add_argument("--study", help="a study file: paste its table (qgeom study --table-only) instead of a summary")
    a = ap.parse_args()
    if a.study:
        args = ["study", a.study, "--root", a.run_dir, "--table-only", "--out-dir", f"{a.run_dir}/table"]
    else:
        args = ["summary", a.run_dir] + [x for r in a.replicate for x in ("--replicate", r)]
    paste(a.block, "qgeom " + " ".join(args), qgeom_output(args))


if __name__ == "__main__":
    main()
