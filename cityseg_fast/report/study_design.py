"""A study's rows as settings and axes: which runs are seeds of one setting, which settings form an axis.

    d = design(rows)          # rows: merged result rows (results.merge), any scenarios
    d.reference               # the setting every axis varies one thing of
    d.axes                    # [Axis]: architecture, image format, crop resolution, learning rate, ...

A *setting* is an accuracy point without its seeds (`seed`, `loader_seed`) and the scales it was also
evaluated at (`eval_scales`); its runs are its ok rows, one per seed, and its scale rows (an `eval_scale`
in the point: results.rows_for) are kept per scale beside them, never as settings of their own. A study varies one thing at a time from a reference setting, so the design is read back
from the points alone: the reference is the setting with the most one-factor neighbours, and an axis is
the reference with the settings that differ from it in one factor. A factor is the architecture (the
model keys, which vary together: fcn8s at width 8 is one architecture), the image format (format and
quality) or any other point key. A setting that differs from the reference in its architecture and one
other factor extends that factor's axis with a line of its own ("mIoU vs resolution per model").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cityseg_fast.report.runs import peak_memory, res_pixels, resolution
from cityseg_fast.report.stats import Summary, summarize
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import EVAL_SCALE

SEED_KEYS = ("seed", "loader_seed")
NOT_SETTING = (*SEED_KEYS, "eval_scales", EVAL_SCALE)  # keys that do not tell one training setting from another
DTYPE_ORDER = ("fp32", "tf32", "bf16", "fp16")  # the precision axis reads from full precision down
SPEED_AXES = ("compile", "channels_last")  # settings that must not change accuracy (a study checks it)
MODEL_KEYS = frozenset({"model", "base_width", "upsample", "depth", "aux_loss", "aux_weight", "pretrained"})
DATA_KEYS = frozenset({"image_format", "quality", "data_root", "data_size", "data_scale", "label_format"})
TITLES = {
    "architecture": "Architecture",
    "image_format": "Image format",
    "resolution": "Crop resolution",
    "lr": "Learning rate",
    "batch_size": "Batch size",
    "iters": "Training iterations",
    "optimizer": "Optimizer",
    "dtype": "Precision",
    "compile": "Compilation (torch.compile)",
    "channels_last": "Memory format",
}


def model_label(point: Mapping[str, Any]) -> str:
    """'unet_s16', 'unet_s16 d3 transposed', 'fcn8s_vgg16_bn w8': the model and the options it was given."""
    parts = [str(point.get("model", "?"))]
    for key, fmt in (("base_width", "w{}"), ("depth", "d{}"), ("upsample", "{}")):
        if point.get(key) is not None:
            parts.append(fmt.format(point[key]))
    if point.get("aux_loss"):
        parts.append("+aux")
    if point.get("pretrained"):
        parts.append("pretrained")
    return " ".join(parts)


def family(point: Mapping[str, Any]) -> str:
    name = str(point.get("model", ""))
    return "FCN" if name.startswith("fcn") else "U-Net" if name.startswith("unet") else name


def value_label(key: str, point: Mapping[str, Any]) -> str:
    """How one factor's value reads in tables, plots and sentences."""
    if key == "architecture":
        return model_label(point)
    if key == "image_format":
        fmt = str(point.get("image_format") or "?")
        return f"JPEG q{point.get('quality')}" if fmt == "jpeg" else fmt.upper()
    if key == "resolution":
        return resolution(point) or "?"
    if key == "batch_size":
        return f"batch {point.get(key)}"
    if key == "lr":
        return f"lr {point.get(key):g}" if isinstance(point.get(key), (int, float)) else "lr ?"
    if key == "dtype":
        return str(point.get(key, "fp32"))
    if key == "compile":
        return "eager" if point.get(key, "off") == "off" else f"compiled ({point.get(key)})"
    if key == "channels_last":
        return "channels_last" if point.get(key, True) else "NCHW"
    return f"{key}={point.get(key)}"


