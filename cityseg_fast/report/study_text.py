"""The words of STUDY.md: the methodology, read from the rows' resolved configs and environments, and the
conclusions, sentences computed from the rows, each with its numbers.

A difference between two settings is called a difference only when Welch's t-test over their seeds says
it exceeds the seed spread (report/stats.py: two-sided, p < 0.05); otherwise the sentence says there is no
measurable difference, and with fewer than two seeds on a side, that it cannot tell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cityseg_fast.config import Config, format_hw, to_dict
from cityseg_fast.report.format import fmt_num, md_table
from cityseg_fast.report.stats import TEST_NAME, Summary, Welch, summarize, welch
from cityseg_fast.report.study_design import (
    SPEED_AXES,
    Axis,
    Design,
    Setting,
    differs_in,
    family,
    model_label,
    resolution_settings,
    value_label,
)
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import (
    FLOPS_PER_IMAGE,
    IMAGES_PER_S,
    INFER_IMAGES_PER_S,
    MIOU,
    PARAMS,
    PER_CLASS_IOU,
    TRAIN_FLOPS_PER_IMAGE,
    TRAIN_IMAGES,
    VAL_IMAGES,
    VAL_PREDICTIONS,
)

# The recipe names every key of the config's sections (config.py), sections in this order, others after...
RECIPE_ORDER = ("model", "train", "data", "precision", "loader")
# ...but these: how a benchmark measures (bench), what the Data and Seeds paragraphs say (the dataset, its
# splits and classes; the seeds), and what changes no result (where a run writes, how often it logs and
# saves, how it resumes, its timeouts and guards; the benchmarks' decode-only mode).
NOT_RECIPE = frozenset({
    "bench", "data.root", "data.train_split", "data.val_split", "data.num_classes", "data.ignore_index",
    "train.seed", "loader.seed", "train.out_dir", "train.log_interval", "train.ckpt_interval", "train.keep_ckpts",
    "train.resume", "train.dist_timeout_s", "train.max_nonfinite", "loader.decode_only",
})  # fmt: skip


def recipe_keys() -> tuple[str, ...]:
    """'section.key' of every config key the recipe names, in the order it names them."""
    sections = to_dict(Config())  # {section: {key: default}}, keys in the dataclasses' order
    order = sorted(sections, key=lambda s: RECIPE_ORDER.index(s) if s in RECIPE_ORDER else len(RECIPE_ORDER))
    keys = (f"{s}.{k}" for s in order if s not in NOT_RECIPE for k in sections[s])
    return tuple(k for k in keys if k not in NOT_RECIPE)


RECIPE_KEYS = recipe_keys()  # each is "fixed" (one value in every run) or "varied"


def pm(s: Summary | None, scale: float = 100.0, digits: int = 1) -> str:
    """'31.7 ± 0.8' (a fraction as a percentage by default); '–' for nothing."""
    if s is None:
        return "–"
    if s.n < 2:
        return f"{scale * s.mean:.{digits}f} (1 seed)"
    return f"{scale * s.mean:.{digits}f} ± {scale * s.std:.{digits}f}"


def _test(w: Welch) -> str:
    return f"Welch's t = {w.t:.2f}, df = {w.df:.1f}, p = {w.p:.3g}"


def setting_name(axis: Axis, s: Setting) -> str:
    """The setting as its axis names it: its value, with its architecture on a per-model axis."""
    name = value_label(axis.name, s.point)
    return f"{model_label(s.point)} at {name}" if axis.per_model else name


# ---------------------------------------------------------------- conclusions


def _speed(s: Setting, a: Setting) -> str:
    """'; training throughput 0.61x (12.3 vs 20.1 img/s)', or not measurably different; '' without numbers."""
    ms, ma = s.summary(IMAGES_PER_S), a.summary(IMAGES_PER_S)
    if ms is None or ma is None or ma.mean <= 0:
        return ""
    w = welch(s.values(IMAGES_PER_S), a.values(IMAGES_PER_S))
    nums = f"{fmt_num(ms.mean)} vs {fmt_num(ma.mean)} img/s"
    if w is not None and not w.significant:
        return f"; training throughput not measurably different ({nums})"
    return f"; training throughput {ms.mean / ma.mean:.2f}x ({nums})"


def compare(s: Setting, a: Setting, name_s: str, name_a: str) -> str:
    """One sentence: the mIoU of `s` against `a`, the test's verdict, and the throughput ratio."""
    ms, ma = s.summary(MIOU), a.summary(MIOU)
    if ms is None or ma is None:
        return f"{name_s}: no finished run to compare with {name_a}."
    w = welch(s.values(MIOU), a.values(MIOU))
    head = f"{name_s} reaches {pm(ms)} mIoU"
    if w is None:
        return f"{head} against {pm(ma)} for {name_a}: too few seeds to test (n = {ms.n} and {ma.n})."
    if not w.significant:
        return f"{head} against {pm(ma)} for {name_a}: no measurable difference ({_test(w)}){_speed(s, a)}."
    ratio = f"{ms.mean / ma.mean:.2f}x" if ma.mean > 0 else "above"
    diff = f"{100 * w.diff:+.1f} points"
    return f"{head}, {ratio} {name_a} ({pm(ma)}; {diff}): a difference ({_test(w)}){_speed(s, a)}."


