"""Numbers in the cells of a heatmap that never run into each other ("1.000.07").

A cell's size on paper is known only when the figure is drawn (after the layout, the colour bar,
the caption strip of :func:`~qgeom.figures.files.save_figure`), so the text is fitted then: each
cell holds a :class:`CellText` with a *ladder* of labels, from the fullest (``0.07``, two lines
``+1.2`` / ``λ=1.25``) to the shortest (``.07``, ``.1``). At draw time the cells of one heatmap
(a :class:`CellGroup`) take together the first rung and the largest font size (8 pt, else 7 pt,
the smallest text qgeom prints) at which *every* label lies inside its cell less a margin; one
rung and one size for the whole heatmap, so its numbers read alike. When not even the shortest
rung fits at 7 pt, the cells stay empty (the figure's CSV holds the values).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from matplotlib.text import Text

SIZES = (8.0, 7.0)  # points, largest first; 7 pt is qgeom's smallest text (theme.MIN_PT)
MARGIN = 0.12  # share of the cell's width and height left free around its text


def short_number(text: str) -> str:
    """``0.07`` → ``.07``, ``-0.5`` → ``-.5``, ``+0.25`` → ``+.25`` (a leading zero dropped)."""
    return re.sub(r"(^|[\s\[(,=+-])0\.(\d)", r"\1.\2", text)


def no_trailing_zeros(text: str) -> str:
    """``1.0`` → ``1``, ``-1.00`` → ``-1`` (a number whose decimals are all zeros loses them)."""
    return re.sub(r"(\d)\.0+(?!\d)", r"\1", text)


def fewer_decimals(fmt: str) -> str:
    """``{:+.2f}`` → ``{:+.1f}``; a format without decimals is returned as it is."""
    return re.sub(r"\.(\d+)f", lambda m: f".{max(int(m[1]) - 1, 0)}f", fmt)


def ladder(value: float, fmt: str, extra: str | None = None) -> list[str]:
    """A cell's labels, fullest first: ``fmt`` (+ the ``extra`` line), the same without leading
    zeros, one decimal fewer without leading zeros, and that without zero decimals (``-1.0`` →
    ``-1``); an extra ``λ=x`` line loses its ``λ=`` from the second rung on (the caption names
    what the line is)."""
    fewer = short_number(fewer_decimals(fmt).format(value))
    rungs = [fmt.format(value), short_number(fmt.format(value)), fewer, no_trailing_zeros(fewer)]
    if extra is None:
        return rungs
    bare = re.sub(r"^λ=", "", extra)
    return [f"{rungs[0]}\n{extra}"] + [f"{r}\n{bare}" for r in rungs[1:]]


class CellGroup:
    """The cells of one heatmap, fitted together at draw time (see the module docstring)."""

    def __init__(self, sizes: Sequence[float] = SIZES, margin: float = MARGIN) -> None:
        self.cells: list[CellText] = []
        self.sizes, self.margin = tuple(sizes), margin
        self._fitted_for: tuple | None = None
        self.choice: tuple[int, float] | None = None  # (rung, font size); None: nothing fits

    def fit(self, renderer) -> None:
        """Choose one rung and one size for every cell, for the cells' size as drawn now."""
        if not self.cells:
            return
        w, h = self.cells[0].cell_pixels()
        key = (round(w, 1), round(h, 1), renderer.points_to_pixels(1.0))
        if key == self._fitted_for:
            return
        self._fitted_for = key
        depth = max(len(c.labels) for c in self.cells)
        self.choice = None
        for rung in range(depth):
            for size in self.sizes:
                if all(c.fits(renderer, rung, size, self.margin) for c in self.cells):
                    self.choice = (rung, size)
                    break
            if self.choice is not None:
                break
        for c in self.cells:
            c.show(self.choice)


class CellText(Text):
    """One cell's number: centred in the ``width`` × ``height`` cell (data units) around its
    position, its label and size chosen by its :class:`CellGroup` when drawn."""

    def __init__(self, x: float, y: float, labels: Sequence[str], group: CellGroup, *, width: float = 1.0,
                 height: float = 1.0, **kw) -> None:
        super().__init__(x, y, labels[0], ha="center", va="center", linespacing=1.0, **kw)
        self.labels, self.group, self.cell = list(labels), group, (width, height)
        group.cells.append(self)

    def cell_pixels(self) -> tuple[float, float]:
        """The cell's width and height in pixels, as drawn now."""
        x, y = self.get_position()
        w, h = self.cell
        (x0, y0), (x1, y1) = self.axes.transData.transform([(x - w / 2, y - h / 2), (x + w / 2, y + h / 2)])
        return abs(x1 - x0), abs(y1 - y0)

    def fits(self, renderer, rung: int, size: float, margin: float) -> bool:
        """Whether ``labels[rung]`` at ``size`` points lies inside the cell less ``margin``."""
        self.set_text(self.labels[min(rung, len(self.labels) - 1)])
        self.set_fontsize(size)
        e = self.get_window_extent(renderer)
        w, h = self.cell_pixels()
        return e.width <= (1 - margin) * w and e.height <= (1 - margin) * h

    def show(self, choice: tuple[int, float] | None) -> None:
        if choice is None:
            self.set_text("")
            return
        rung, size = choice
        self.set_text(self.labels[min(rung, len(self.labels) - 1)])
        self.set_fontsize(size)

    def draw(self, renderer) -> None:
        if self.get_visible() and self.axes is not None:
            self.axes.apply_aspect()  # a square heatmap's cells take their final size here
            self.group.fit(renderer)
        super().draw(renderer)


def add_cell_text(ax, x: float, y: float, labels: Sequence[str], group: CellGroup, **kw) -> CellText:
    """Put a :class:`CellText` at (x, y) of ``ax`` (a unit cell around it), fitted with ``group``."""
    t = CellText(x, y, labels, group, **kw)
    ax._add_text(t)
    return t
