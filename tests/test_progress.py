"""qgeom.progress: a bar on a terminal, plain lines without carriage returns in a log (issue 26,
item 6), nothing with ``enabled=False``."""

from __future__ import annotations

import io
import sys

import pytest

from qgeom import progress as P


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, monkeypatch, **kw) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    for _ in P.progress(range(5), desc="work", unit="steps", **kw):
        pass
    return stream.getvalue()


def test_a_log_gets_plain_lines_and_a_final_line(monkeypatch):
    out = run(io.StringIO(), monkeypatch, interval=0.0)  # a line per step here, to see them all
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 6 and all(line.startswith("work: ") for line in lines)  # 5 steps, then the final line
    assert lines[0].startswith("work: 1/5 steps (20 %), ") and lines[-1].startswith("work: 5/5 steps, done in ")


def test_a_log_is_quiet_between_intervals(monkeypatch):
    out = run(io.StringIO(), monkeypatch, interval=3600.0)
    assert out.splitlines() == [out.splitlines()[-1]] and "5/5 steps, done in" in out  # only the final line


def test_a_terminal_gets_a_bar(monkeypatch):
    out = run(Terminal(), monkeypatch)
    assert "\r" in out and "5/5" in out and "done in" not in out  # tqdm redraws in place


def test_disabled_prints_nothing(monkeypatch):
    assert run(io.StringIO(), monkeypatch, enabled=False) == ""
    assert run(Terminal(), monkeypatch, enabled=False) == ""


def test_steps_are_lines_and_an_exception_says_where_it_stopped(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with pytest.raises(KeyError):
        with P.progress(total=3, desc="geometry", unit="steps") as bar:
            bar.step("Gram matrix")
            bar.update()
            raise KeyError("boom")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("geometry: Gram matrix (0/3 steps so far")
    assert lines[-1].startswith("geometry: 1/3 steps, stopped after ") and "\r" not in stream.getvalue()


def test_written_lines_go_above_a_bar_or_stand_alone(monkeypatch):
    for stream in (io.StringIO(), Terminal()):
        monkeypatch.setattr(sys, "stderr", stream)
        with P.progress(desc="figures", unit="figures") as bar:
            bar.write("baselines_2bit: 0.3 s")
            bar.update()
        assert "baselines_2bit: 0.3 s\n" in stream.getvalue()
