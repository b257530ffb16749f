"""STUDY.md: a study's Methodology, Results and Conclusions, built from its results.jsonl only.

    build_study_report("runs/study", "runs/study/report")   # -> runs/study/report/STUDY.md + PNGs

The rows are read and merged by cityseg_fast.results (the latest row per point); runs are grouped into
settings and axes by report/study_design.py, summarized over seeds by report/stats.py, put in words by
report/study_text.py and drawn by report/study_plots.py. Nothing is measured or derived here: every
number is a row's, or a mean, standard deviation or test over rows.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from cityseg_fast.config import format_hw
from cityseg_fast.diskio import atomic_path
from cityseg_fast.labels import CLASS_NAMES
from cityseg_fast.paths import check_out_dir
from cityseg_fast.report import study_text as text
from cityseg_fast.report.format import fmt_mib, fmt_num, fmt_ratio, fmt_s, md_table
from cityseg_fast.report.plots import Plot, pareto_front
from cityseg_fast.report.runs import Run, load_run
from cityseg_fast.report.stats import summarize
from cityseg_fast.report.study_design import (
    Axis,
    Design,
    Setting,
    design,
    differs_in,
    model_label,
    resolution_settings,
    value_label,
)
from cityseg_fast.report.study_plots import make_plots
from cityseg_fast.report.tables import env_section
from cityseg_fast.results.scenarios import (
    ACC,
    EVAL_SIZE,
    IMAGES_PER_S,
    INFER_IMAGES_PER_S,
    LOSS_SCALE,
    MIOU,
    SKIPPED_STEPS,
    TRAIN_WALL_S,
)

STUDY_FILE = "STUDY.md"
REFERENCE_FACTORS = ("resolution", "batch_size", "lr", "image_format")  # how Methodology names the reference


def _cells(s: Setting, ref: Setting | None, anchor: Setting | None = None) -> list[str]:
    """Seeds, mIoU, pixel accuracy, img/s, memory, wall time (means ± std) and what the setting is for."""
    ips, mem, wall = s.summary(IMAGES_PER_S), s.summary("memory"), s.summary(TRAIN_WALL_S)
    tags = [t for t, on in (("reference", s is ref), ("compared with", s is anchor and s is not ref)) if on]
    return [
        f"{len(s.runs)}" + (f" (+{len(s.failed)} failed)" if s.failed else ""),
        text.pm(s.summary(MIOU)),
        text.pm(s.summary(ACC)),
        text.pm(ips, 1.0, 1) if ips else "–",
        fmt_mib(mem.mean) if mem else "–",
        fmt_s(wall.mean) if wall else "–",
        ", ".join(tags),
    ]


HEAD = ["seeds", "mIoU (%)", "pixel acc (%)", "train img/s", "peak memory", "train wall", ""]


def axis_table(axis: Axis, ref: Setting | None) -> str:
    first = (["model"] if axis.per_model else []) + [axis.title.lower()]
    body = []
    for s in axis.settings:
        lead = [model_label(s.point)] if axis.per_model else []
        body.append(lead + [value_label(axis.name, s.point)] + _cells(s, ref, axis.anchor))
    right = [False] * len(first) + [True] * 6 + [False]
    return md_table(first + HEAD, body, right)


PRECISION_HEAD = ["model", "precision", "seeds", "mIoU (%)", "train img/s", "speed-up over fp32", "peak memory",
                  "mIoU against fp32 (Welch)"]  # fmt: skip


def precision_table(axis: Axis) -> str:
    """The precision axis: per model and dtype, mIoU, training speed and its ratio to fp32, peak memory and
    the Welch verdict against fp32; with fp16 runs, the GradScaler's last loss scale and skipped steps."""
    scaled = any(r.number(SKIPPED_STEPS) is not None for s in axis.settings for r in s.runs)
    body = []
    for s in axis.settings:
        anchor, mem = axis.anchor_for(s), s.summary("memory")
        cells = [model_label(s.point), value_label("dtype", s.point), str(len(s.runs)), text.pm(s.summary(MIOU)),
                 text.pm(s.summary(IMAGES_PER_S), 1.0, 1), fmt_ratio(s.mean(IMAGES_PER_S), anchor.mean(IMAGES_PER_S)),
                 fmt_mib(mem.mean) if mem else "–",
                 "(fp32: the anchor)" if s is anchor else text.verdict(s.values(MIOU), anchor.values(MIOU))]  # fmt: skip
        if scaled:
            scale, skipped = s.summary(LOSS_SCALE), s.summary(SKIPPED_STEPS)
            cells += [fmt_num(scale.mean) if scale else "–", f"{skipped.mean:.1f}" if skipped else "–"]
        body.append(cells)
    head = PRECISION_HEAD + (["last loss scale", "skipped steps (mean)"] if scaled else [])
    return md_table(head, body, [False, False] + [True] * 5 + [False] + [True] * (2 if scaled else 0))


