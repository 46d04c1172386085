"""Paste the printed summaries of finished runs into README.md between marker comments.

    .venv/bin/python scripts/update_readme.py      # runs/demo -> the `demo` block
    python scripts/update_readme.py runs/demo-controls-2-3 demo-controls-2-3

The block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` is replaced by what
``qgeom summary RUN_DIR`` prints, so the README's numbers are never typed by hand.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(run_dir: str = "runs/demo", block: str = "demo") -> None:
    # this checkout's qgeom, run by the interpreter running this script (a venv's, or .venv's)
    python = sys.executable or str(ROOT / ".venv" / "bin" / "python")
    out = subprocess.run([python, "-c", "from qgeom.cli import app; app()", "summary", run_dir], check=True,
                         capture_output=True, text=True, cwd=ROOT,
                         env={"COLUMNS": "150", "PATH": "/usr/bin:/bin", "TERM": "dumb", "PYTHONPATH": str(ROOT)}).stdout
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    if start not in text or end not in text:
        sys.exit(f"README.md has no {start} … {end} block")
    body = f"{start}\n```text\n$ qgeom summary {run_dir}\n{out.rstrip()}\n```\n{end}"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: body, text, flags=re.S)
    readme.write_text(text)
    print(f"updated the {block} block of README.md from {run_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