def verdict(xs: Sequence[float], ys: Sequence[float]) -> str:
    """A table cell: the Welch verdict on the seeds' values `xs` against `ys` (fractions: mIoU)."""
    w = welch(xs, ys)
    if w is None:
        return f"too few seeds (n = {len(xs)} and {len(ys)})"
    if not w.significant:
        return f"no measurable difference (p = {w.p:.2g})"
    return f"{100 * w.diff:+.1f} points: a difference (p = {w.p:.2g})"


def neutrality_conclusion(d: Design) -> str:
    """Whether the settings that only change speed (torch.compile, the memory format) changed mIoU beyond
    the seed spread: each against the reference."""
    same, differ, untested = [], [], []
    for axis in (a for a in d.axes if a.name in SPEED_AXES):
        for s in (s for s in axis.settings if s is not axis.anchor_for(s)):
            anchor = axis.anchor_for(s)
            name = f"{setting_name(axis, s)} against {setting_name(axis, anchor)}"
            w = welch(s.values(MIOU), anchor.values(MIOU))
            if w is None:
                untested.append(name)
            elif w.significant:
                differ.append(f"{name} ({100 * w.diff:+.1f} points, p = {w.p:.2g})")
            else:
                same.append(f"{name} (p = {w.p:.2g})")
    text = ""
    if differ:
        text = f"A speed setting changed accuracy beyond the seed spread: {'; '.join(differ)}"
        text += f"; no measurable difference for {'; '.join(same)}." if same else "."
    elif same:
        text = (f"The speed settings are accuracy-neutral as far as {_seeds(d)} seeds can tell: "
                f"{'; '.join(same)}: no measurable mIoU difference, so their speed-ups come at no measured "
                "cost in accuracy.")  # fmt: skip
    return (text + (f" Too few seeds to test {'; '.join(untested)}." if untested else "")).strip()


def _seeds(d: Design) -> int:
    return min(len(s.runs) for s in d.settings)


def resolution_conclusions(d: Design) -> list[str]:
    """Per setting evaluated at several scales: its smallest scale against scale 1 (mIoU, Welch) and the
    inference speed-up that buys."""
    lines = []
    for s in resolution_settings(d):
        if 1.0 not in s.scales:
            continue
        low = min(s.scales)
        m_low, m_one = summarize(s.at_scale(low, MIOU)), summarize(s.at_scale(1.0, MIOU))
        ips_low, ips_one = (summarize(s.at_scale(x, INFER_IMAGES_PER_S)) for x in (low, 1.0))
        if None in (m_low, m_one, ips_low, ips_one):
            continue
        w = welch(s.at_scale(low, MIOU), s.at_scale(1.0, MIOU))
        test = ("too few seeds to test" if w is None else f"a difference ({_test(w)})" if w.significant
                else f"no measurable difference ({_test(w)})")  # fmt: skip
        lines.append(f"{model_label(s.point)}, {value_label('dtype', s.point)}, evaluated at {low:g} of the frame: "
                     f"{ips_low.mean / ips_one.mean:.2f}x the inference speed ({fmt_num(ips_low.mean)} vs "
                     f"{fmt_num(ips_one.mean)} img/s) for {pm(m_low)} mIoU against {pm(m_one)} at full size: "
                     f"{test}.")  # fmt: skip
    return lines


def axis_conclusions(axis: Axis) -> list[str]:
    """Every setting of the axis against its anchor (the reference, PNG, or on a per-model axis the same
    architecture at the reference's value), best first (per architecture on a per-model axis)."""
    others = [s for s in axis.settings if s is not axis.anchor_for(s) and s.mean(MIOU) is not None]
    others.sort(key=lambda s: (model_label(s.point) if axis.per_model else "", -(s.mean(MIOU) or 0.0)))
    lines = []
    for s in others:
        anchor = axis.anchor_for(s)
        lines.append(compare(s, anchor, setting_name(axis, s), setting_name(axis, anchor)))
    return lines