RESOLUTION_HEAD = ["model", "precision", "scale", "input HxW", "mIoU (%)", "pixel acc (%)", "inference img/s",
                   "speed-up over scale 1", "mIoU against scale 1 (Welch)"]  # fmt: skip


def resolution_table(d: Design) -> str:
    """Per setting and eval scale: the input size, mIoU, pixel accuracy and inference speed over seeds, its
    speed-up over scale 1 and the Welch verdict against it."""
    body = []
    for s in resolution_settings(d):
        for scale in sorted(s.scales):
            runs = s.scales[scale]
            ips, one = summarize(s.at_scale(scale, INFER_IMAGES_PER_S)), summarize(s.at_scale(1.0, INFER_IMAGES_PER_S))
            verdict = "(the anchor)" if scale == 1.0 else text.verdict(s.at_scale(scale, MIOU), s.at_scale(1.0, MIOU))
            body.append([model_label(s.point), value_label("dtype", s.point), f"{scale:g}",
                         format_hw(runs[0].metrics.get(EVAL_SIZE)), text.pm(summarize(s.at_scale(scale, MIOU))),
                         text.pm(summarize(s.at_scale(scale, ACC))), text.pm(ips, 1.0, 1),
                         fmt_ratio(ips.mean if ips else None, one.mean if one else None), verdict])  # fmt: skip
    return md_table(RESOLUTION_HEAD, body, [False, False] + [True] * 6 + [False])


def other_table(settings: list[Setting], d: Design) -> str:
    body = [[model_label(s.point), differs_in(d.reference, s)] + _cells(s, d.reference, s) for s in settings]
    return md_table(
        ["model", "differs from the reference in"] + HEAD, body, [False, False] + [True] * 6 + [False]
    )


def failed_table(d: Design) -> str:
    body = []
    for r in d.failed:
        p = r.point
        body.append(
            [
                r.scenario,
                model_label(p),
                str(p.get("seed", "–")),
                r.status,
                str(r.error or "")[:160],
            ]
        )
    return md_table(["scenario", "model", "seed", "status", "error"], body)


def _figure(fig: Plot) -> str:
    if fig.path is None:
        return f"_{fig.title}: not drawn ({fig.reason})._\n\n"
    return f"### {fig.title}\n\n![{fig.title}]({fig.name})\n\n{fig.caption}\n\n"


def _reference_line(ref: Setting | None) -> str:
    if ref is None:
        return ""
    factors = ", ".join(value_label(k, ref.point) for k in REFERENCE_FACTORS)
    return (f"Reference setting (what every axis changes one thing of): {model_label(ref.point)}, {factors}, "
            f"{ref.point.get('iters')} iterations.\n\n")  # fmt: skip


def methodology(d: Design, run: Run) -> str:
    rows = [r for s in d.settings for r in s.runs + s.failed]
    parts = [
        "## Methodology\n\n",
        f"### Data\n\n{text.data_text(d, rows)}\n\n",
        f"### Models\n\n{text.models_table(d)}\n\n",
        f"### Recipe\n\n{text.recipe(rows)}\n\n",
        _reference_line(d.reference),
        f"### Seeds and statistics\n\n{text.seeds_text(d)}\n\n",
        f"### Measurements\n\n{text.MEASUREMENTS}\n\n",
        f"### Hardware and software\n\n{env_section([run])}\n",
    ]
    return "".join(parts)


