"""STUDY.md's figures: the speed/accuracy front, effect plots, learning curves, per-class IoU, predictions.

Each `plot_*` takes the study's design (report/study_design.py) and the output folder and returns a
plots.Plot: the PNG it wrote, or the reason it drew nothing. Points are means over seeds, error bars
one standard deviation. The prediction figure reads the PNGs the rows reference (bench/accuracy.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cityseg_fast.labels import CLASS_COLORS, CLASS_NAMES
from cityseg_fast.report.figure import Plot, _plt, _save, place_labels
from cityseg_fast.report.format import fmt_num
from cityseg_fast.report.pareto import pareto_front
from cityseg_fast.report.stats import summarize
from cityseg_fast.report.study_design import (
    Axis,
    Design,
    Setting,
    differs_in,
    family,
    model_label,
    resolution_settings,
    value_label,
)
from cityseg_fast.report.study_text import class_iou, family_pair
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import (
    CURVES,
    IMAGES_PER_S,
    INFER_IMAGES_PER_S,
    LOSS_SCALE,
    MIOU,
    OUT_DIR,
    SKIPPED_STEPS,
    VAL_PREDICTIONS,
)

FAMILY_COLOURS = {"U-Net": "#1f77b4", "FCN": "#d62728"}
LINE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
EFFECT_AXES = ("resolution", "lr", "batch_size", "image_format", "iters", "optimizer")
LOG_AXES = {"lr": 10, "batch_size": 2, "resolution": 2}  # factor -> log base of its x axis
MAX_MODELS = 8  # columns of model predictions in the figure
PLOT_FILES = ("study_front.png", "study_effects.png", "study_curves.png", "study_per_class.png",
              "study_predictions.png")  # fmt: skip
MEASURED_PLOT_FILES = ("study_resolution.png", "study_loss_scale.png")  # only for studies that measured them


def _mean_std(s: Setting, key: str, scale: float = 1.0) -> tuple[float, float] | None:
    m = s.summary(key)
    return None if m is None else (scale * m.mean, scale * m.std)


def _colour(s: Setting) -> str:
    return FAMILY_COLOURS.get(family(s.point), "#7f7f7f")


def _baseline_line(ax: Any, d: Design) -> None:
    if d.baselines:
        base = 100 * max(float(r.metrics[MIOU]) for r in d.baselines)
        ax.axhline(base, color="black", linestyle=":", linewidth=1, label=f"colour baseline ({base:.1f})")


# ---------------------------------------------------------------- the front


def plot_front(d: Design, out: Path) -> Plot:
    name, title = "study_front.png", "Speed/accuracy front"
    pts = [(s, _mean_std(s, MIOU, 100), _mean_std(s, IMAGES_PER_S)) for s in d.settings]
    pts = [p for p in pts if p[1] and p[2]]
    if len(pts) < 2:
        return Plot(name, title, None, f"needs two settings with mIoU and throughput (found {len(pts)})")
    front = pareto_front([{"ips": x[0], "miou": y[0], "s": s} for s, y, x in pts])
    on_front = {id(p["s"]) for p in front}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for s, (y, ys), (x, xs) in pts:
        edge = "black" if id(s) in on_front else _colour(s)
        style = {"color": _colour(s), "mec": edge, "ms": 7 if edge == "black" else 5, "capsize": 2}
        ax.errorbar(x, y, xerr=xs, yerr=ys, fmt="o", elinewidth=1, **style)
    fx = sorted((p["ips"], p["miou"]) for p in front)
    ax.plot(*zip(*fx, strict=True), "--", color="black", linewidth=1, label="front (on means; ringed)")
    _baseline_line(ax, d)
    for fam, colour in FAMILY_COLOURS.items():
        ax.plot([], [], "o", color=colour, label=fam)
    _log_x_if_wide(ax, [x for _, _, (x, _) in pts])
    ax.set_xlabel("training throughput (images/s, mean ± std over seeds; higher is better)")
    ax.set_ylabel("val mIoU (%, mean ± std over seeds)")
    ax.set_title("Accuracy vs training speed: up and to the right is better")
    ax.legend(loc="best", fontsize=8)  # wherever it hides no point
    fig.tight_layout()
    place_labels(ax, [(x, y, _point_name(d, s)) for s, (y, _), (x, _) in pts])
    caption = ("Each point is one setting (mean over its seeds; bars: one standard deviation); the dashed "
               "line joins the settings no other one beats on both mean speed and mean mIoU.")  # fmt: skip
    return Plot(name, title, _save(fig, out / name), caption=caption)


def _log_x_if_wide(ax: Any, xs: list[float]) -> None:
    """A log x axis labelled with plain numbers (1, 2, 5 x 10^k) when the values span more than 5x."""
    lo, hi = min(xs) * 0.8, max(xs) * 1.25
    if hi / lo <= 5 * 1.25 / 0.8:
        return
    ax.set_xscale("log")
    ax.minorticks_off()
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in (1, 2, 5) if lo <= m * 10.0**k <= hi]
    ax.set_xticks(ticks, [fmt_num(t) for t in ticks])


def _point_name(d: Design, s: Setting) -> str:
    """'lr 0.002' (the reference model), 'fcn8s_vgg16_bn w8' (another at the reference recipe), or both."""
    short, model = differs_in(d.reference, s), model_label(s.point)
    if short in ("the reference", "the reference recipe"):
        return model
    same_model = d.reference is not None and model == model_label(d.reference.point)
    return short if same_model else f"{model}, {short}"


# ---------------------------------------------------------------- effects


def _x(axis: Axis, s: Setting, categories: list[str]) -> float:
    """Where a setting sits on its factor's x axis: pixels for a crop, the value, or a category's index."""
    v = s.point.get(axis.name)
    if axis.name == "resolution" and isinstance(v, list):
        return float(v[0] * v[1])
    if isinstance(v, (int, float)) and not isinstance(v, bool) and axis.name != "image_format":
        return float(v)
    return float(categories.index(value_label(axis.name, s.point)))


def _effect_panel(ax: Any, axis: Axis, d: Design) -> None:
    categories = list(dict.fromkeys(value_label(axis.name, s.point) for s in axis.settings))
    lines: dict[str, list[Setting]] = {}
    for s in axis.settings:
        if s.mean(MIOU) is not None:
            lines.setdefault(model_label(s.point), []).append(s)
    for i, (label, members) in enumerate(lines.items()):
        members.sort(key=lambda s: _x(axis, s, categories))
        stats = [_mean_std(s, MIOU, 100) or (0.0, 0.0) for s in members]
        colour = LINE_COLOURS[i % len(LINE_COLOURS)] if len(lines) > 1 else _colour(members[0])
        ax.errorbar([_x(axis, s, categories) for s in members], [m for m, _ in stats],
                    yerr=[e for _, e in stats], fmt="-o", color=colour, capsize=3, label=label)  # fmt: skip
    ticks = {_x(axis, s, categories): value_label(axis.name, s.point) for s in axis.settings}
    if axis.name in LOG_AXES:
        ax.set_xscale("log", base=LOG_AXES[axis.name])
    ax.set_xticks(sorted(ticks), [ticks[t].removeprefix("batch ").removeprefix("lr ") for t in sorted(ticks)])
    ax.minorticks_off()
    _baseline_line(ax, d)
    ax.set_xlabel(axis.title.lower())
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"mIoU vs {axis.title.lower()}")
    ax.legend(fontsize=8)


def plot_effects(d: Design, out: Path) -> Plot:
    name, title = "study_effects.png", "Effects of the hyper-parameters"
    axes = [a for a in d.axes if a.name in EFFECT_AXES and len(a.settings) > 1]
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
    caption = ("Each panel changes one factor of the reference setting; a line per architecture where the "
               "study ran that factor for more than one.")  # fmt: skip
    return Plot(name, title, _save(fig, out / name), caption=caption)


# ---------------------------------------------------------------- learning curves


def _curve(s: Setting, part: str, y: str, x: str) -> tuple[list[float], list[float], list[float]]:
    """Mean x, mean y and std y over seeds, point by point (every run cut to the shortest curve)."""
    curves = [r.metrics.get(CURVES, {}).get(part, {}) for r in s.runs]
    curves = [c for c in curves if c.get(y) and c.get(x)]
    n = min((len(c[y]) for c in curves), default=0)
    xs = [summarize([c[x][i] for c in curves]) for i in range(n)]
    ys = [summarize([c[y][i] for c in curves]) for i in range(n)]
    return [v.mean for v in xs if v], [v.mean for v in ys if v], [v.std for v in ys if v]


def _architectures(d: Design) -> list[Setting]:
    """The architecture axis's settings (all at the reference recipe), else the reference alone."""
    arch = next((a.settings for a in d.axes if a.name == "architecture"), [])
    return arch or ([d.reference] if d.reference else [])


