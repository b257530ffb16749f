"""The scaling section: rows that differ only in world size, img/s at N against N x img/s at 1, and the ranks.

From the merged rows alone: a model or e2e row at world size N > 1 names its world-size-1 row (its `base`
companion) and results.derive gives it scaling_efficiency = img/s at N / (N x img/s at 1) with both rates;
the row's own metrics carry the per-rank figures engine/ranks.py measured (each rank's data wait, compute and
all-reduce wait, the slowest rank, the straggler). Nothing is matched or computed here. The table has a row
per point at N > 1; `scaling_lines` gives report/plots.py img/s against world size for each configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cityseg_fast.report.figure import MAX_SERIES, Plot, _plt, _save
from cityseg_fast.report.format import DASH, best_rows, fmt_num, fmt_pct, md_table
from cityseg_fast.report.runs import Run, RunRow, flat_point, point_label, split_keys, tagged_rows
from cityseg_fast.results.derive import (
    SCALING_BASE_IMAGES_PER_S,
    SCALING_BASE_POINT_ID,
    SCALING_EFFICIENCY,
    SCALING_IDEAL_IMAGES_PER_S,
)
from cityseg_fast.results.scenarios import (
    IMAGES_PER_S,
    RANK_ALLREDUCE_WAIT_S_MAX,
    RANK_ALLREDUCE_WAIT_S_MIN,
    RANK_DATA_WAIT_S_MAX,
    RANK_DATA_WAIT_S_MIN,
    SLOWEST_RANK,
    STRAGGLER,
    STRAGGLER_RATIO,
)

SCENARIOS = ("model", "e2e")
NOTE = (
    "\n\nefficiency = img/s at N ÷ (N × img/s at 1), from the same point at world size 1 (100% = perfect "
    "scaling). Per rank, in ms per step: data wait (its batch), all-reduce wait (blocked in the gradient "
    "all-reduce, waiting for the other ranks); work = data wait + compute. slowest = the rank with the most "
    "work, × its work ÷ the median rank's; straggler = that rank where the ratio exceeds "
    "train.straggler_threshold (1.2 by default). A rank that waits for data while the others wait in the "
    "all-reduce is starved (its loader); a rank whose compute is high computes slowly.\n"
)


def scaling_rows(runs: Sequence[Run]) -> list[RunRow]:
    """Ok model and e2e rows at world size > 1 with a scaling efficiency (their world-size-1 row is there)."""
    return [r for s in SCENARIOS for r in tagged_rows(runs, s) if r.derived.get(SCALING_EFFICIENCY) is not None]


def _ms_range(r: RunRow, lo: str, hi: str) -> str:
    a, b = r.number(lo), r.number(hi)
    return DASH if a is None or b is None else f"{fmt_num(a * 1e3)}–{fmt_num(b * 1e3)}"


def _slowest(r: RunRow) -> str:
    rank, ratio = r.metrics.get(SLOWEST_RANK), r.number(STRAGGLER_RATIO)
    return DASH if rank is None or ratio is None else f"rank {rank} ×{ratio:.2f}"


def _number(r: RunRow, key: str) -> float | None:
    v = r.derived.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def scaling_section(runs: Sequence[Run]) -> str:
    """Markdown: one row per point at world size N > 1 (the fastest TOP_N of a long table); '' without any."""
    rows = scaling_rows(runs)
    if not rows:
        return ""
    keys = _label_keys(rows)
    shown, note = best_rows(rows)
    if not note:
        shown = sorted(rows, key=lambda r: (r.scenario, point_label(flat_point(r), keys), r.point["world_size"]))
    multi = len(runs) > 1
    body = [
        ([r.run] if multi else []) + [
            r.scenario, point_label(flat_point(r), keys), r.point["world_size"], fmt_num(r.number(IMAGES_PER_S)),
            fmt_num(_number(r, SCALING_BASE_IMAGES_PER_S)), fmt_num(_number(r, SCALING_IDEAL_IMAGES_PER_S)),
            fmt_pct(_number(r, SCALING_EFFICIENCY), 0), _slowest(r),
            _ms_range(r, RANK_DATA_WAIT_S_MIN, RANK_DATA_WAIT_S_MAX),
            _ms_range(r, RANK_ALLREDUCE_WAIT_S_MIN, RANK_ALLREDUCE_WAIT_S_MAX),
            DASH if r.metrics.get(STRAGGLER) is None else f"**rank {r.metrics[STRAGGLER]}**",
        ]
        for r in shown
    ]  # fmt: skip
    head = (["run"] if multi else []) + ["scenario", "configuration", "N", "img/s at N", "img/s at 1",
                                         "N × img/s at 1", "efficiency", "slowest (work ÷ median)",
                                         "data wait (ms, min–max)", "all-reduce wait (ms, min–max)", "straggler"]
    right = ([False] if multi else []) + [False, False] + [True] * 5 + [False] * 4
    return note + md_table(head, body, right) + NOTE


def scaling_lines(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """[{label, scenario, base: img/s at 1, points: [(N, img/s)] from N = 1}] per world-size-1 point (and run),
    the fastest at its largest N first: what the scaling plot draws (report/plots.py)."""
    rows = scaling_rows(runs)
    keys = _label_keys(rows)
    lines: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:  # a line per configuration: rows that differ in more than the world size share no line
        base = _number(r, SCALING_BASE_IMAGES_PER_S)
        label = f"{r.scenario}: {point_label(flat_point(r), keys)}" + (f" [{r.run}]" if len(runs) > 1 else "")
        line = lines.setdefault((r.run, r.derived[SCALING_BASE_POINT_ID], label),
                                {"label": label, "scenario": r.scenario, "base": base, "points": [(1, base)]})
        line["points"].append((r.point["world_size"], r.number(IMAGES_PER_S)))
    return sorted(lines.values(), key=lambda v: -max(y for _, y in v["points"]))


def _label_keys(rows: Sequence[RunRow]) -> list[str]:
    """A configuration's label: model and precision, then whatever else varies but the world size."""
    varying, _ = split_keys(rows)
    return ["model", "dtype"] + [k for k in varying if k not in ("model", "dtype", "world_size")]


