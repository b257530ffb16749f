"""The drawing kit every report figure uses: matplotlib (Agg) loaded once, a figure saved atomically, the
`Plot` a figure function returns, and point labels placed where they overlap nothing and stay inside the axes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityseg_fast.diskio import atomic_path

DPI = 110
# What keeps a figure readable at any number of rows (the caption says what was left out):
MAX_SERIES = 8  # lines per vs-batch figure: the configurations with the best value
MAX_PANELS = 6  # models per vs-batch figure
MAX_LABELS = 30  # point labels in a scatter
LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class Plot:
    name: str  # file name, e.g. "throughput_vs_batch.png"
    title: str
    path: Path | None  # None = skipped
    reason: str = ""  # why it was skipped
    caption: str = ""
    optional: bool = False  # skipped without a word in REPORT.md (the scaling plot of a one-process report)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 10, "axes.titlesize": 11, "figure.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3}
    )
    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:  # a full disk: one line, no half-written PNG
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# Where a label may go, in points from its marker, in order of preference: right, left, above, below,
# then further out (the arrow back to the marker shows whose label it is).
LABEL_OFFSETS = [(dx, dy) for dy in (4, -12, 14, -22, 24, -32, 34, -42) for dx in (6, -6)] + [(0, 14), (0, -20)]


def place_labels(ax: Any, items: Sequence[tuple[float, float, str]], size: float = 7.0,
                 avoid: Sequence[Any] = ()) -> list[Any]:  # fmt: skip
    """Annotate each (x, y, text) beside its point at the first of LABEL_OFFSETS where the text stays
    inside the axes and overlaps no label placed before, no marker, no plotted line and nothing in `avoid`
    (artists: a legend); where none is free, the one that overlaps least. Call it last, once the axes'
    limits and the figure's layout are final: it measures the texts as drawn. Returns the annotations."""
    renderer = ax.figure.canvas.get_renderer()
    frame = tuple(ax.get_window_extent(renderer).extents)
    px = [ax.transData.transform((x, y)) for x, y, _ in items]
    marks = [(a - 6, b - 6, a + 6, b + 6) for a, b in px]
    taken = [tuple(a.get_window_extent(renderer).extents) for a in avoid] + _line_dots(ax)
    placed = []
    for i in sorted(range(len(items)), key=lambda i: -items[i][1]):  # top first: the front is drawn there
        x, y, text = items[i]
        others = taken + [m for j, m in enumerate(marks) if j != i]
        costs = []
        for dx, dy in LABEL_OFFSETS:
            box = _text_box(ax, renderer, (x, y, text), (dx, dy), size)
            costs.append(100 * _outside(box, frame) + sum(_overlap(box, o) for o in others))
            if costs[-1] == 0:
                break
        dx, dy = LABEL_OFFSETS[costs.index(min(costs))]
        arrow = {"arrowstyle": "-", "lw": 0.4, "color": "#999999"} if abs(dy) > 4 else None  # far from its marker
        ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=size,
                          ha=_align(dx), va="bottom", arrowprops=arrow)  # fmt: skip
        taken.append(_text_box(ax, renderer, (x, y, text), (dx, dy), size))
        placed.append(ann)
    return placed


def _line_dots(ax: Any, step: float = 4.0) -> list[tuple[float, float, float, float]]:
    """Small pixel boxes every `step` pixels along the axes' plotted lines (not axhline: a label may sit
    on a reference line rather than leave the plot)."""
    dots = []
    for line in ax.get_lines():
        if line.get_transform() != ax.transData or line.get_linestyle() in ("None", "none", "", " "):
            continue  # a reference line across the axes, or markers only
        xy = ax.transData.transform(line.get_xydata())
        for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:], strict=True):
            n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 / step))
            for k in range(n + 1):
                x, y = x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n
                dots.append((x - 1, y - 1, x + 1, y + 1))
    return dots


def _align(dx: float) -> str:
    return "left" if dx > 0 else "right" if dx < 0 else "center"


def _text_box(ax: Any, renderer: Any, item: tuple[float, float, str], offset: tuple[float, float],
              size: float) -> tuple[float, float, float, float]:  # fmt: skip
    """The pixel box (x0, y0, x1, y1) of a label drawn at `offset` points from its point (text only)."""
    x, y, text = item
    ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=size,
                      ha=_align(offset[0]), va="bottom")  # fmt: skip
    box = tuple(ann.get_window_extent(renderer).extents)
    ann.remove()
    return box


def _overlap(a: Sequence[float], b: Sequence[float]) -> int:
    return int(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def _outside(box: Sequence[float], frame: Sequence[float]) -> int:
    """1 when any part of `box` lies outside `frame` (x0, y0, x1, y1 in pixels)."""
    return int(box[0] < frame[0] or box[1] < frame[1] or box[2] > frame[2] or box[3] > frame[3])