CURVE_PANELS = (  # (curve, y, x, scale, y label, title)
    ("train", "loss", "iter", 1.0, "training loss", "Training loss vs iteration"),
    ("eval", "miou", "iter", 100.0, "val mIoU (%)", "Val mIoU vs iteration"),
    ("eval", "miou", "wall_s", 100.0, "val mIoU (%)", "Val mIoU vs wall time"),
)


def plot_curves(d: Design, out: Path) -> Plot:
    name, title = "study_curves.png", "Learning curves"
    settings = [s for s in _architectures(d) if _curve(s, "eval", "miou", "iter")[0]]
    if not settings:
        return Plot(name, title, None, "no run recorded its curves")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, s in enumerate(settings):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        for ax, (part, y, x, scale, _, _) in zip(axes, CURVE_PANELS, strict=True):
            xs, ys, sd = _curve(s, part, y, x)
            marker = "." if part == "eval" else None
            ax.plot(xs, [scale * v for v in ys], color=colour, label=model_label(s.point), marker=marker)
            band = [(scale * (v - e), scale * (v + e)) for v, e in zip(ys, sd, strict=True)]
            ax.fill_between(xs, [b[0] for b in band], [b[1] for b in band], color=colour, alpha=0.15)
    for ax, (_, _, x, _, ylabel, panel_title) in zip(axes, CURVE_PANELS, strict=True):
        ax.set_xlabel("iteration" if x == "iter" else "wall time since the first step (s; with evaluations)")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
    _baseline_line(axes[1], d)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    caption = "Mean over seeds; the band: one standard deviation. Each architecture at the reference recipe."
    return Plot(name, title, _save(fig, out / name), caption=caption)


