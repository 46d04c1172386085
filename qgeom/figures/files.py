"""A run's tables in, figure files out: :func:`load_run` reads the experiment's tables without
torch, :func:`save_figure` writes ``NAME.pdf`` (vector), ``NAME.png`` and ``NAME.csv`` (the
table drawn, with the run's fingerprint, :func:`run_fingerprint`), and :func:`cached_table` keeps
a table computed on checkpoints beside its figure, recomputed only when its parameters or the run
change.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from qgeom.experiment.analysis import read_table

RUN_TABLES = ("accuracy", "pairs", "receivers", "correlations", "geometry", "dissimilarity")


def save_figure(fig: Figure, table: pd.DataFrame, out_dir: str | Path, name: str, dpi: int = 150,
                fingerprint: Mapping | None = None) -> dict[str, Path]:
    """Write ``NAME.pdf`` (vector), ``NAME.png`` and ``NAME.csv`` (the table drawn) into ``out_dir``.

    ``fingerprint`` (:func:`run_fingerprint`) adds to every row of the CSV the columns
    ``run_config_sha256`` and ``run_fingerprint``: which run, and which of its files, the figure
    was drawn from. A mapping of several (``{setting: fingerprint}``, figures across runs) fills
    them row by row from the table's ``setting`` column."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name}.{ext}" for ext in ("pdf", "png", "csv")}
    place_captions(fig)
    fig.savefig(paths["pdf"], bbox_inches="tight", pad_inches=0.02, metadata={"CreationDate": None, "Creator": "qgeom"})
    fig.savefig(paths["png"], bbox_inches="tight", pad_inches=0.02, dpi=dpi, metadata={"Software": "qgeom"})
    fingerprint_columns(table, fingerprint).to_csv(paths["csv"], index=False)
    return paths


def run_fingerprint(run_dir: str | Path, artifacts: Sequence[str]) -> dict:
    """Which run, and which of its files, a figure was drawn from.

    ``config_sha256``: SHA-256 of the run's ``config.json`` in canonical form (keys sorted, no
    spaces: formatting does not count); ``artifacts``: relative path → content hash of each file
    in ``artifacts`` that exists (:func:`qgeom.experiment.provenance.file_hash`: a checkpoint's
    recorded content hash, else the SHA-256 of the bytes — for ``inputs.json``, the run's record of
    every checkpoint's hash); ``fingerprint``: SHA-256 over both. A figure regenerated from another
    run, or from a run whose tables changed, has another fingerprint."""
    from qgeom.experiment.provenance import file_hash  # lazy: qgeom.io loads torch; qgeom.figures imports without it

    run = Path(run_dir)
    config = None
    if (run / "config.json").exists():
        canonical = json.dumps(json.loads((run / "config.json").read_text()), sort_keys=True, separators=(",", ":"))
        config = hashlib.sha256(canonical.encode()).hexdigest()
    arts = {a: file_hash(run / a) for a in sorted(set(artifacts)) if (run / a).is_file()}
    digest = hashlib.sha256(json.dumps({"config": config, "artifacts": arts}, sort_keys=True).encode()).hexdigest()
    return {"run_dir": str(run), "config_sha256": config, "artifacts": arts, "fingerprint": digest}


def fingerprint_columns(table: pd.DataFrame, fingerprint: Mapping | None) -> pd.DataFrame:
    """``table`` with the columns ``run_config_sha256`` and ``run_fingerprint`` (see
    :func:`save_figure`); unchanged without a fingerprint."""
    if not fingerprint:
        return table
    if "fingerprint" in fingerprint:
        return table.assign(run_config_sha256=fingerprint["config_sha256"], run_fingerprint=fingerprint["fingerprint"])
    by = {k: v for k, v in fingerprint.items()}
    return table.assign(run_config_sha256=table.setting.map(lambda s: by[s]["config_sha256"]),
                        run_fingerprint=table.setting.map(lambda s: by[s]["fingerprint"]))


def place_captions(fig: Figure) -> None:
    """Make room for the figure's captions (:func:`~qgeom.figures.theme.caption`) under everything
    else it draws: the figure grows by the captions' height, the layout keeps to the part above,
    and the captions sit in the strip below (once per figure)."""
    caps = [t for t in fig.texts if t.get_gid() == "caption"]
    if not caps or getattr(fig, "_qgeom_captions_placed", False):
        return
    r = fig._get_renderer()
    strip = sum(c.get_window_extent(r).height for c in caps) / fig.dpi + 0.06  # inches
    fig.draw_without_rendering()  # run the layout once, then keep it: the strip is added below it
    fig.set_layout_engine("none")
    old = fig.get_figheight()
    fig.set_figheight(old + strip)
    frac = strip / (old + strip)

    def lift(y: float) -> float:
        return frac + y * (1 - frac)

    for ax in fig.axes:
        p = ax.get_position()
        ax.set_position((p.x0, lift(p.y0), p.width, p.height * (1 - frac)))
    for lg in fig.legends:
        bb = lg.get_bbox_to_anchor().transformed(fig.transFigure.inverted())
        lg.set_bbox_to_anchor((bb.x0, lift(bb.y0), bb.width, bb.height * (1 - frac)), transform=fig.transFigure)
    for t in [*fig.texts, fig._suptitle, fig._supxlabel, fig._supylabel]:
        if t is not None and t not in caps:
            x, y0 = t.get_position()
            t.set_position((x, lift(y0)))
    y = frac - 0.02 / (old + strip)
    for c in caps:
        c.set_position((0.0, y))
        y -= c.get_window_extent(r).height / fig.dpi / (old + strip)
    fig._qgeom_captions_placed = True


def load_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The run's tables that exist (``accuracy``, ``pairs``, ``receivers``, ``correlations``,
    ``geometry``, ``dissimilarity``), read with :func:`read_table`."""
    run_dir = Path(run_dir)
    if not (run_dir / "accuracy.csv").exists():
        raise FileNotFoundError(f"{run_dir} has no accuracy.csv: is it a finished run directory (qgeom run)?")
    return {n: read_table(run_dir / f"{n}.csv") for n in RUN_TABLES if (run_dir / f"{n}.csv").exists()}


def cached_table(out_dir: str | Path | None, name: str, run_dir: str | Path,
                 fn: Callable[..., pd.DataFrame], **kwargs) -> pd.DataFrame:
    """``fn(run_dir, **kwargs)`` unless ``out_dir/NAME.csv`` already holds it.

    ``NAME.params.json`` records ``fn``'s name, its parameters (defaults updated by ``kwargs``)
    and a fingerprint of the run (its config.json and accuracy.csv); any difference recomputes
    and rewrites both files. ``out_dir=None`` always computes.
    """
    from qgeom.io import write_json  # lazy: qgeom.io loads torch; qgeom.figures imports without it

    if out_dir is None:
        return fn(run_dir, **kwargs)
    out, run = Path(out_dir), Path(run_dir)
    params = {k: v.default for k, v in inspect.signature(fn).parameters.items() if v.default is not v.empty}
    h = hashlib.sha256()
    for f in ("config.json", "accuracy.csv"):
        if (run / f).exists():
            h.update((run / f).read_bytes())
    meta = {"table": name, "function": fn.__name__, "params": json.loads(json.dumps(params | kwargs, default=str)),
            "run_fingerprint": h.hexdigest()}
    csv, js = out / f"{name}.csv", out / f"{name}.params.json"
    if csv.exists() and js.exists():
        try:
            if json.loads(js.read_text()) == meta:
                return read_table(csv)
        except json.JSONDecodeError:
            pass
    df = fn(run_dir, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False)
    write_json(js, meta, indent=1)
    return df
