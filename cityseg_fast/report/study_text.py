"""The words of STUDY.md: the methodology, read from the rows' resolved configs and environments, and the
conclusions, sentences computed from the rows, each with its numbers.

A difference between two settings is called a difference only when Welch's t-test over their seeds says
it exceeds the seed spread (report/stats.py: two-sided, p < 0.05); otherwise the sentence says there is no
measurable difference, and with fewer than two seeds on a side, that it cannot tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cityseg_fast.report.format import fmt_num, md_table
from cityseg_fast.report.stats import TEST_NAME, Summary, Welch, welch
from cityseg_fast.report.study_design import Axis, Design, Setting, family, model_label, value_label

# Config keys the recipe names, in this order; each is "fixed" (one value in every run) or "varied".
RECIPE_KEYS = (
    "model.name", "model.base_width", "model.depth", "model.upsample", "model.aux_loss", "model.pretrained",
    "train.iters", "loader.batch_size", "train.optimizer", "train.lr", "train.momentum", "train.weight_decay",
    "train.warmup_iters", "train.warmup_factor", "train.poly_power", "train.min_lr", "train.aux_weight",
    "train.grad_clip", "train.eval_interval", "data.crop", "data.scale_range", "data.flip_prob",
    "data.eval_size", "precision.dtype", "precision.channels_last", "precision.compile", "loader.backend",
    "loader.device", "loader.num_threads", "loader.num_workers", "train.sync_bn",
)  # fmt: skip


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
    """', at 0.61x its training throughput' or ', at a training throughput not measurably different'."""
    ms, ma = s.summary("images_per_s"), a.summary("images_per_s")
    if ms is None or ma is None or ma.mean <= 0:
        return ""
    w = welch(s.values("images_per_s"), a.values("images_per_s"))
    nums = f"{fmt_num(ms.mean)} vs {fmt_num(ma.mean)} img/s"
    if w is not None and not w.significant:
        return f", at a training throughput not measurably different ({nums})"
    return f", at {ms.mean / ma.mean:.2f}x its training throughput ({nums})"


def compare(s: Setting, a: Setting, name_s: str, name_a: str) -> str:
    """One sentence: the mIoU of `s` against `a`, the verdict of the test, and the throughput ratio."""
    ms, ma = s.summary("miou"), a.summary("miou")
    if ms is None or ma is None:
        return f"{name_s}: no finished run to compare with {name_a}."
    w = welch(s.values("miou"), a.values("miou"))
    head = f"{name_s} reaches {pm(ms)} mIoU"
    if w is None:
        return f"{head} against {pm(ma)} for {name_a}: too few seeds to test (n = {ms.n} and {ma.n})."
    if not w.significant:
        return f"{head} against {pm(ma)} for {name_a}: no measurable difference ({_test(w)})."
    ratio = ms.mean / ma.mean if ma.mean > 0 else float("inf")
    return (f"{head}, {ratio:.2f}x {name_a} ({pm(ma)}; {100 * w.diff:+.1f} points){_speed(s, a)}: "
            f"a difference ({_test(w)}).")  # fmt: skip


def axis_conclusions(axis: Axis) -> list[str]:
    """Every setting of the axis against its anchor (the reference, or PNG), best first."""
    others = [s for s in axis.settings if s is not axis.anchor and s.summary("miou")]
    others.sort(key=lambda s: -s.summary("miou").mean)  # type: ignore[union-attr]
    anchor = setting_name(axis, axis.anchor)
    return [compare(s, axis.anchor, setting_name(axis, s), anchor) for s in others]


def baseline_conclusion(d: Design) -> str:
    """How the settings compare with the per-pixel colour baseline (what colour alone can do)."""
    if not d.baselines:
        return ""
    base = max(float(r["metrics"]["miou"]) for r in d.baselines)
    means = [(s.summary("miou").mean, s) for s in d.settings if s.summary("miou")]  # type: ignore[union-attr]
    if not means:
        return ""
    worst, s = min(means, key=lambda m: m[0])
    above = sum(m > base for m, _ in means)
    head = f"{above} of {len(means)} settings beat the per-pixel colour baseline ({100 * base:.1f} mIoU)"
    return f"{head}; the weakest, {model_label(s.point)} ({_short(d, s)}), reaches {100 * worst:.1f}."


def _short(d: Design, s: Setting) -> str:
    ref = d.reference
    if ref is None or s is ref:
        return "the reference"
    from cityseg_fast.report.study_design import diff

    return ", ".join(
        value_label(f, s.point) for f in sorted(diff(ref.point, s.point)) if f != "architecture"
    ) or ("the reference recipe")


def front_conclusion(front: Sequence[Setting], d: Design) -> str:
    if not front:
        return ""
    items = "; ".join(
        f"{model_label(s.point)} ({_short(d, s)}): {pm(s.summary('miou'))} mIoU at "
        f"{fmt_num(s.summary('images_per_s').mean)} img/s"  # type: ignore[union-attr]
        for s in front
    )
    return (f"The speed/accuracy front (mean mIoU against mean training images/s) holds {len(front)} of "
            f"{len(d.settings)} settings, fastest first: {items}. Every other setting is slower and no more "
            "accurate than one of these on the means; the front is not tested against the seed spread.")  # fmt: skip


def per_class_conclusion(pair: tuple[Setting, Setting] | None, names: Sequence[str]) -> str:
    """Classes on which the better of an FCN and a U-Net setting wins beyond the seed spread."""
    if pair is None:
        return ""
    fcn, unet = pair
    wins: dict[str, list[str]] = {"U-Net": [], "FCN": []}
    for i, name in enumerate(names):
        w = welch(_class_iou(unet, i), _class_iou(fcn, i))
        if w is not None and w.significant:
            wins["U-Net" if w.diff > 0 else "FCN"].append(name)
    tied = len(names) - len(wins["U-Net"]) - len(wins["FCN"])
    shown = {k: ", ".join(v) if v else "none" for k, v in wins.items()}
    return (f"Per class, {model_label(unet.point)} beats {model_label(fcn.point)} beyond the seed spread on "
            f"{len(wins['U-Net'])} of {len(names)} classes ({shown['U-Net']}), {model_label(fcn.point)} wins on "
            f"{len(wins['FCN'])} ({shown['FCN']}); on the other {tied} there is no measurable difference.")  # fmt: skip


def _class_iou(s: Setting, i: int) -> list[float]:
    out = []
    for r in s.runs:
        ious = r["metrics"].get("per_class_iou") or []
        if i < len(ious) and isinstance(ious[i], (int, float)):
            out.append(float(ious[i]))
    return out


def family_pair(d: Design) -> tuple[Setting, Setting] | None:
    """(best FCN, best U-Net) setting by mean mIoU, at the reference recipe where possible; None without both."""
    arch = next((a.settings for a in d.axes if a.name == "architecture"), d.settings)
    best: dict[str, Setting] = {}
    for s in arch:
        m = s.summary("miou")
        fam = family(s.point)
        if (
            m is not None
            and fam in ("FCN", "U-Net")
            and (fam not in best or m.mean > best[fam].summary("miou").mean)
        ):  # type: ignore[union-attr]
            best[fam] = s
    return (best["FCN"], best["U-Net"]) if len(best) == 2 else None


# ---------------------------------------------------------------- methodology


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{sec}.{k}": v
        for sec, values in config.items()
        if isinstance(values, dict)
        for k, v in values.items()
    }


def _shown(v: Any) -> str:
    if isinstance(v, list):
        return "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else str(v)
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    return f"{v:g}" if isinstance(v, float) else str(v) if v != "" else '""'


def recipe(rows: Sequence[dict[str, Any]]) -> str:
    """The recipe keys fixed in every run (with their value) and the varied ones (with every value)."""
    flats = [_flat(r["config"]) for r in rows]
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


def data_text(d: Design, rows: Sequence[dict[str, Any]]) -> str:
    cfgs = [r["config"] for r in rows]
    m = [r["metrics"] for r in rows]
    roots = sorted({c["data"]["root"] for c in cfgs})
    formats = sorted({value_label("image_format", s.point) for s in d.settings})
    sizes = sorted(
        {"x".join(map(str, e["size"])) for x in m for e in (x.get("val_predictions") or []) if e.get("size")}
    )
    train_n = sorted({x.get("train_images") for x in m if x.get("train_images")})
    val_n = sorted({x.get("val_images") for x in m if x.get("val_images")})
    eval_size = sorted({_shown(c["data"]["eval_size"]) for c in cfgs})
    split = cfgs[0]["data"]
    return (f"Train split `{split['train_split']}` ({', '.join(map(str, train_n)) or '?'} images), evaluated on "
            f"split `{split['val_split']}` ({', '.join(map(str, val_n)) or '?'} images of "
            f"{', '.join(sizes) or '?'} (HxW), at {'full resolution' if eval_size == ['null'] else 'size ' + ', '.join(eval_size)}); "
            f"the test split is never read. {split['num_classes']} classes, label {split['ignore_index']} ignored. "
            f"Image formats: {', '.join(formats)}; dataset roots: {', '.join(f'`{r}`' for r in roots)}.")  # fmt: skip


def models_table(d: Design) -> str:
    seen: dict[str, Setting] = {}
    for s in d.settings:
        if (
            s.runs
            and model_label(s.point) not in seen
            and (d.reference is None or s.point.get("resolution") == d.reference.point.get("resolution"))
        ):
            seen[model_label(s.point)] = s
    body = []
    for label, s in seen.items():
        m = s.runs[0]["metrics"]
        gf = [fmt_num(m[k] / 1e9) if m.get(k) else "–" for k in ("flops_per_image", "train_flops_per_image")]
        params = f"{m['params'] / 1e6:.2f} M" if m.get("params") else "–"
        body.append([label, family(s.point), params, *gf])
    crop = "x".join(map(str, d.reference.point.get("resolution") or [])) if d.reference else "?"
    return md_table(["model", "family", "parameters", f"GFLOP/image forward ({crop})", "GFLOP/image train step"],
                    body, [False, False, True, True, True])  # fmt: skip


def seeds_text(d: Design) -> str:
    seeds = sorted({x for s in d.settings for x in s.seeds if x is not None})
    ns = sorted({len(s.runs) for s in d.settings})
    return (f"Seeds {seeds}: seed s sets `train.seed` (initial weights, dropout) and `loader.seed` (data order, "
            f"crops, flips) to s, so the spread over seeds is the whole run-to-run variation. Finished seeds per "
            f"setting: {', '.join(map(str, ns))}. Tables show the mean ± sample standard deviation over seeds. "
            f"Two settings are called different only when {TEST_NAME} says so; with {min(ns)} seeds the test is "
            "weak, so 'no measurable difference' means a difference smaller than the seed spread can show, not "
            "no difference.")  # fmt: skip


MEASUREMENTS = (
    "mIoU: intersection over union per class over the whole validation split (cityscapesscripts' rules: a "
    "class absent from labels and predictions is left out), averaged over the 19 classes; pixel accuracy over "
    "all labelled pixels. Training img/s: the median over the run's log intervals of images per second "
    "(evaluation and checkpoint time excluded). Wall time: training from the first step to the last "
    "evaluation. Peak memory: torch's peak allocated on a GPU, the process's peak RSS on a CPU. FLOPs: one "
    "image at the training crop, counted by torch's FlopCounterMode (bench/flops.py), forward and training step."
)