# ---------------------------------------------------------------- per-class IoU


def plot_per_class(d: Design, out: Path, names: Sequence[str]) -> Plot:
    name, title = "study_per_class.png", "Per-class IoU: FCN vs U-Net"
    pair = family_pair(d)
    if pair is None:
        return Plot(name, title, None, "needs an FCN and a U-Net setting with finished runs")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 8))
    h = 0.4
    for j, s in enumerate(pair):
        stats = [summarize(class_iou(s, i)) for i in range(len(names))]
        means, stds = [100 * v.mean if v else 0 for v in stats], [100 * v.std if v else 0 for v in stats]
        ax.barh([i + (j - 0.5) * h for i in range(len(names))], means, height=h, xerr=stds, color=_colour(s),
                label=f"{model_label(s.point)} ({family(s.point)})", capsize=2)  # fmt: skip
    ax.set_yticks(range(len(names)), list(names))
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%, mean ± std over seeds)")
    ax.set_title("Per-class IoU of the best FCN and the best U-Net setting")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    caption = "The best setting of each family by mean mIoU; bars are means over seeds."
    return Plot(name, title, _save(fig, out / name), caption=caption)


# ---------------------------------------------------------------- inference resolution and loss scale

DTYPE_STYLES = {"fp32": "-", "tf32": "-.", "bf16": "--", "fp16": ":"}


