"""Every code block of README.md runs as written (issue 18).

Blocks are ``bash``, ``python`` or ``text`` (printed output and listings). A ``bash`` or
``python`` block runs, in README order, in a scratch directory: bash lines are ``qgeom`` commands
run in-process, python blocks continue one session. The only size change is the offline tasks'
split sizes (``qgeom.commands.inputs.task_for`` gives 64/16/64 images, as in ``tests/commands/test_cli.py``); step counts
and probe sizes are the README's own. A block that cannot run here (it needs real data, a GPU
or minutes) is marked ``<!-- illustrative: why -->`` on the line before its fence; its ``qgeom``
commands are still parsed by qgeom's own parser (types, ranges, choices), its ``make`` targets
must exist, and nothing else may appear in it but the few shell tools listed here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from qgeom.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?:<!-- illustrative: (?P<why>[^>]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.S | re.M)
SHELL_TOOLS = {"tail"}  # allowed in illustrative blocks besides qgeom and make
SIZES = dict(n_train=64, n_val=16, n_test=64)


def blocks() -> list[dict]:
    return [dict(m.groupdict(), line=README[:m.start()].count("\n") + 1) for m in FENCE.finditer(README)]


def commands(body: str) -> list[list[str]]:
    """Shell command lines of a block: continuations joined, comments dropped, split like the shell."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def qgeom_args(words: list[str]) -> list[str] | None:
    """The qgeom arguments of a command line (``qgeom …`` or ``torchrun … -m qgeom …``), else None."""
    if Path(words[0]).name == "qgeom":
        return words[1:]
    if words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1 :][:1] == ["qgeom"]:
        return words[words.index("-m") + 2 :]
    return None


def test_every_block_is_run_or_marked_illustrative():
    found = blocks()
    assert len(found) >= 10
    for b in found:
        assert b["lang"] in ("bash", "python", "text"), f"README.md:{b['line']}: fence ```{b['lang']}"
        if b["why"]:
            assert b["lang"] == "bash" and len(b["why"]) > 20, f"README.md:{b['line']}: say why it cannot run"
    runnable = [b for b in found if b["lang"] != "text" and not b["why"]]
    assert sum(b["lang"] == "python" for b in runnable) == 6 and sum(b["lang"] == "bash" for b in runnable) == 1


def test_illustrative_blocks_parse_with_qgeoms_own_parser():
    group = typer.main.get_command(app)
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    n = 0
    for b in (b for b in blocks() if b["why"]):
        for words in commands(b["body"]):
            args = qgeom_args(words)
            if args is not None:
                cmd = group.commands[args[0]]
                cmd.make_context(args[0], args[1:])  # parses, converts and validates; never runs
                n += 1
            elif words[0] == "make":
                assert set(words[1:]) <= targets, words
            else:
                assert words[0] in SHELL_TOOLS, f"README.md:{b['line']}: {' '.join(words)}"
    assert n >= 6


def test_the_command_listing_names_real_commands():
    names = set(typer.main.get_command(app).commands)
    listing = next(b for b in blocks() if b["lang"] == "text" and b["body"].startswith("qgeom demo"))
    for line in listing["body"].splitlines():
        listed = line.split("  ")[0].removeprefix("qgeom ").split()
        assert {w for w in listed if w.isidentifier() or "-" in w} - {"CONFIG", "RUN_DIR"} <= names | {"key=value"}, line


def test_the_readme_links_nothing_outside_the_repository():
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        assert not target.startswith(("http", "/", "..")), target
        assert (ROOT / target.split("#")[0]).exists(), target
    assert "../" not in README and "/work/" not in README and "shared/" not in README


def test_the_readme_runs_as_written(tmp_path, monkeypatch):
    from qgeom.data import load_task

    monkeypatch.setattr("qgeom.commands.inputs.task_for", lambda name, seed, model=None, data_root=None, **s: load_task(name, seed, **SIZES))
    monkeypatch.chdir(tmp_path)
    runner, session = CliRunner(), {}
    for b in (b for b in blocks() if b["lang"] in ("bash", "python") and not b["why"]):
        if b["lang"] == "bash":
            for words in commands(b["body"]):
                args = qgeom_args(words)
                assert args is not None, f"README.md:{b['line']}: only qgeom commands run here: {words}"
                res = runner.invoke(app, args)
                assert res.exit_code == 0, f"README.md:{b['line']}: {' '.join(words)}\n{res.output}"
            continue
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(b["body"], f"README.md:{b['line']}", "exec"), session)
        assert printed.getvalue() or "print(" not in b["body"]
    assert (tmp_path / "runs/x/rho_count.safetensors").exists()
    assert session["pg"].info["metric"] == "ggn" and len(session["top"].eigenvalues) == 3
    assert session["report"].ok
    assert session["G"].info["attention"].startswith("explicit") and session["signed"].indefinite  # "your own model"


@pytest.mark.parametrize("pattern", [r"--bits \d --bits", r"--samples", r"--out paper_figures"])
def test_no_retired_spelling_is_left(pattern):
    assert not re.search(pattern, README)
