"""One bit width and one scope per figure: picking them from a run table (default: the lowest
bits, the ``backbone`` scope, the paper's), and the donor × receiver matrix of a column."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from qgeom.experiment.analysis import pair_matrix


def choose_bits(df: pd.DataFrame, bits: int | None) -> int:
    have = sorted(int(b) for b in df.bits.unique())
    if bits is None:
        return have[0]
    if int(bits) not in have:
        raise ValueError(f"no rows at {bits} bits; the table has {have}")
    return int(bits)


def choose_scope(df: pd.DataFrame, scope: str | None) -> str:
    have = sorted(s for s in df.scope.unique() if s)
    if scope is None:
        return "backbone" if "backbone" in have else have[0]
    if scope not in have:
        raise ValueError(f"no rows for scope {scope!r}; the table has {have}")
    return scope


def select_rows(df: pd.DataFrame, bits: int | None, scope: str | None) -> tuple[pd.DataFrame, int, str]:
    """The rows of ``df`` at one bit width and one scope (:func:`choose_bits`, :func:`choose_scope`),
    with the bit width and scope chosen."""
    bits, scope = choose_bits(df, bits), choose_scope(df, scope)
    return df[(df.bits == bits) & (df.scope == scope)], bits, scope


def pair_frame(df: pd.DataFrame, col: str, names: Sequence[str]) -> pd.DataFrame:
    """donor × receiver matrix of ``col`` (mean over seeds), rows and columns in ``names`` order."""
    return pd.DataFrame(pair_matrix(df, col, list(names)), index=list(names), columns=list(names))