def anchor_phrase(axis: Axis) -> str:
    """'unet_s16' / 'PNG' / 'the same architecture at 64x128': what an axis's sentences compare with."""
    if axis.per_model:
        return f"the same architecture at {value_label(axis.name, axis.anchor.point)}"
    return setting_name(axis, axis.anchor)


def baseline_conclusion(d: Design) -> str:
    """How the settings compare with the per-pixel colour baseline (what colour alone can do)."""
    means = [(s.mean(MIOU), s) for s in d.settings if s.mean(MIOU) is not None]
    if not d.baselines or not means:
        return ""
    base = max(float(r.metrics[MIOU]) for r in d.baselines)
    worst, s = min(means, key=lambda m: m[0])
    above = sum(m > base for m, _ in means)
    head = f"{above} of {len(means)} settings beat the per-pixel colour baseline ({100 * base:.1f} mIoU)"
    weakest = f"{model_label(s.point)} ({differs_in(d.reference, s)})"
    return f"{head}; the weakest, {weakest}, reaches {100 * worst:.1f}."


def front_conclusion(front: Sequence[Setting], d: Design) -> str:
    if not front:
        return ""
    items = "; ".join(
        f"{model_label(s.point)} ({differs_in(d.reference, s)}): {pm(s.summary('miou'))} mIoU at "
        f"{fmt_num(s.mean('images_per_s'))} img/s"
        for s in front
    )
    return (
        f"The speed/accuracy front (mean mIoU against mean training images/s) holds {len(front)} of "
        f"{len(d.settings)} settings, fastest first: {items}. Every other setting is slower and no more "
        "accurate than one of these on the means; the front is not tested against the seed spread."
    )


def class_iou(s: Setting, i: int) -> list[float]:
    """IoU of class i over the setting's seeds (classes absent from labels and predictions left out)."""
    ious = [(r.metrics.get(PER_CLASS_IOU) or [])[i : i + 1] for r in s.runs]
    return [float(v[0]) for v in ious if v and isinstance(v[0], (int, float))]


def per_class_conclusion(pair: tuple[Setting, Setting] | None, names: Sequence[str]) -> str:
    """The classes on which the best FCN or the best U-Net setting wins beyond the seed spread."""
    if pair is None:
        return ""
    fcn, unet = pair
    wins: dict[int, list[str]] = {1: [], -1: []}  # sign of (U-Net - FCN)
    for i, name in enumerate(names):
        w = welch(class_iou(unet, i), class_iou(fcn, i))
        if w is not None and w.significant:
            wins[1 if w.diff > 0 else -1].append(name)
    tied = len(names) - len(wins[1]) - len(wins[-1])
    u, f = model_label(unet.point), model_label(fcn.point)
    return (
        f"Per class, {u} beats {f} beyond the seed spread on {len(wins[1])} of {len(names)} classes "
        f"({', '.join(wins[1]) or 'none'}), {f} wins on {len(wins[-1])} ({', '.join(wins[-1]) or 'none'}); "
        f"on the other {tied} there is no measurable difference."
    )


def family_pair(d: Design) -> tuple[Setting, Setting] | None:
    """(best FCN, best U-Net) by mean mIoU, on the architecture axis where there is one; None without both."""
    candidates = next((a.settings for a in d.axes if a.name == "architecture"), d.settings)
    best: dict[str, tuple[float, Setting]] = {}
    for s in candidates:
        m, fam = s.mean(MIOU), family(s.point)
        if m is not None and fam in ("FCN", "U-Net") and m > best.get(fam, (-1.0, s))[0]:
            best[fam] = (m, s)
    return (best["FCN"][1], best["U-Net"][1]) if len(best) == 2 else None


# ---------------------------------------------------------------- methodology


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{sec}.{k}": v for sec, vs in config.items() if isinstance(vs, dict) for k, v in vs.items()}


def _shown(v: Any) -> str:
    if isinstance(v, list):
        return format_hw(v)
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if v == "":
        return '""'
    return f"{v:g}" if isinstance(v, float) else str(v)


def recipe(rows: Sequence[Row]) -> str:
    """The recipe keys fixed in every run (with their value) and the varied ones (with every value)."""
    flats = [_flat(r.config) for r in rows]
    fixed, varied = [], []
    for key in RECIPE_KEYS:
        values = sorted({_shown(f.get(key)) for f in flats if key in f})
        if len(values) == 1:
            fixed.append(f"`{key}` {values[0]}")
        elif values:
            varied.append(f"`{key}` ∈ {{{', '.join(values)}}}")
    text = "Fixed in every run: " + ", ".join(fixed) + "."
    if varied:
        text += "\n\nVaried (one at a time from the reference; see Results): " + ", ".join(varied) + "."
    return text


def _listed(values: Any) -> str:
    shown = sorted({str(v) for v in values if v})
    return ", ".join(shown) or "?"


