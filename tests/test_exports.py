"""Top-level exports (issue 26, item 4): ``qgeom.CurvatureOperator``, ``qgeom.metric_cosine``, …
listed in ``__all__`` and by ``dir``/``help``, loaded on first use so ``import qgeom`` stays
free of torch."""

from __future__ import annotations

import importlib
import os
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest

import qgeom

ROOT = Path(__file__).resolve().parents[1]


def test_import_qgeom_lists_the_names_without_importing_torch():
    code = ("import sys, qgeom\n"
            "names = dir(qgeom)\n"
            "assert 'CurvatureOperator' in names and 'metric_cosine' in names and 'eigsh' in names, names\n"
            "assert 'CurvatureOperator' in qgeom.__all__\n"
            "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'scipy', 'timm') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY []" in res.stdout


def test_every_exported_name_is_its_modules_object():
    for name in qgeom.__all__:
        home = importlib.import_module(qgeom._HOME_OF[name])
        assert getattr(qgeom, name) is getattr(home, name), name
    namespace: dict = {}
    exec("from qgeom import *", namespace)  # noqa: S102
    assert set(qgeom.__all__) <= set(namespace)
    from qgeom.curvature.operator import CurvatureOperator
    assert qgeom.CurvatureOperator is CurvatureOperator
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        qgeom.no_such_name  # noqa: B018


def test_help_shows_the_exported_names():
    text = pydoc.render_doc(qgeom, renderer=pydoc.plaintext)
    for name in ("CurvatureOperator", "metric_cosine", "ggn_cosine", "eigsh", "random_symmetry"):
        assert name in text
