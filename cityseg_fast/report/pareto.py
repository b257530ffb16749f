"""Accuracy against speed: the points of the accuracy rows, their Pareto frontier, the colour baseline, and the
"mIoU vs throughput" figure (the study's front, report/study_plots.py, uses the same frontier)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cityseg_fast.report.figure import LINESTYLES, MAX_LABELS, Plot, _plt, _save, place_labels
from cityseg_fast.report.format import miou_pct
from cityseg_fast.report.runs import (
    Run,
    flat_point,
    point_label,
    split_keys,
)
from cityseg_fast.results.scenarios import IMAGES_PER_S, MIOU


def pareto_points(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], str]:
    """[{label, miou (%), ips, row}] from ok accuracy rows, and what the throughput axis measures."""
    pts, sources = [], set()
    for run in runs:
        acc = [r for r in run.rows if r.scenario == "accuracy" and r.number(MIOU) is not None]
        varying, _ = split_keys(acc) if acc else ([], {})
        for r in acc:
            p = flat_point(r)
            ips = r.number(IMAGES_PER_S)  # every accuracy row records its training throughput
            if ips is None:
                continue
            sources.add("training throughput of the accuracy run")
            label = point_label(p, ["model"] + [k for k in varying if k != "model"])
            pts.append(
                {
                    "label": f"{run.name}: {label}" if len(runs) > 1 else label,
                    "miou": miou_pct(r.number(MIOU)),
                    "ips": ips,
                    "row": r,
                }
            )
    return pts, " / ".join(sorted(sources))


def pareto_front(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both throughput and mIoU, fastest first."""
    front, best = [], float("-inf")
    for p in sorted(pts, key=lambda p: (-p["ips"], -p["miou"])):
        if p["miou"] > best:
            front.append(p)
            best = p["miou"]
    return front


def baselines(runs: Sequence[Run]) -> list[tuple[str, float]]:
    """(label, mIoU %) of each run's colour baseline (the best one where a run has several)."""
    out = []
    for run in runs:
        vals = [miou_pct(r.number(MIOU)) for r in run.rows if r.scenario == "baseline" and r.number(MIOU) is not None]
        if vals:
            out.append((f"{run.name}: colour baseline" if len(runs) > 1 else "colour baseline", max(vals)))
    return out


def plot_pareto(runs: Sequence[Run], out: Path) -> Plot:
    name = "miou_vs_throughput.png"
    pts, source = pareto_points(runs)
    if len(pts) < 2:
        return Plot(
            name,
            "mIoU vs throughput",
            None,
            f"needs at least two accuracy rows with mIoU and a throughput (found {len(pts)})",
        )
    front = pareto_front(pts)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    xs, ys = [p["ips"] for p in pts], [p["miou"] for p in pts]
    ax.scatter(xs, ys, s=45, color="#7f7f7f", label="configuration", zorder=3)
    fs = sorted(front, key=lambda p: p["ips"])
    ax.plot([p["ips"] for p in fs], [p["miou"] for p in fs], "-o", color="#d62728", ms=8, mfc="none", mew=2,
            label="Pareto frontier", zorder=4)  # fmt: skip
    base = baselines(runs)
    for (label, value), style in zip(base, LINESTYLES, strict=False):
        ax.axhline(value, color="black", linestyle=":" if style == "-" else style, linewidth=1,
                   label=f"{label} ({value:.1f})")  # fmt: skip
    ax.set_xlabel(f"throughput (images/s; {source})")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Accuracy vs speed (up and to the right is better)")
    ax.set_xlim(0, max(xs) * 1.25)
    ax.set_ylim(0, max(max(ys) * 1.2, *(v * 1.2 for _, v in base), 1))
    legend = ax.legend(loc="lower left")
    fig.tight_layout()
    named = pts if len(pts) <= MAX_LABELS else _labelled(pts, front)  # many points: the front and the best
    place_labels(ax, [(p["ips"], p["miou"], p["label"]) for p in named], size=8, avoid=[legend])
    caption = "Red: the Pareto frontier, configurations that no other one beats on both speed and mIoU."
    if len(named) < len(pts):
        caption += f" Labelled: {len(named)} of {len(pts):,} points (the frontier and the most accurate)."
    if base:
        caption += " Dotted: what the per-pixel colour baseline reaches on the same data."
    return Plot(name, "mIoU vs throughput", _save(fig, out / name), caption=caption)


def _labelled(pts: list[dict[str, Any]], front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_LABELS points to name: the frontier first, then the most accurate of the rest."""
    chosen = front[:MAX_LABELS]
    rest = sorted((p for p in pts if not any(p is f for f in chosen)), key=lambda p: -p["miou"])
    return chosen + rest[: MAX_LABELS - len(chosen)]
