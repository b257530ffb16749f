"""PNG plots of a report: throughput and memory vs batch size, loaders, e2e, mIoU Pareto, scaling (report/scaling.py).

Each `plot_*` function takes the loaded runs and an output path and returns a `Plot`: the file it
wrote, or no file and the reason it was skipped (the data for it is absent). A skipped plot is
listed in REPORT.md instead of being drawn empty. A plot stays readable at any number of rows: bars are
the TOP_N best points, lines the MAX_SERIES best configurations in at most MAX_PANELS panels, labels at
most MAX_LABELS; the caption says what was left out (results.csv holds every point), and no PNG grows
with the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cityseg_fast.report.bottleneck import bottleneck_rows
from cityseg_fast.report.figure import LINESTYLES, MAX_PANELS, MAX_SERIES, Plot, _plt, _save
from cityseg_fast.report.format import TOP_N, fmt_num
from cityseg_fast.report.pareto import plot_pareto
from cityseg_fast.report.runs import (
    Run,
    RunRow,
    flat_point,
    loader_label,
    peak_memory,
    point_label,
    res_pixels,
    row_decoder,
    split_keys,
    tagged_rows,
)
from cityseg_fast.report.scaling import plot_scaling
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import IMAGES_PER_S

LOADER_COLORS = {
    "dali (gpu)": "#2ca02c",
    "dali (cpu)": "#1f77b4",
    "dali": "#1f77b4",
    "torch": "#ff7f0e",
    "synthetic": "#7f7f7f",
}


def _batch_rows(runs: Sequence[Run], scenario: str) -> list[RunRow]:
    return [r for r in tagged_rows(runs, scenario) if isinstance(r.point.get("batch_size"), int)]


def _series(rows: list[RunRow], keys: Sequence[str]) -> dict[str, list[RunRow]]:
    """Rows grouped into lines by the values of `keys` (runs are kept apart by the caller)."""
    series: dict[str, list[RunRow]] = {}
    for r in sorted(
        rows, key=lambda r: (res_pixels(flat_point(r).get("resolution")), point_label(flat_point(r), keys))
    ):
        series.setdefault(_series_label(r, keys), []).append(r)
    return series




def _vs_batch(
    runs: Sequence[Run],
    path: Path,
    value: Callable[[Row], float | None],
    ylabel: str,
    title: str,
    scale: float = 1.0,
) -> tuple[str | None, str]:
    """Lines of value(row) against batch size, one panel per model; failed points as red x on the axis.
    Returns (why it was not drawn, or None; what it left out, or '').

    Colour = configuration (the same in every panel), line style = run; one legend for the figure. At most
    MAX_PANELS models and MAX_SERIES configurations: those that reach the highest value (for memory, the
    largest: the ones nearest an out-of-memory).
    """
    rows = _batch_rows(runs, "model")
    if not any(value(r) is not None for r in rows):
        return "no ok model-scenario rows with a batch size and this metric", ""
    if len({r.point["batch_size"] for r in rows}) < 2:
        return "only one batch size was measured", ""
    keys = [k for k in split_keys(rows)[0] if k not in ("model", "batch_size")]
    rows, left = _keep_best(rows, keys, value)
    plt = _plt()
    models = sorted({str(r.point.get("model", "?")) for r in rows})
    ncols = min(len(models), 3)
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols + 0.5, 4.2 * nrows), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {lab: cycle[i % len(cycle)] for i, lab in enumerate(_series(rows, keys))}
    styles = {run.name: LINESTYLES[i % len(LINESTYLES)] for i, run in enumerate(runs)}
    handles: dict[str, Any] = {}
    for ax, model in zip(axes.flat, models, strict=False):
        mrows = [r for r in rows if str(r.point.get("model", "?")) == model]
        bad_bs: list[int] = []
        for label, srows in _series(mrows, keys).items():
            for run in runs:
                pts = sorted(
                    (r.point["batch_size"], value(r))
                    for r in srows
                    if r.run == run.name and value(r) is not None
                )
                if not pts:
                    continue
                full = f"{run.name}: {label}" if len(runs) > 1 else label
                (line,) = ax.plot(
                    [p[0] for p in pts],
                    [p[1] * scale for p in pts],
                    marker="o",
                    color=colors[label],
                    linestyle=styles[run.name],
                )
                handles.setdefault(full, line)
            bad_bs += [r.point["batch_size"] for r in srows if not r.ok]
        if bad_bs:
            handles["OOM / error"] = ax.scatter(
                bad_bs, [0] * len(bad_bs), marker="x", s=70, color="red", zorder=5, clip_on=False
            )
        bss = sorted({r.point["batch_size"] for r in mrows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(bss, [str(b) for b in bss])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size (per device)")
        ax.set_ylabel(ylabel)
        ax.set_title(model)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=9,
        frameon=False,
    )
    _save(fig, path)
    return None, left


def _keep_best(rows: list[RunRow], keys: Sequence[str], value: Callable[[Row], float | None]) -> tuple[list[RunRow], str]:
    """The rows of the MAX_PANELS models and MAX_SERIES configurations that reach the highest value, and the
    caption's note on the rest ('' when nothing was left out)."""
    models, cut_models = _best_groups(rows, lambda r: str(r.point.get("model", "?")), value, MAX_PANELS)
    series, cut_series = _best_groups(rows, lambda r: _series_label(r, keys), value, MAX_SERIES)
    kept = [r for r in rows if str(r.point.get("model", "?")) in models and _series_label(r, keys) in series]
    left = ", ".join(f"{n:,} more {what}" for n, what in ((cut_models, "models"), (cut_series, "configurations")) if n)
    return kept, (f" Shown: the {len(series)} configurations with the highest values ({left} in results.csv)."
                  if left else "")  # fmt: skip


