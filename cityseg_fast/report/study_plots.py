"""The figures of STUDY.md: the speed/accuracy front, effect plots, learning curves, per-class IoU, predictions.

Each `plot_*` takes the study's design (report/study_design.py) and the output folder and returns a
plots.Plot: the PNG it wrote, or the reason it drew nothing. Points are means over seeds, error bars
one standard deviation. The prediction figure reads the PNGs the rows reference (bench/accuracy.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cityseg_fast.report.format import fmt_num
from cityseg_fast.report.plots import Plot, _plt, _save, pareto_front
from cityseg_fast.report.stats import summarize
from cityseg_fast.report.study_design import Axis, Design, Setting, family, model_label, value_label
from cityseg_fast.report.study_text import _short, family_pair

FAMILY_COLOURS = {"U-Net": "#1f77b4", "FCN": "#d62728"}
AXIS_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
EFFECT_AXES = ("resolution", "lr", "batch_size", "image_format", "iters", "optimizer")
MAX_MODELS = 6  # columns of model predictions in the figure


def _mean_std(s: Setting, key: str, scale: float = 1.0) -> tuple[float, float] | None:
    m = s.summary(key)
    return None if m is None else (scale * m.mean, scale * m.std)


def _colour(s: Setting) -> str:
    return FAMILY_COLOURS.get(family(s.point), "#7f7f7f")


def _baseline_line(ax: Any, d: Design) -> None:
    if d.baselines:
        base = 100 * max(float(r["metrics"]["miou"]) for r in d.baselines)
        ax.axhline(base, color="black", linestyle=":", linewidth=1, label=f"colour baseline ({base:.1f})")


def plot_front(d: Design, out: Path) -> Plot:
    name, title = "study_front.png", "Speed/accuracy front"
    pts = [(s, _mean_std(s, "miou", 100), _mean_std(s, "images_per_s")) for s in d.settings]
    pts = [p for p in pts if p[1] and p[2]]
    if len(pts) < 2:
        return Plot(name, title, None, f"needs two settings with mIoU and throughput (found {len(pts)})")
    front = pareto_front([{"ips": x[0], "miou": y[0], "s": s} for s, y, x in pts])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 6.5))
    on_front = {id(p["s"]) for p in front}
    for s, (y, ys), (x, xs) in pts:
        ax.errorbar(x, y, xerr=xs, yerr=ys, fmt="o", color=_colour(s), ms=7 if id(s) in on_front else 5,
                    mec="black" if id(s) in on_front else _colour(s), capsize=2, elinewidth=0.8)  # fmt: skip
    fx = sorted((p["ips"], p["miou"]) for p in front)
    ax.plot(
        [p[0] for p in fx], [p[1] for p in fx], "--", color="black", linewidth=1, label="front (on means)"
    )
    _baseline_line(ax, d)
    for fam, colour in FAMILY_COLOURS.items():
        ax.plot([], [], "o", color=colour, label=fam)
    xs_all = [x for _, _, (x, _) in pts]
    if max(xs_all) / min(xs_all) > 5:
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = _nice_ticks(min(xs_all) * 0.8, max(xs_all) * 1.25)
        ax.set_xticks(ticks, [fmt_num(t) for t in ticks])
    ax.set_xlabel("training throughput (images/s, mean over seeds; higher is better)")
    ax.set_ylabel("val mIoU (%, mean ± std over seeds)")
    ax.set_title("Accuracy vs training speed: up and to the right is better")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _place_labels(ax, [(x, y, _point_name(d, s)) for s, (y, _), (x, _) in pts])
    return Plot(name, title, _save(fig, out / name),
                caption="Each point is one setting (mean over its seeds; bars: one standard deviation); the dashed "
                        "line joins the settings no other one beats on both speed and mIoU.")  # fmt: skip


def _place_labels(ax: Any, items: list[tuple[float, float, str]], size: float = 7.0) -> None:
    """Annotate each (x, y, text) beside its point, moving a label up or down (in points) until it overlaps
    no label placed before it: the settings of one model cluster at one throughput."""
    to_px = ax.transData.transform
    scale = ax.figure.dpi / 72.0  # points -> pixels
    placed: list[tuple[float, float, float, float]] = []
    for x, y, text in sorted(items, key=lambda it: -it[1]):
        px, py = to_px((x, y))
        w, h = 0.55 * size * len(text) * scale, 1.2 * size * scale
        for dy in (4, -11, 13, -20, 22, -29, 31, -38, 40):
            box = (px + 5 * scale, py + dy * scale, px + 5 * scale + w, py + dy * scale + h)
            if not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, dy), fontsize=size,
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#999999"} if abs(dy) > 4 else None)  # fmt: skip


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 x 10^k between lo and hi (a log axis's labels as plain numbers)."""
    import math

    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return [m * 10.0**k for k in range(k0, k1 + 1) for m in (1, 2, 5) if lo <= m * 10.0**k <= hi]


def _point_name(d: Design, s: Setting) -> str:
    short = _short(d, s)
    return model_label(s.point) if short in ("the reference", "the reference recipe") else short