def factor(key: str) -> str:
    return "architecture" if key in MODEL_KEYS else "image_format" if key in DATA_KEYS else key


@dataclass
class Setting:
    point: dict[str, Any]
    runs: list[Row] = field(default_factory=list)  # ok rows, one per seed
    failed: list[Row] = field(default_factory=list)
    scales: dict[float, list[Row]] = field(default_factory=dict)  # eval scale -> its ok rows, one per seed

    @property
    def seeds(self) -> list[Any]:
        return [r.point.get("seed") for r in self.runs]

    def values(self, key: str) -> list[float]:
        """The metric over the seeds; 'memory' is the peak memory (MiB) the rows record."""
        got = [peak_memory(r)[0] if key == "memory" else r.number(key) for r in self.runs]
        return [v for v in got if v is not None]

    def summary(self, key: str) -> Summary | None:
        return summarize(self.values(key))

    def mean(self, key: str) -> float | None:
        s = self.summary(key)
        return None if s is None else s.mean

    def at_scale(self, scale: float, key: str) -> list[float]:
        """A metric of the scale rows at `scale`, over the seeds."""
        got = [r.number(key) for r in self.scales.get(scale, [])]
        return [v for v in got if v is not None]


def diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[str]:
    """The factors in which two points differ (model keys count as one, format keys as one)."""
    return {factor(k) for k in set(a) | set(b) if a.get(k) != b.get(k)}


@dataclass
class Axis:
    name: str  # "architecture", "image_format" or a point key
    settings: list[Setting]  # sorted by the factor's value; the reference is among them
    anchor: Setting  # what the others are compared with: the reference, PNG on the image-format axis, fp32 on
    # the precision axis

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)

    @property
    def per_model(self) -> bool:
        """Whether the axis has lines for more than one architecture."""
        return len({model_label(s.point) for s in self.settings}) > 1 and self.name != "architecture"

    def anchor_for(self, s: Setting) -> Setting:
        """What `s` is compared with: on a per-model axis, the same architecture at the anchor's value of
        the factor (fcn8s at 32x64 against fcn8s at 64x128, not against the reference U-Net)."""
        if not self.per_model:
            return self.anchor
        same = (o for o in self.settings if model_label(o.point) == model_label(s.point))
        value = self.anchor.point.get(self.name)
        return next((o for o in same if o.point.get(self.name) == value), self.anchor)


def differs_in(ref: Setting | None, s: Setting) -> str:
    """'lr 0.002, 96x192': the factors in which `s` differs from the reference, its architecture aside."""
    if ref is None or s is ref:
        return "the reference"
    factors = sorted(f for f in diff(ref.point, s.point) if f != "architecture")
    return ", ".join(value_label(f, s.point) for f in factors) or "the reference recipe"


@dataclass
class Design:
    settings: list[Setting]
    reference: Setting | None
    axes: list[Axis]
    others: list[Setting]  # settings on no axis
    baselines: list[Row]  # ok colour-baseline rows
    failed: list[Row]  # rows of any scenario that are not ok


def settings_of(rows: Sequence[Row]) -> list[Setting]:
    """Accuracy rows grouped by their point without the seeds (and scales), in order of first appearance;
    each ok scale row under its setting's `scales`."""
    by_key: dict[str, Setting] = {}
    for r in rows:
        if r.scenario != "accuracy":
            continue
        point = {k: v for k, v in r.point.items() if k not in NOT_SETTING}
        s = by_key.setdefault(repr(sorted(point.items())), Setting(point))
        if EVAL_SCALE in r.point:
            if r.ok:
                s.scales.setdefault(float(r.point[EVAL_SCALE]), []).append(r)
        else:
            (s.runs if r.ok else s.failed).append(r)
    return [s for s in by_key.values() if s.runs or s.failed]