def panel_labels(labels: Sequence[str]) -> tuple[list[str], str]:
    """The labels of one panel without the words they all share (model and precision always kept), and those
    words: the legend's title, so a long shared configuration is written once instead of on every line."""
    words = [label.split() for label in labels]
    shared = set.intersection(*(set(w) for w in words)) if len(words) > 1 else set()
    common = [w for w in words[0][2:] if w in shared] if words else []
    return [" ".join(w[:2] + [x for x in w[2:] if x not in common]) for w in words], " ".join(common)


def plot_scaling(runs: Sequence[Run], out: Path) -> Plot:
    """img/s against world size per configuration (its world-size-1 point and each N), N x img/s at 1 dashed;
    a panel per scenario, the MAX_SERIES configurations fastest at their largest N (report/scaling.py)."""
    name = "scaling.png"
    lines = scaling_lines(runs)
    if not lines:
        return Plot(name, "Scaling", None, "no model or e2e rows at world size > 1 beside their world-size-1 row",
                    optional=True)
    shown = lines[:MAX_SERIES]
    scenarios = list(dict.fromkeys(v["scenario"] for v in shown))
    plt = _plt()
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.2 * len(scenarios) + 2.5, 4.6), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, scenario in zip(axes.flat, scenarios, strict=True):
        mine = [v for v in shown if v["scenario"] == scenario]
        labels, common = panel_labels([line["label"].split(": ", 1)[1] for line in mine])
        for i, (line, label) in enumerate(zip(mine, labels, strict=True)):
            xs, ys = zip(*sorted(line["points"]), strict=True)
            color = cycle[i % len(cycle)]
            ax.plot(xs, ys, "-o", color=color, label=label)
            ax.plot([1, max(xs)], [line["base"], line["base"] * max(xs)], "--", color=color, alpha=0.5, linewidth=1)
            for x, y in zip(xs[1:], ys[1:], strict=True):
                ax.annotate(f"{y / (x * line['base']):.0%}", (x, y), textcoords="offset points", xytext=(5, -12),
                            fontsize=8, color=color)  # fmt: skip
        ax.set_xticks(sorted({x for v in mine for x, _ in v["points"]}))
        ax.set_xlabel("world size (ranks)")
        ax.set_ylabel("images/s (all ranks)")
        ax.set_title(f"{scenario}: img/s vs world size (dashed: N × img/s at 1)")
        ax.set_ylim(bottom=0)
        ax.margins(x=0.08)  # room for the efficiency beside the last point
        ax.legend(fontsize=8, loc="upper left", title=common or None, title_fontsize=7)
    fig.tight_layout()
    caption = "The percentage at each point is its scaling efficiency; the Scaling table has the per-rank figures."
    if len(lines) > len(shown):
        caption += f" Shown: the {len(shown)} fastest of {len(lines):,} configurations; every row is in results.csv."
    return Plot(name, "Scaling", _save(fig, out / name), caption=caption)