def _series_label(r: RunRow, keys: Sequence[str]) -> str:
    """The line a row belongs to: its values of `keys`; with nothing varying, what it measured (not "all points")."""
    p = flat_point(r)
    return point_label(p, keys) or point_label(p, ["resolution", "dtype"]) or "all points"


def _best_groups(rows: Sequence[RunRow], group: Callable[[RunRow], str], value: Callable[[Row], float | None],
                 n: int) -> tuple[set[str], int]:  # fmt: skip
    """The `n` groups of `rows` (by `group`) with the highest value anywhere, and how many more there are."""
    best: dict[str, float] = {}
    for r in rows:
        v = value(r)
        best.setdefault(group(r), float("-inf"))
        if v is not None:
            best[group(r)] = max(best[group(r)], v)
    ranked = sorted(best, key=lambda g: -best[g])
    return set(ranked[:n]), max(0, len(ranked) - n)


def plot_throughput(runs: Sequence[Run], out: Path) -> Plot:
    name = "throughput_vs_batch.png"
    reason, left = _vs_batch(
        runs,
        out / name,
        lambda r: r.number(IMAGES_PER_S),
        "train throughput (images/s)",
        "Train-step throughput vs batch size (model only, synthetic batch; higher is better)",
    )
    return Plot(
        name,
        "Throughput vs batch size",
        None if reason else out / name,
        reason or "",
        "One line per resolution / precision (and other swept settings); red x = OOM or error at that batch size."
        + left,
    )


def plot_memory(runs: Sequence[Run], out: Path) -> Plot:
    name = "memory_vs_batch.png"
    kinds = {peak_memory(r)[1] for r in _batch_rows(runs, "model") if peak_memory(r)[0]}
    what = kinds.pop() if len(kinds) == 1 else "peak memory"
    vals = [peak_memory(r)[0] for r in _batch_rows(runs, "model") if peak_memory(r)[0]]
    gib = bool(vals) and max(vals) >= 2048
    reason, left = _vs_batch(
        runs,
        out / name,
        lambda r: peak_memory(r)[0],
        f"{what} ({'GiB' if gib else 'MiB'})",
        f"Peak memory vs batch size ({what}; lower is better)",
        scale=1 / 1024 if gib else 1.0,
    )
    return Plot(
        name,
        "Peak memory vs batch size",
        None if reason else out / name,
        reason or "",
        f"{what} during the timed train steps; red x = OOM or error." + left,
    )


def _hbar(ax, labels: list[str], values: list[float], colors: list[str], hatches: list[str]) -> bool:
    """Horizontal bars with their values written on them; log scale when they span > 30x. Returns log?"""
    y = list(range(len(labels)))
    top, low = max(values), min(values)
    log = low > 0 and top / low > 30
    bars = ax.barh(y, values, color=colors, edgecolor="black", linewidth=0.5)
    for bar, h in zip(bars, hatches, strict=True):
        bar.set_hatch(h)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    for yi, v in zip(y, values, strict=True):
        ax.text(v * 1.06 if log else v + top * 0.01, yi, fmt_num(v), va="center", fontsize=9)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(low / 3, top * 4)
    else:
        ax.set_xlim(0, top * 1.18)
    return log


def plot_loaders(runs: Sequence[Run], out: Path) -> Plot:
    name = "loaders.png"
    rows = [r for r in tagged_rows(runs, "loader") if r.number(IMAGES_PER_S) is not None]
    if not rows:
        return Plot(name, "Loader comparison", None, "no ok loader-scenario rows")
    varying, _ = split_keys(rows)
    keys = [k for k in varying if k not in ("loader", "loader_device", "decode_only", "decoder")]
    rows.sort(key=lambda r: -r.number(IMAGES_PER_S))
    total, rows = len(rows), _fastest_of_each(rows, lambda r: loader_label(flat_point(r), row_decoder(r)))
    labels, colors, hatches = [], [], []
    for r in rows:
        p = flat_point(r)
        lab = loader_label(p, row_decoder(r)) + (f"  [{point_label(p, keys) or 'defaults'}]" if keys else "")
        labels.append(f"{r.run}: {lab}" if len(runs) > 1 else lab)
        colors.append(LOADER_COLORS.get(loader_label({**p, "decode_only": False}), "#9467bd"))
        hatches.append("//" if p.get("decode_only") else "")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
    log = _hbar(ax, labels, [r.number(IMAGES_PER_S) for r in rows], colors, hatches)
    return _bar_plot(
        fig, ax, out, name, log, ("Loader comparison", "Loader throughput, no model (hatched = decode only, no augmentation)"),
        "Each loader alone, producing full training batches; decode-only bars skip the augmentations."
        + _left_out(len(rows), total, "loader points", "an equal share for each loader"),
    )  # fmt: skip