def _reference(settings: list[Setting]) -> Setting | None:
    def score(i: int) -> tuple[int, int, int]:
        s = settings[i]
        neighbours = sum(len(diff(s.point, o.point)) == 1 for o in settings)
        return (neighbours, len(s.runs), -i)

    return settings[max(range(len(settings)), key=score)] if settings else None


def _sort_key(name: str, s: Setting, order: list[Setting]) -> tuple:
    p = s.point
    if name == "architecture":
        return (order.index(s),)
    if name == "image_format":
        return (p.get("image_format") != "png", -(p.get("quality") or 0))
    if name == "dtype":
        return (model_label(p) != model_label(order[0].point), model_label(p), DTYPE_ORDER.index(p.get(name, "fp32")))
    if name in SPEED_AXES:  # the reference's setting first: what the others must not differ from
        return (p.get(name) != order[0].point.get(name),)
    v = p.get(name)
    main = res_pixels(resolution(p)) if name == "resolution" else v if isinstance(v, (int, float)) else 0
    return (model_label(p) != model_label(order[0].point), model_label(p), main, str(v))


def _axis(name: str, members: list[Setting], ref: Setting, order: list[Setting]) -> Axis:
    members = sorted(
        {id(s): s for s in [ref, *members]}.values(), key=lambda s: _sort_key(name, s, [ref, *order])
    )
    anchor = ref
    if name == "image_format":
        anchor = next((s for s in members if s.point.get("image_format") == "png"), ref)
    if name == "dtype":  # each precision against full precision, as the precision table compares them
        same = [s for s in members if model_label(s.point) == model_label(ref.point)]
        anchor = next((s for s in same if s.point.get("dtype", "fp32") == "fp32"), ref)
    return Axis(name, members, anchor)


def _series_members(settings: list[Setting], ref: Setting, name: str) -> list[Setting]:
    """Settings of other architectures along factor `name`: those that differ from the reference in
    their architecture and `name` only, for architectures with two or more values of it."""
    lines: dict[str, list[Setting]] = {}
    for s in settings:
        d = diff(ref.point, s.point)
        if d <= {"architecture", name} and "architecture" in d:
            lines.setdefault(model_label(s.point), []).append(s)
    return [s for line in lines.values() if len({repr(m.point.get(name)) for m in line}) > 1 for s in line]


def design(rows: Sequence[Row]) -> Design:
    """The study's settings, reference and axes (see the module docstring)."""
    settings = settings_of(rows)
    ref = _reference(settings)
    baselines = [r for r in rows if r.scenario == "baseline" and r.ok]
    failed = [r for r in rows if not r.ok]
    if ref is None:
        return Design(settings, None, [], [], baselines, failed)
    groups: dict[str, list[Setting]] = {}
    for s in settings:
        d = diff(ref.point, s.point)
        if len(d) == 1:
            groups.setdefault(d.pop(), []).append(s)
    axes = []
    for name, members in groups.items():
        extra = _series_members(settings, ref, name) if name not in ("architecture", "image_format") else []
        axes.append(_axis(name, members + extra, ref, settings))
    axes.sort(key=lambda a: list(TITLES).index(a.name) if a.name in TITLES else len(TITLES))
    placed = {id(s) for a in axes for s in a.settings} | {id(ref)}
    others = [s for s in settings if id(s) not in placed]
    return Design(settings, ref, axes, others, baselines, failed)


def resolution_settings(d: Design) -> list[Setting]:
    """The settings evaluated at several scales that the inference-resolution table and figure show: those
    that differ from the reference in architecture or precision only (every setting with scales if none)."""
    scaled = [s for s in d.settings if len(s.scales) > 1]
    if d.reference is not None:
        scaled = [s for s in scaled if diff(d.reference.point, s.point) <= {"architecture", "dtype"}] or scaled
    models = list(dict.fromkeys(model_label(s.point) for s in scaled))
    return sorted(scaled, key=lambda s: (models.index(model_label(s.point)), DTYPE_ORDER.index(s.point.get("dtype", "fp32"))))