def data_text(d: Design, rows: Sequence[Row]) -> str:
    """Splits, image counts and sizes, formats and dataset roots, as the rows record them."""
    data = [r.config["data"] for r in rows]
    metrics = [r.metrics for r in rows]
    sizes = _listed(format_hw(e["size"]) for m in metrics for e in m.get(VAL_PREDICTIONS) or [])
    eval_sizes = {_shown(c["eval_size"]) for c in data}
    at = "full resolution" if eval_sizes == {"null"} else "size " + ", ".join(sorted(eval_sizes))
    first = data[0]
    formats = _listed(value_label("image_format", s.point) for s in d.settings)
    n_train, n_val = (_listed(m.get(k) for m in metrics) for k in (TRAIN_IMAGES, VAL_IMAGES))
    return (
        f"Train split `{first['train_split']}` ({n_train} images), evaluated on split `{first['val_split']}` "
        f"({n_val} images of {sizes} (HxW), at {at}); the test split is never read. "
        f"{first['num_classes']} classes, label {first['ignore_index']} ignored. Image formats: {formats}; "
        "dataset roots: " + ", ".join(f"`{r}`" for r in sorted({c["root"] for c in data})) + "."
    )


FLOP_KEYS = (FLOPS_PER_IMAGE, TRAIN_FLOPS_PER_IMAGE)


def models_table(d: Design) -> str:
    """Parameters and FLOPs per image of each architecture, at the reference crop where it ran there."""
    crop = d.reference.point.get("resolution") if d.reference else None
    seen: dict[str, Setting] = {}
    for s in sorted(d.settings, key=lambda s: s.point.get("resolution") != crop):
        if s.runs:
            seen.setdefault(model_label(s.point), s)
    body = []
    for label, s in seen.items():
        m = s.runs[0].metrics
        gflop = [fmt_num(m[k] / 1e9) if m.get(k) else "–" for k in FLOP_KEYS]
        params = f"{m[PARAMS] / 1e6:.2f} M" if m.get(PARAMS) else "–"
        crop_hw = format_hw(s.point["resolution"]) if s.point.get("resolution") else ""
        body.append([label, family(s.point), params, crop_hw, *gflop])
    head = ["model", "family", "parameters", "crop", "GFLOP/image forward", "GFLOP/image train step"]
    return md_table(head, body, [False, False, True, False, True, True])


def seeds_text(d: Design) -> str:
    seeds = sorted({x for s in d.settings for x in s.seeds if x is not None})
    ns = sorted({len(s.runs) for s in d.settings})
    return (
        f"Seeds {seeds}: seed s sets `train.seed` (initial weights, dropout) and `loader.seed` (data order, "
        "crops, flips) to s, so the spread over seeds is the whole run-to-run variation. Finished seeds per "
        f"setting: {', '.join(map(str, ns))}. Tables show the mean ± sample standard deviation over seeds. "
        f"Two settings are called different only when {TEST_NAME} says so; with {min(ns)} seeds the test is "
        "weak, so 'no measurable difference' means a difference smaller than the seed spread can show, not "
        "no difference."
    )


PRECISION_TEXT = (
    "Each precision against the same model in fp32: speed-up is the ratio of the mean training images/s; the "
    f"verdict is {TEST_NAME} on mIoU over the seeds. bf16 and fp16 are autocast (fp16 with a GradScaler, whose "
    "last loss scale and skipped steps are shown where runs recorded them); tf32 runs fp32 matmuls and "
    "convolutions in TF32."
)
RESOLUTION_TEXT = (
    "Each trained model (its final weights) evaluated again with its input resized to a scale of the val frame: "
    "labels stay at full resolution and the logits are upsampled to them, as `data.eval_size` does "
    "(`cityseg eval --scales`). Inference images/s: the eval-mode forward of a batch of `loader.eval_batch_size` "
    "images of that size, in the run's precision, timed as `cityseg bench infer` times (`bench.warmup` untimed, "
    "`bench.iters` timed steps). Scale 1 is the run's own evaluation."
)

MEASUREMENTS = (
    "mIoU: intersection over union per class over the whole validation split (cityscapesscripts' rules: a "
    "class absent from labels and predictions is left out), averaged over the 19 classes; pixel accuracy "
    "over all labelled pixels. Training img/s: the median over the run's log intervals of images per second "
    "(evaluation and checkpoint time excluded). Wall time: training from the first step to the last "
    "evaluation. Peak memory: torch's peak allocated on a GPU, the process's peak RSS on a CPU. FLOPs: one "
    "image at the training crop, counted by torch's FlopCounterMode (bench/flops.py), forward and training "
    "step."
)
