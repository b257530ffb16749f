"""Formatting for reports: numbers to what a measurement supports, memory in MiB/GiB, percentages,
a failed point's status cell, Markdown tables, row sorting, and what a long table shows.

Numbers are rounded to 3 significant figures; fractions (mIoU, IoU, accuracy, MFU) are shown as
percentages; a failed point shows its status and error message. A table of more than LONG rows is
summarised (`best_rows`): the TOP_N best rows and a note on what was left out, which results.csv holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cityseg_fast.report.runs import flat_point, res_pixels, run_of
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import IMAGES_PER_S

DASH = "–"
LONG = 40  # a table with more rows than this is summarised: a sweep of thousands of points is read in results.csv
TOP_N = 20  # the rows a summarised table (or a plot) keeps: the best ones

def fmt_num(v: float | None, sig: int = 3) -> str:
    """3 significant figures, thousands separated: 1,234 / 56.7 / 0.912."""
    if v is None:
        return DASH
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) >= 10 ** (sig - 1):
        return f"{v:,.0f}"
    digits = sig - 1 - int(f"{abs(v):e}".split("e")[1])
    return f"{v:.{max(digits, 0)}f}"


def fmt_mib(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def fmt_ratio(a: float | None, b: float | None) -> str:
    """'1.65x' (a / b: a speed-up), or '–' without both."""
    return f"{a / b:.2f}x" if a is not None and b else DASH


def fmt_pct(v: float | None, digits: int = 1) -> str:
    return DASH if v is None else f"{100 * v:.{digits}f}%"


def fmt_s(v: float | None) -> str:
    if v is None:
        return DASH
    if v >= 120:
        return f"{v / 60:.1f} min"
    return f"{fmt_num(v)} s"


def miou_pct(v: float | None) -> float | None:
    """A fraction (how rows store mIoU, IoU and pixel accuracy) as a percentage."""
    return None if v is None else 100.0 * v


def status_cell(row: Row, width: int = 90) -> str:
    if row.ok:
        return "ok"
    msg = " ".join(str(row.error or "").split())
    if len(msg) > width:
        msg = msg[: width - 1] + "…"
    tag = "OOM" if row.status == "oom" else "error"
    return f"**{tag}**: {msg}" if msg else f"**{tag}**"


def _cell(v: Any) -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)  # a point's resolution arrives as 'HxW' already (runs.flat_point)


def md_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> str:
    """A GitHub Markdown table; cells are escaped ('|'); `right` marks right-aligned (numeric) columns."""
    right = list(right) if right is not None else [False] * len(headers)

    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sort_value(k: str, v: Any) -> tuple:
    if k == "resolution":
        return (0, res_pixels(v), str(v))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v, "")
    return (1, 0, str(v))


def sort_rows(rows: Sequence[Row], keys: Sequence[str]) -> list[Row]:
    """By run (tagged rows), then by the values of `keys` (resolutions by pixels, numbers by value)."""

    def key(r: Row) -> tuple:
        p = flat_point(r)
        return (run_of(r),) + tuple(_sort_value(k, p.get(k)) for k in keys)

    return sorted(rows, key=key)


def constants_line(constant: dict[str, Any]) -> str:
    if not constant:
        return ""
    items = ", ".join(f"{k}={_cell(v)}" for k, v in constant.items())
    return f"Same in every row: {items}.\n\n"


def best_rows(rows: Sequence[Row], key: str = IMAGES_PER_S, what: str = "img/s", n: int = TOP_N,
              long: int = LONG) -> tuple[list[Row], str]:  # fmt: skip
    """(the rows a table shows, a note on the rest): every row up to `long` rows (note ''), else the `n` ok
    rows with the highest `key`, best first, and a note that counts what was left out (failures included)
    and says where it is."""
    if len(rows) <= long:
        return list(rows), ""
    ok = sorted((r for r in rows if r.number(key) is not None), key=lambda r: -r.number(key))
    shown, failed = ok[:n], sum(not r.ok for r in rows)
    fails = f" and {failed:,} failed (see Failures)" if failed else ""
    note = (f"_{len(rows):,} points: the {len(shown)} with the highest {what}; {len(rows) - len(shown) - failed:,} "
            f"more ok{fails}. Every point is in `results.csv`._\n\n")  # fmt: skip
    return shown, note