def _effect_axes(d: Design) -> list[Axis]:
    return [a for a in d.axes if a.name in EFFECT_AXES and len(a.settings) > 1]


def _x(axis: Axis, s: Setting, categories: list[str]) -> float:
    v = s.point.get(axis.name)
    if axis.name == "resolution":
        return float(v[0] * v[1]) if isinstance(v, list) else 0.0
    if isinstance(v, (int, float)) and not isinstance(v, bool) and axis.name != "image_format":
        return float(v)
    return float(categories.index(value_label(axis.name, s.point)))


def _effect_panel(ax: Any, axis: Axis, d: Design) -> None:
    categories = list(dict.fromkeys(value_label(axis.name, s.point) for s in axis.settings))
    lines: dict[str, list[Setting]] = {}
    for s in axis.settings:
        lines.setdefault(model_label(s.point), []).append(s)
    for i, (label, members) in enumerate(lines.items()):
        pts = sorted(
            (_x(axis, s, categories), _mean_std(s, "miou", 100), s) for s in members if s.summary("miou")
        )
        colour = AXIS_COLOURS[i % len(AXIS_COLOURS)] if len(lines) > 1 else _colour(members[0])
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], fmt="-o",
                    color=colour, capsize=3, label=label)  # fmt: skip
    ticks = sorted({_x(axis, s, categories) for s in axis.settings})
    names = {_x(axis, s, categories): value_label(axis.name, s.point) for s in axis.settings}
    if axis.name in ("lr", "batch_size", "resolution"):
        ax.set_xscale("log", base=2 if axis.name != "lr" else 10)
    ax.set_xticks(ticks, [names[t].replace("batch ", "").replace("lr ", "") for t in ticks])
    ax.minorticks_off()
    _baseline_line(ax, d)
    ax.set_xlabel(axis.title.lower())
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"mIoU vs {axis.title.lower()}")
    ax.legend(fontsize=8)


def plot_effects(d: Design, out: Path) -> Plot:
    name, title = "study_effects.png", "Effects of the hyper-parameters"
    axes = _effect_axes(d)
    if not axes:
        return Plot(name, title, None, "no hyper-parameter axis with two or more settings")
    plt = _plt()
    cols = min(2, len(axes))
    rows = -(-len(axes) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax, axis in zip(grid.flat, axes, strict=False):
        _effect_panel(ax, axis, d)
    for ax in list(grid.flat)[len(axes) :]:
        ax.set_visible(False)
    fig.suptitle("One factor at a time from the reference (mean ± std over seeds)")
    fig.tight_layout()
    return Plot(name, title, _save(fig, out / name),
                caption="Each panel changes one factor of the reference setting; a line per architecture where "
                        "the study ran that factor for more than one.")  # fmt: skip


def _curve(s: Setting, part: str, y: str, x: str) -> tuple[list[float], list[float], list[float]]:
    """Mean x, mean y and std y over seeds, point by point (runs cut to the shortest curve)."""
    curves = [r["metrics"].get("curves", {}).get(part, {}) for r in s.runs]
    curves = [c for c in curves if c.get(y) and c.get(x)]
    if not curves:
        return [], [], []
    n = min(len(c[y]) for c in curves)
    xs = [summarize([c[x][i] for c in curves]) for i in range(n)]
    ys = [summarize([c[y][i] for c in curves]) for i in range(n)]
    return [v.mean for v in xs], [v.mean for v in ys], [v.std for v in ys]  # type: ignore[union-attr]


def _curve_settings(d: Design) -> list[Setting]:
    arch = next((a.settings for a in d.axes if a.name == "architecture"), [])
    return arch or ([d.reference] if d.reference else [])


def plot_curves(d: Design, out: Path) -> Plot:
    name, title = "study_curves.png", "Learning curves"
    settings = [s for s in _curve_settings(d) if _curve(s, "eval", "miou", "iter")[0]]
    if not settings:
        return Plot(name, title, None, "no run recorded its curves")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    panels = (("train", "loss", "iter", 1.0, "training loss"), ("eval", "miou", "iter", 100.0, "val mIoU (%)"),
              ("eval", "miou", "wall_s", 100.0, "val mIoU (%)"))  # fmt: skip
    for i, s in enumerate(settings):
        colour = AXIS_COLOURS[i % len(AXIS_COLOURS)] if len(settings) > 1 else _colour(s)
        for ax, (part, y, x, scale, _) in zip(axes, panels, strict=True):
            xs, ys, sd = _curve(s, part, y, x)
            ax.plot(
                xs,
                [scale * v for v in ys],
                color=colour,
                label=model_label(s.point),
                marker="." if part == "eval" else None,
            )
            ax.fill_between(xs, [scale * (v - e) for v, e in zip(ys, sd, strict=True)],
                            [scale * (v + e) for v, e in zip(ys, sd, strict=True)], color=colour, alpha=0.15)  # fmt: skip
    for ax, (_, _, x, _, ylabel) in zip(axes, panels, strict=True):
        ax.set_xlabel(
            "iteration" if x == "iter" else "wall time since the first step (s; evaluations included)"
        )
        ax.set_ylabel(ylabel)
    axes[0].set_title("Training loss vs iteration")
    axes[1].set_title("Val mIoU vs iteration")
    axes[2].set_title("Val mIoU vs wall time")
    _baseline_line(axes[1], d)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return Plot(name, title, _save(fig, out / name),
                caption="Mean over seeds; the band is one standard deviation. The architectures at the reference "
                        "recipe.")  # fmt: skip


def plot_per_class(d: Design, out: Path, names: Sequence[str]) -> Plot:
    name, title = "study_per_class.png", "Per-class IoU: FCN vs U-Net"
    pair = family_pair(d)
    if pair is None:
        return Plot(name, title, None, "needs an FCN and a U-Net setting with finished runs")
    from cityseg_fast.report.study_text import _class_iou

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 8))
    h = 0.4
    for j, s in enumerate(pair):
        stats = [summarize(_class_iou(s, i)) for i in range(len(names))]
        ys = [i + (j - 0.5) * h for i in range(len(names))]
        ax.barh(ys, [100 * v.mean if v else 0 for v in stats], height=h, xerr=[100 * v.std if v else 0 for v in stats],
                color=_colour(s), label=f"{model_label(s.point)} ({family(s.point)})", capsize=2)  # fmt: skip
    ax.set_yticks(range(len(names)), list(names))
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%, mean ± std over seeds)")
    ax.set_title("Per-class IoU of the best FCN and the best U-Net setting")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return Plot(name, title, _save(fig, out / name),
                caption="The best setting of each family by mean mIoU; bars are means over seeds.")  # fmt: skip