def results(d: Design, figures: list[Plot]) -> str:
    parts = ["## Results\n\n"]
    for axis in d.axes:
        table = f"{text.PRECISION_TEXT}\n\n{precision_table(axis)}" if axis.name == "dtype" else axis_table(axis, d.reference)
        parts.append(f"### {axis.title}\n\n{table}\n\n")
    if resolution_settings(d):
        parts.append(f"### Inference resolution\n\n{text.RESOLUTION_TEXT}\n\n{resolution_table(d)}\n\n")
    if d.others:
        parts.append(f"### Other settings\n\n{other_table(d.others, d)}\n\n")
    if d.baselines:
        best = max(d.baselines, key=lambda r: r.metrics[MIOU])
        parts.append("Per-pixel colour baseline (the best classifier of one pixel's colour, fitted on the "
                     f"train split): {100 * best.metrics[MIOU]:.1f} mIoU.\n\n")  # fmt: skip
    parts += [_figure(f) for f in figures]
    if d.failed:
        parts.append(f"### Failed runs\n\n{failed_table(d)}\n\n")
    return "".join(parts)


def front(d: Design) -> list[Setting]:
    """The settings no other one beats on both mean throughput and mean mIoU (report/plots.pareto_front)."""
    pts = [{"ips": s.mean(IMAGES_PER_S), "miou": s.mean(MIOU), "s": s} for s in d.settings]
    return [p["s"] for p in pareto_front([p for p in pts if p["ips"] is not None and p["miou"] is not None])]


def conclusions(d: Design) -> str:
    parts = [f"## Conclusions\n\nEvery sentence is computed from the rows; differences are tested with "
             f"{text.TEST_NAME} over the seeds.\n\n"]  # fmt: skip
    for line in (text.baseline_conclusion(d), text.front_conclusion(front(d), d),
                 text.per_class_conclusion(text.family_pair(d), CLASS_NAMES), text.neutrality_conclusion(d)):  # fmt: skip
        if line:
            parts.append(f"- {line}\n")
    scales = text.resolution_conclusions(d)
    if scales:
        parts.append("\n**Inference resolution** (each at its smallest scale against the full frame):\n\n"
                     + "".join(f"- {x}\n" for x in scales))  # fmt: skip
    for axis in d.axes:
        lines = text.axis_conclusions(axis)
        if lines:
            anchor = text.anchor_phrase(axis)
            parts.append(
                f"\n**{axis.title}** (each against {anchor}):\n\n" + "".join(f"- {x}\n" for x in lines)
            )
    return "".join(parts) + "\n"


def render(run: Run, d: Design, figures: list[Plot], title: str, description: str) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    ok = sum(len(s.runs) for s in d.settings)
    head = (f"# {title}\n\nBuilt {now} by `cityseg study` from `{run.path.name}`: {ok} finished training "
            f"runs of {len(d.settings)} settings, {len(d.failed)} failed row(s). Every number below is a "
            "row's, or a mean, standard deviation or test over rows.\n\n")  # fmt: skip
    if run.bad_lines:
        head += f"**Warning:** {run.skipped_note()} in {run.path}.\n\n"
    if description:
        head += description + "\n\n"
    if not d.settings:
        return head + "_No accuracy rows yet: run the study first._\n"
    return head + methodology(d, run) + results(d, figures) + conclusions(d)


def build_study_report(
    results_dir: str | os.PathLike, out: str | os.PathLike, title: str = "Study", description: str = ""
) -> Path:
    """Write OUT/STUDY.md and its PNGs from RESULTS_DIR/results.jsonl (and the PNGs its rows reference)."""
    out = check_out_dir(out, "--out")
    run = load_run(results_dir)
    d = design(run.rows)
    out.mkdir(parents=True, exist_ok=True)
    figures = make_plots(d, out, run.path.parent) if d.settings else []
    path = out / STUDY_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(render(run, d, figures, title, description))
    return path