def _fastest_of_each(ranked: list[Any], kind: Callable[[Any], str], n: int = TOP_N) -> list[Any]:
    """At most about `n` of `ranked` (fastest first), shared among the kinds: the fastest n // kinds of each
    kind (at least one), in rank order, so one fast kind (the synthetic loader) cannot fill the plot."""
    if len(ranked) <= n:
        return ranked
    kinds = list(dict.fromkeys(kind(r) for r in ranked))
    quota, taken = max(1, n // len(kinds)), dict.fromkeys(kinds, 0)
    keep = []
    for r in ranked:
        if taken[kind(r)] < quota:
            taken[kind(r)] += 1
            keep.append(r)
    return keep


def _left_out(shown: int, total: int, what: str, also: str = "") -> str:
    """' Shown: the 20 fastest of 4,444 loader points (...); every one is in results.csv.' ('' when all shown)."""
    if shown >= total:
        return ""
    extra = f" ({also})" if also else ""
    return f" Shown: the {shown} fastest of {total:,} {what}{extra}; every one is in results.csv."


def _bar_plot(fig, ax, out: Path, name: str, log: bool, titles: tuple[str, str], caption: str) -> Plot:
    """Finish a horizontal images/s bar chart: axis label (log or not), title, saved Plot."""
    ax.set_xlabel("images/s (higher is better" + ("; log scale)" if log else ")"))
    ax.set_title(titles[1])
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return Plot(name, titles[0], _save(fig, out / name), caption=caption)


def plot_e2e(runs: Sequence[Run], out: Path) -> Plot:
    name = "e2e_efficiency.png"
    recs = [(run, rec) for run in runs for rec in bottleneck_rows(run)]
    if not recs:
        return Plot(name, "End-to-end efficiency", None, "no ok e2e-scenario rows")
    total = len(recs)
    if total > TOP_N:  # the fastest end to end, in that order
        recs = sorted(recs, key=lambda rr: -(rr[1]["e2e"] or 0))[:TOP_N]
    varying, _ = split_keys([rec["row"] for _, rec in recs])
    keys = [k for k in varying if k not in ("loader", "loader_device")] or [
        "model",
        "resolution",
        "batch_size",
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 0.9 * len(recs) + 1.8))
    h = 0.26
    stages = (
        ("loader", "loader only", "#1f77b4"),
        ("model", "model only", "#ff7f0e"),
        ("e2e", "end to end", "#2ca02c"),
    )
    values = [v for _, rec in recs for v in (rec["loader"], rec["model"], rec["e2e"]) if v]
    top, low = max(values), min(values)
    log = top / low > 30  # a fast loader next to a slow CPU model: on a linear axis the model bar vanishes
    labels = []
    for i, (run, rec) in enumerate(recs):
        lab = f"{loader_label(rec['point'])} → {point_label(rec['point'], keys)}"
        labels.append(f"{run.name}: {lab}" if len(runs) > 1 else lab)
        for j, (key, stage, color) in enumerate(stages):
            v = rec[key]
            if v is None:
                continue
            ax.barh(
                i + (j - 1) * h, v, height=h, color=color, label=stage if i == 0 or key == "e2e" else None
            )
            text = fmt_num(v)
            if key == "e2e" and rec["efficiency"] is not None:
                text += f"  ({rec['efficiency']:.0%} of the limit)"
            ax.text(v * 1.06 if log else v + top * 0.01, i + (j - 1) * h, text, va="center", fontsize=8)
    handles, leg = ax.get_legend_handles_labels()
    uniq = dict(zip(leg, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), loc="lower right", fontsize=8)
    ax.set_yticks(range(len(recs)), labels)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
        ax.set_xlim(low / 3, top * 12)
    else:
        ax.set_xlim(0, top * 1.45)
    return _bar_plot(
        fig, ax, out, name, log, ("End-to-end efficiency", "Where the time goes: loader alone vs model alone vs end to end"),
        "The percentage is e2e efficiency: end to end ÷ the limit the two stages allow (see the bottleneck table)."
        + _left_out(len(recs), total, "end-to-end points"),
    )  # fmt: skip


PLOTTERS = (plot_throughput, plot_memory, plot_loaders, plot_e2e, plot_pareto, plot_scaling)
PLOT_FILES = (
    "throughput_vs_batch.png",
    "memory_vs_batch.png",
    "loaders.png",
    "e2e_efficiency.png",
    "miou_vs_throughput.png",
    "scaling.png",
)


def make_plots(runs: Sequence[Run], out: Path) -> list[Plot]:
    return [f(runs, out) for f in PLOTTERS]
