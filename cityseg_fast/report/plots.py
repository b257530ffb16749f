"""PNG plots of a report (matplotlib, Agg): throughput and memory vs batch size, loaders, e2e, mIoU Pareto.

Each `plot_*` function takes the loaded runs and an output path and returns a `Plot`: the file it
wrote, or no file and the reason it was skipped (the data for it is absent). A skipped plot is
listed in REPORT.md instead of being drawn empty. A plot stays readable at any number of rows: bars are
the TOP_N best points, lines the MAX_SERIES best configurations in at most MAX_PANELS panels, labels at
most MAX_LABELS; the caption says what was left out (results.csv holds every point), and no PNG grows
with the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityseg_fast.diskio import atomic_path
from cityseg_fast.report.bottleneck import bottleneck_rows
from cityseg_fast.report.format import TOP_N, fmt_num, miou_pct
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
from cityseg_fast.report.scaling import scaling_lines
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import IMAGES_PER_S, MIOU

DPI = 110
MAX_SERIES = 8  # lines per vs-batch figure: the configurations with the best value
MAX_PANELS = 6  # models per vs-batch figure
MAX_LABELS = 30  # point labels in a scatter
LOADER_COLORS = {
    "dali (gpu)": "#2ca02c",
    "dali (cpu)": "#1f77b4",
    "dali": "#1f77b4",
    "torch": "#ff7f0e",
    "synthetic": "#7f7f7f",
}


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


LINESTYLES = ("-", "--", ":", "-.")


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
        for i, line in enumerate(mine):
            xs, ys = zip(*sorted(line["points"]), strict=True)
            color = cycle[i % len(cycle)]
            ax.plot(xs, ys, "-o", color=color, label=line["label"].split(": ", 1)[1])
            ax.plot([1, max(xs)], [line["base"], line["base"] * max(xs)], "--", color=color, alpha=0.5, linewidth=1)
            for x, y in zip(xs[1:], ys[1:], strict=True):
                ax.annotate(f"{y / (x * line['base']):.0%}", (x, y), textcoords="offset points", xytext=(5, -12),
                            fontsize=8, color=color)  # fmt: skip
        ax.set_xticks(sorted({x for v in mine for x, _ in v["points"]}))
        ax.set_xlabel("world size (ranks)")
        ax.set_ylabel("images/s (all ranks)")
        ax.set_title(f"{scenario}: img/s vs world size (dashed: N × img/s at 1)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    caption = "The percentage at each point is its scaling efficiency; the Scaling table has the per-rank figures."
    if len(lines) > len(shown):
        caption += f" Shown: the {len(shown)} fastest of {len(lines):,} configurations; every row is in results.csv."
    return Plot(name, "Scaling", _save(fig, out / name), caption=caption)


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