def _artifact(row: dict[str, Any], rel: str, results_dir: Path) -> Path | None:
    """A file a row references, relative to its run dir; found in place or under the study folder's runs/."""
    run_dir = Path(str(row["metrics"].get("out_dir", "")))
    for base in (run_dir, results_dir / "runs" / run_dir.name):
        if (base / rel).is_file():
            return base / rel
    return None


def _example_columns(d: Design) -> list[tuple[str, dict[str, Any]]]:
    """(title, row) of each architecture's lowest-seed run with predictions, best mIoU first, at most MAX_MODELS."""
    cols = []
    for s in _curve_settings(d):
        runs = sorted(
            (r for r in s.runs if r["metrics"].get("val_predictions")),
            key=lambda r: r["point"].get("seed", 0),
        )
        if runs:
            m = s.summary("miou")
            cols.append(
                (
                    m.mean if m else 0.0,
                    f"{model_label(s.point)}\n{100 * m.mean:.1f} mIoU" if m else model_label(s.point),
                    runs[0],
                )
            )
    cols.sort(key=lambda c: -c[0])
    return [(t, r) for _, t, r in cols[:MAX_MODELS]]


def plot_predictions(
    d: Design, out: Path, results_dir: Path, names: Sequence[str], colours: Sequence[Any]
) -> Plot:
    name, title = "study_predictions.png", "Predictions on three val frames"
    cols = _example_columns(d)
    if not cols:
        return Plot(name, title, None, "no run references its prediction PNGs")
    from PIL import Image

    examples = cols[0][1]["metrics"]["val_predictions"]
    panels = [("input", None), ("ground truth", None)] + cols
    files = [[_artifact(cols[0][1], e["input"], results_dir), _artifact(cols[0][1], e["label"], results_dir)]
             + [_artifact(r, e["pred"], results_dir) for _, r in cols] for e in examples]  # fmt: skip
    if any(f is None for row in files for f in row):
        return Plot(
            name,
            title,
            None,
            "prediction PNGs the rows reference are missing (run the study here to draw it)",
        )
    plt = _plt()
    w, h = Image.open(files[0][0]).size
    pw = 2.6
    fig, grid = plt.subplots(
        len(files), len(panels), figsize=(pw * len(panels), pw * h / w * len(files) + 1.2), squeeze=False
    )
    for i, row in enumerate(files):
        for j, path in enumerate(row):
            ax = grid[i][j]
            ax.imshow(Image.open(path).convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(panels[j][0], fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=[c / 255 for c in colours[k]]) for k in range(len(names))]
    fig.legend(handles, list(names), loc="lower center", ncol=10, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return Plot(name, title, _save(fig, out / name),
                caption="Rows: the first three val frames. Columns: the input, the ground truth, and each architecture's "
                        "prediction (its lowest seed) in the Cityscapes palette; black = ignored.")  # fmt: skip


PLOT_FILES = (
    "study_front.png",
    "study_effects.png",
    "study_curves.png",
    "study_per_class.png",
    "study_predictions.png",
)


def make_plots(d: Design, out: Path, results_dir: Path) -> list[Plot]:
    from cityseg_fast.data.labels import CLASS_COLORS, CLASS_NAMES

    for f in PLOT_FILES:
        (out / f).unlink(missing_ok=True)  # an earlier build's plot would be linked by nothing and mislead
    return [plot_front(d, out), plot_effects(d, out), plot_curves(d, out), plot_per_class(d, out, CLASS_NAMES),
            plot_predictions(d, out, results_dir, CLASS_NAMES, CLASS_COLORS)]  # fmt: skip