def plot_resolution(d: Design, out: Path) -> Plot:
    name, title = "study_resolution.png", "Inference resolution: mIoU vs inference speed"
    settings = resolution_settings(d)
    if not settings:
        return Plot(name, title, None, "no run was evaluated at several input scales (bench.eval_scales)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6))
    colours = {m: LINE_COLOURS[i % len(LINE_COLOURS)]
               for i, m in enumerate(dict.fromkeys(model_label(s.point) for s in settings))}  # fmt: skip
    labels = []
    for s in settings:
        scales = sorted(s.scales)
        xs = [summarize(s.at_scale(k, INFER_IMAGES_PER_S)) for k in scales]
        ys = [summarize(s.at_scale(k, MIOU)) for k in scales]
        keep = [(k, x, y) for k, x, y in zip(scales, xs, ys, strict=True) if x and y]
        dtype = value_label("dtype", s.point)
        ax.errorbar([x.mean for _, x, _ in keep], [100 * y.mean for _, _, y in keep],
                    yerr=[100 * y.std for _, _, y in keep], xerr=[x.std for _, x, _ in keep],
                    fmt="o" + DTYPE_STYLES.get(dtype, "-"), color=colours[model_label(s.point)], capsize=3,
                    label=f"{model_label(s.point)}, {dtype}")  # fmt: skip
        labels += [(x.mean, 100 * y.mean, f"×{k:g}") for k, x, y in keep]
    _log_x_if_wide(ax, [x for x, _, _ in labels])
    ax.set_xlabel("inference throughput (images/s at the scaled input, mean ± std over seeds)")
    ax.set_ylabel("val mIoU (%, labels at full resolution)")
    ax.set_title("Evaluating at a lower input resolution: inference speed and mIoU, per scale")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    place_labels(ax, labels)
    caption = ("One curve per model and precision: each point is one input scale of the val frame (×scale), "
               "mean over seeds; the model was trained once per seed and evaluated at every scale.")  # fmt: skip
    return Plot(name, title, _save(fig, out / name), caption=caption)


def _scale_traces(s: Setting) -> list[tuple[list[float], list[float]]]:
    """(iterations, loss scale) of each run of `s` that recorded its fp16 loss scale."""
    curves = [r.metrics.get(CURVES, {}).get("train", {}) for r in s.runs]
    return [(c["iter"], c[LOSS_SCALE]) for c in curves if c.get(LOSS_SCALE)]


def plot_loss_scale(d: Design, out: Path) -> Plot:
    name, title = "study_loss_scale.png", "fp16 loss scale"
    traced = [s for s in d.settings if _scale_traces(s)]
    if not traced:
        return Plot(name, title, None, "no fp16 run recorded its loss scale")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, s in enumerate(traced):
        skipped = s.summary(SKIPPED_STEPS)
        label = f"{model_label(s.point)}" + (f" ({skipped.mean:.1f} steps skipped per run)" if skipped else "")
        for j, (xs, ys) in enumerate(_scale_traces(s)):
            ax.plot(xs, ys, drawstyle="steps-post", marker=".", color=LINE_COLOURS[i % len(LINE_COLOURS)],
                    alpha=0.8, label=label if j == 0 else None)  # fmt: skip
    ax.set_yscale("log", base=2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("GradScaler loss scale (log2)")
    ax.set_title("The fp16 loss scale at each log interval, one line per run (seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    caption = ("GradScaler halves the scale at every step whose gradients overflowed (that step is skipped) and "
               "doubles it after 2000 clean steps; read at each log interval's one sync.")  # fmt: skip
    return Plot(name, title, _save(fig, out / name), caption=caption)


# ---------------------------------------------------------------- predictions


def _artifact(row: Row, rel: str, results_dir: Path) -> Path | None:
    """A file a row names relative to its run dir: in place, or under the study folder's runs/ (moved)."""
    run_dir = Path(str(row.metrics.get(OUT_DIR, "")))
    for base in (run_dir, results_dir / "runs" / run_dir.name):
        if (base / rel).is_file():
            return base / rel
    return None


def _example_columns(d: Design) -> list[tuple[str, Row]]:
    """(title, row) of each architecture's lowest-seed run with predictions: the MAX_MODELS best."""
    cols = []
    for s in _architectures(d):
        runs = [r for r in s.runs if r.metrics.get(VAL_PREDICTIONS)]
        runs.sort(key=lambda r: r.point.get("seed", 0))
        m = s.mean(MIOU)
        if runs and m is not None:
            cols.append((m, f"{model_label(s.point)}\n{100 * m:.1f} mIoU", runs[0]))
    cols.sort(key=lambda c: -c[0])
    return [(t, r) for _, t, r in cols[:MAX_MODELS]]


def _example_files(cols: list[tuple[str, Row]], results_dir: Path) -> list[list[Path | None]]:
    """Per val frame: its input and ground truth (the first column's run's) and each column's prediction."""
    first = cols[0][1]
    return [[_artifact(first, e["input"], results_dir), _artifact(first, e["label"], results_dir)]
            + [_artifact(r, e["pred"], results_dir) for _, r in cols]
            for e in first.metrics[VAL_PREDICTIONS]]  # fmt: skip


def plot_predictions(
    d: Design, out: Path, results_dir: Path, names: Sequence[str], colours: Sequence[Any]
) -> Plot:
    name, title = "study_predictions.png", "Predictions on three val frames"
    cols = _example_columns(d)
    if not cols:
        return Plot(name, title, None, "no run references its prediction PNGs")
    files = _example_files(cols, results_dir)
    if any(f is None for row in files for f in row):
        return Plot(name, title, None, "the prediction PNGs the rows name are missing (moved without them?)")
    images = [[_rgb(f) for f in row] for row in files]
    h, w = images[0][0].shape[:2]
    heads = ["input", "ground truth"] + [t for t, _ in cols]
    plt = _plt()
    pw = min(2.6, 22.0 / len(heads))  # inches per panel: the figure stays within ~22 inches
    size = (pw * len(heads), pw * h / w * len(images) + 1.2)
    fig, grid = plt.subplots(len(images), len(heads), figsize=size, squeeze=False)
    for i, row in enumerate(images):
        for j, img in enumerate(row):
            grid[i][j].imshow(img)
            grid[i][j].set_xticks([])
            grid[i][j].set_yticks([])
            if i == 0:
                grid[i][j].set_title(heads[j], fontsize=8)
    patches = [plt.Rectangle((0, 0), 1, 1, color=[c / 255 for c in colours[k]]) for k in range(len(names))]
    fig.legend(patches, list(names), loc="lower center", ncol=10, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    caption = ("Rows: the first three val frames. Columns: the input, the ground truth, and each "
               "architecture's prediction (its lowest seed) in the Cityscapes palette; black: ignored.")
    return Plot(name, title, _save(fig, out / name), caption=caption)


def _rgb(path: Path | None) -> Any:
    """An RGB array of a PNG (palette PNGs expand to their colours); the file is closed after."""

    with Image.open(str(path)) as img:
        return np.asarray(img.convert("RGB"))


def make_plots(d: Design, out: Path, results_dir: Path) -> list[Plot]:
    for f in PLOT_FILES + MEASURED_PLOT_FILES:
        (out / f).unlink(missing_ok=True)  # an earlier build's plot would be linked by nothing and mislead
    figures = [plot_front(d, out), plot_effects(d, out), plot_curves(d, out)]
    figures.append(plot_per_class(d, out, CLASS_NAMES))
    figures.append(plot_predictions(d, out, results_dir, CLASS_NAMES, CLASS_COLORS))
    measured = [plot_resolution(d, out), plot_loss_scale(d, out)]  # a study without scales or fp16: not shown
    return figures + [f for f in measured if f.path is not None]
