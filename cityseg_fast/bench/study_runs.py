"""A study: a sweep of training runs, each point once per seed, on data the study makes, with a time estimate.

    study = load_study("configs/studies/cpu_synth.yaml", "runs/study")   # the sweep spec, seeds expanded
    plan(study)            # [PlannedRun]: every run with its seed, estimated seconds and whether it is done
    make_data(study)       # synthesize and prepare the datasets of `study.data` (skipped where present)
    run_sweep(study.spec, study.out)                                      # resumable: bench/sweep.py

A study config is a sweep spec (bench/sweep.py: config, overrides, runs of scenarios x grid) plus a
`study:` block, read here and nowhere else:

    study:
      seeds: [0, 1, 2]          # every point runs once per seed: train.seed = loader.seed = s
      data:                     # optional: made under OUT/data, which $STUDY_DATA names in the spec
        synth: {train: 80, val: 30, size: [128, 256], seed: 0}    # or source: ${CITYSCAPES_DATASET}
        prepare: {q95: {image_format: jpeg, quality: 95}, png: {image_format: png}}
      estimate:                 # the --dry-run's prior; finished runs calibrate it
        gflop_per_s: 100        # training FLOP rate of one device, in the precision the speeds below are relative to
        overhead_s: 8           # per run
        compile_s: 60           # per run with precision.compile on: its compilation
        speed: {bf16: 1.65}     # precision.dtype -> training rate relative to gflop_per_s's (measured; default 1)
        emulated: {bf16: 0.13}  # the same where the device emulates bf16 (hardware.bf16_support), instead

The seed sets both the initial weights (train.seed) and the data order, crops and flips (loader.seed), so
the spread over seeds is the whole run-to-run variation; both are in the accuracy point. Every run starts
afresh (train.resume=never): a run killed half-way is trained again from iteration 0, so its wall time and
throughput are one run's. `write_sweep` saves the expanded spec as OUT/study_sweep.yaml (`cityseg sweep`
runs it too).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cityseg_fast.bench.flops import count_flops
from cityseg_fast.bench.sweep_spec import SweepPoint, SweepSpec, find_spec, load_spec
from cityseg_fast.config import CHOICES, Config, format_hw, load_yaml, replace
from cityseg_fast.data.prepare import prepare_dataset
from cityseg_fast.data.synthetic import write_synthetic
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import bf16_support, resolve_device
from cityseg_fast.models import model_from_config
from cityseg_fast.results import POINT_WALL_S, Row, read_rows

STUDY_KEYS = {"seeds", "data", "estimate", "title"}
DATA_KEYS = {"synth", "source", "prepare"}
SWEEP_FILE = "study_sweep.yaml"
FORCED = ["train.resume=never"]  # a killed run restarts from iteration 0: its timings stay one run's
SEED_KEYS = ("train.seed", "loader.seed")
CITYSCAPES_VAL = (500, (1024, 2048))  # val frames and their size, when neither the spec nor a manifest says


@dataclass(frozen=True)
class Estimate:
    gflop_per_s: float = 100.0  # effective training FLOP rate of one device (each shipped config sets its own)
    overhead_s: float = 10.0  # per run: process start, loader and model build, FLOP count, predictions
    compile_s: float = 0.0  # per run with precision.compile on: compiling the steps (and each eval shape)
    speed: dict[str, float] = field(default_factory=dict)  # dtype -> rate relative to gflop_per_s's (default 1)
    emulated: dict[str, float] = field(default_factory=dict)  # the same where the device emulates bf16

    def dtype_speed(self, dtype: str, bf16: str) -> float:
        """A run's rate in `dtype` relative to gflop_per_s's; `bf16`: "native" or "emulated" on the device."""
        if dtype == "bf16" and bf16 == "emulated" and dtype in self.emulated:
            return self.emulated[dtype]
        return self.speed.get(dtype, 1.0)

    def run_overhead_s(self, cfg: Config) -> float:
        return self.overhead_s + (self.compile_s if cfg.precision.compile != "off" else 0.0)


@dataclass
class Study:
    name: str
    title: str
    source: Path
    out: Path
    seeds: list[int]
    spec: SweepSpec
    data: dict[str, Any] = field(default_factory=dict)
    estimate: Estimate = field(default_factory=Estimate)
    description: str = ""
    sweep: dict[str, Any] = field(default_factory=dict)  # the sweep spec with the seeds expanded


@dataclass
class PlannedRun:
    index: int
    scenario: str
    label: str
    seed: int | None
    point_id: str
    estimate_s: float
    done: bool
    calibrated: bool  # the estimate's rate was measured by finished runs of this study
    dtype: str = "fp32"  # precision.dtype: the estimate's speed ratio depends on it


# ---------------------------------------------------------------------------------------------
# the config


def _seeds(block: dict[str, Any], where: str) -> list[int]:
    seeds = block.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise UserError(f"{where}: study.seeds must be a list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: study.seeds has a repeated seed: {seeds}")
    return seeds


def _study_block(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    block = raw.pop("study", None)
    if not isinstance(block, dict):
        raise UserError(
            f"{where}: a study config needs a `study:` block (seeds, data, estimate); see configs/studies/"
        )
    unknown = set(block) - STUDY_KEYS
    if unknown:
        raise UserError(f"{where}: unknown study key(s) {sorted(unknown)}; valid: {sorted(STUDY_KEYS)}")
    data = block.get("data") or {}
    one_source = isinstance(data, dict) and (not data or ("synth" in data) != ("source" in data))
    if not one_source or set(data) - DATA_KEYS:
        raise UserError(
            f"{where}: study.data needs one of synth: or source:, and prepare: (keys {sorted(DATA_KEYS)})"
        )
    return block


def _beside(name: Any, study_file: Path) -> Any:
    """A config file beside the study file, made absolute: the expanded spec is read from elsewhere, and
    a sweep finds a config beside its spec, else under the repository root (bench/sweep_spec.py)."""
    if isinstance(name, list):
        return [_beside(n, study_file) for n in name]
    here = study_file.parent / os.path.expandvars(str(name))
    return str(here.resolve()) if here.is_file() else name


def _no_seeds(block: dict[str, Any], where: str) -> None:
    for part in ("grid", "overrides"):
        keys = block.get(part) or {}
        clash = [k for k in SEED_KEYS if isinstance(keys, dict) and k in keys]
        if clash:
            raise UserError(f"{where} sets {clash[0]}; a study's seeds come from study.seeds")


def expand_seeds(raw: dict[str, Any], seeds: list[int], where: Path) -> dict[str, Any]:
    """The sweep spec with every run block repeated per seed (seed-major: one seed of every point first,
    so a study stopped early has one whole seed), each copy's grid setting train.seed and loader.seed."""
    runs = raw.get("runs")
    if runs is None:
        runs = [{k: raw.pop(k) for k in ("scenarios", "grid") if k in raw}]
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise UserError(f"{where}: 'runs' must be a list of {{scenarios, grid, overrides}} blocks")
    for name, block in [("overrides", raw), *((f"runs[{i}]", run) for i, run in enumerate(runs))]:
        _no_seeds(block, f"{where}: {name}")
    for run in runs:
        if "config" in run:
            run["config"] = _beside(run["config"], where)
    expanded = [
        {**run, "grid": {**(run.get("grid") or {}), **{k: [s] for k in SEED_KEYS}}}
        for s in seeds
        for run in runs
    ]
    out = {**raw, "runs": expanded}
    if "config" in out:
        out["config"] = _beside(out["config"], where)
    return out


def load_study(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Study:
    """Read a study config, expand its seeds and load the sweep it is (nothing is written: `write_sweep`)."""
    try:
        src = find_spec(path)  # as given, else under the repository root
    except UserError as e:
        raise UserError(str(e).replace("sweep spec", "study config")) from None
    raw = load_yaml(src)
    if not isinstance(raw, dict):
        raise UserError(f"{src}: a study config must be a mapping (name:, study:, config:, runs:)")
    block = _study_block(raw, src)
    seeds = _seeds(block, str(src))
    name = str(raw.get("name") or src.stem)
    out_dir = Path(out) if out is not None else Path("runs") / "studies" / name
    if block.get("data"):
        os.environ["STUDY_DATA"] = str((out_dir / "data").resolve())  # the spec's data.root values name it
    os.environ.setdefault("NGPU", str(_visible_gpus()))  # a GPU study's world_size: every GPU, unless said
    expanded = expand_seeds(raw, seeds, src)
    with tempfile.TemporaryDirectory() as tmp:  # load_spec reads a file; OUT's copy is `write_sweep`'s
        (Path(tmp) / SWEEP_FILE).write_text(yaml.safe_dump(expanded, sort_keys=False))
        spec = load_spec(Path(tmp) / SWEEP_FILE, out_dir, FORCED)
    title, description = str(block.get("title") or name), str(raw.get("description") or "").strip()
    data = dict(block.get("data") or {})
    study = Study(name, title, src, out_dir, seeds, spec, data, _estimate(block, src))
    study.description, study.sweep = description, expanded
    return study


def _estimate(block: dict[str, Any], src: Path) -> Estimate:
    est = dict(block.get("estimate") or {})
    try:
        ratios = {k: _ratios(est.pop(k, None) or {}) for k in ("speed", "emulated")}
        return Estimate(**{k: float(v) for k, v in est.items()}, **ratios)
    except (TypeError, ValueError, AttributeError):
        raise UserError(
            f"{src}: study.estimate takes gflop_per_s, overhead_s, compile_s (numbers) and speed, emulated "
            f"({{dtype: ratio}} with a dtype of {', '.join(CHOICES['precision.dtype'])}), not {block['estimate']!r}"
        ) from None


def _ratios(values: dict[str, Any]) -> dict[str, float]:
    ratios = {str(k): float(v) for k, v in values.items()}
    if set(ratios) - set(CHOICES["precision.dtype"]) or not all(v > 0 for v in ratios.values()):
        raise ValueError("not a dtype or not positive")
    return ratios


def write_sweep(study: Study) -> Path:
    """OUT/study_sweep.yaml: the sweep the study runs, seeds expanded (`cityseg sweep` runs it too)."""
    path = study.out / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# written by `cityseg study {study.source}`: its sweep, {len(study.seeds)} seeds expanded\n"
    path.write_text(head + yaml.safe_dump(study.sweep, sort_keys=False))
    return path


def _visible_gpus() -> int:
    import torch

    return max(1, torch.cuda.device_count())


# ---------------------------------------------------------------------------------------------
# the data


def make_data(study: Study, progress: bool = True) -> list[str]:
    """Synthesize (or take) the source frames and prepare each dataset of study.data.prepare under OUT/data;
    work already done is skipped (prepare skips finished pairs). Returns one line per step."""

    if not study.data:
        return []
    root = Path(os.environ["STUDY_DATA"])
    lines = []
    if "synth" in study.data:
        src, line = _synthesize(root / "synth", study.data["synth"], progress)
        lines.append(line)
    else:
        text = os.path.expandvars(str(study.data["source"]))
        if "$" in text:
            raise UserError(f"{study.source}: study.data.source {text!r}: its variable is not set")
        src = Path(text).expanduser()
    for name, options in (study.data.get("prepare") or {}).items():
        try:
            s = prepare_dataset(src, root / name, progress=progress, **(options or {}))
        except TypeError as e:
            raise UserError(f"{study.source}: study.data.prepare.{name}: {e}") from None
        lines.append(
            f"{root / name}: {s['pairs']} pairs ({s['written']} written, {s['skipped']} already there)"
        )
    return lines


def _synthesize(out: Path, synth: dict[str, Any], progress: bool) -> tuple[Path, str]:
    settings = {"train": 80, "val": 30, "size": [128, 256], "seed": 0, **synth}
    marker = out / ".study-synth.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return out, f"{out}: synthetic frames already there"
    (h, w), n_train, n_val = settings["size"], settings["train"], settings["val"]
    s = write_synthetic(out, n_train, n_val, 0, (h, w), settings["seed"], progress=progress)
    marker.write_text(json.dumps(settings) + "\n")
    return out, f"{out}: {n_train} train + {n_val} val synthetic frames of {h}x{w} ({s['wall_s']:.0f} s)"


# ---------------------------------------------------------------------------------------------
# the plan and its time estimate


def _train_gflop(cfg: Config, cache: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """(train step, forward) GFLOP per image at the crop, counted on the meta device (no weights made)."""
    import torch

    cfg = replace(cfg, model={"pretrained": ""})  # the same FLOPs, and no weights to read or download
    key = json.dumps([vars(cfg.model), cfg.data.crop, cfg.data.num_classes], default=str)
    if key not in cache:
        with torch.device("meta"):
            model = model_from_config(cfg)
        fc = count_flops(model, tuple(cfg.data.crop))
        cache[key] = (fc.train_step_per_image / 1e9, fc.forward_per_image / 1e9)
    return cache[key]


def _val_frames(study: Study, cfg: Config) -> tuple[int, tuple[int, int]]:
    """(val frames, evaluated size): from the synth block, else the dataset's manifest, else Cityscapes'."""
    n, size = CITYSCAPES_VAL
    synth = study.data.get("synth")
    if synth:
        n, size = synth.get("val", 30), tuple(synth.get("size", (128, 256)))
    else:
        try:
            n = json.loads((Path(cfg.data.root) / "manifest.json").read_text())["splits"][cfg.data.val_split][
                "count"
            ]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return n, tuple(cfg.data.eval_size or size)


def work_gflop(study: Study, sp: SweepPoint, cache: dict[str, tuple[float, float]]) -> float:
    """GFLOP a run computes on one device: its training steps and its evaluations (forward FLOPs scaled
    from the crop to the evaluated frame by pixels), and with bench.eval_scales one more evaluation and
    bench.warmup + bench.iters timed forward batches per scale (scaled by its pixels)."""
    cfg = sp.cfg
    if sp.scenario != "accuracy":
        return 0.0
    train, fwd = _train_gflop(cfg, cache)
    t = cfg.train
    evals = len({*range(t.eval_interval, t.iters + 1, t.eval_interval), t.iters})
    n_val, (h, w) = _val_frames(study, cfg)
    per_frame = fwd * (h * w) / (cfg.data.crop[0] * cfg.data.crop[1])
    timed = (cfg.bench.warmup + cfg.bench.iters) * cfg.loader.eval_batch_size
    at_scales = sum(s * s for s in cfg.bench.eval_scales) * per_frame * (n_val + timed)
    return t.iters * cfg.loader.batch_size * train + (evals * per_frame * n_val + at_scales) / sp.world_size


SpeedKey = tuple[str, str]  # (model name, precision.dtype); "*" for any


def _measured_rates(study: Study, rows: list[Row], cache: dict, bf16: str) -> dict[SpeedKey, float]:
    """GFLOP/s of this study's finished runs: work / (point wall - overhead), per (model, dtype), per dtype
    ('*', dtype), and converted to the prior's precision by the config's speed ratios per model (model, '*')
    and over all ('*', '*')."""
    by_id = {sp_id: sp for sp_id, sp in _ids(study)}
    rates: dict[SpeedKey, list[float]] = {}
    for row in rows:
        sp, wall = by_id.get(row.point_id), row.sweep.get(POINT_WALL_S)
        if sp is None or not row.ok or sp.scenario != "accuracy" or not wall:
            continue
        model, dtype = sp.cfg.model.name, sp.cfg.precision.dtype
        rate = work_gflop(study, sp, cache) / max(wall - study.estimate.run_overhead_s(sp.cfg), 1.0)
        base = rate / study.estimate.dtype_speed(dtype, bf16)
        for key, value in (((model, dtype), rate), (("*", dtype), rate), ((model, "*"), base), (("*", "*"), base)):
            rates.setdefault(key, []).append(value)
    return {k: statistics.median(v) for k, v in rates.items()}


def _rate(rates: dict[SpeedKey, float], model: str, dtype: str, speed: float) -> float | None:
    """The measured rate for a run of `model` in `dtype` (`speed`: dtype's ratio), most specific first."""
    for key, factor in (((model, dtype), 1.0), ((model, "*"), speed), (("*", dtype), 1.0), (("*", "*"), speed)):
        if key in rates:
            return rates[key] * factor
    return None


def _ids(study: Study) -> list[tuple[str, SweepPoint]]:
    return [(sp.id, sp) for sp in study.spec.points]


def device_bf16() -> str:
    """"native" or "emulated": bf16 on the device the study's runs train on (hardware.bf16_support)."""
    return bf16_support(resolve_device())


def plan(study: Study, bf16: str | None = None) -> list[PlannedRun]:
    """Every run of the study in order, with its seed, whether it is done (an ok row in OUT/results.jsonl)
    and its estimated seconds: its GFLOP over the rate finished runs of the same model and precision
    measured (else of the model in another precision, times the config's speed ratio; else any model's;
    else the config's prior times that ratio), plus the per-run overhead (and compile time). `bf16`:
    whether the device runs bf16 "native" or "emulated" (default: ask the hardware)."""

    bf16 = bf16 or device_bf16()
    rows = list(read_rows(study.out / "results.jsonl"))
    done = {r.point_id for r in rows if r.ok}
    cache: dict[str, tuple[float, float]] = {}
    rates = _measured_rates(study, rows, cache, bf16)
    runs = []
    labels = _labels(study.spec.points)
    for i, (pid, sp) in enumerate(_ids(study), 1):
        speed = study.estimate.dtype_speed(sp.cfg.precision.dtype, bf16)
        rate = _rate(rates, sp.cfg.model.name, sp.cfg.precision.dtype, speed)
        gflop_per_s = rate or study.estimate.gflop_per_s * speed
        est = study.estimate.run_overhead_s(sp.cfg) + work_gflop(study, sp, cache) / gflop_per_s
        seed = sp.point.get("seed") if sp.scenario == "accuracy" else None
        runs.append(PlannedRun(i, sp.scenario, labels[i - 1], seed, pid, est, pid in done, rate is not None,
                               sp.cfg.precision.dtype))  # fmt: skip
    return runs


def speed_notes(study: Study, runs: list[PlannedRun], bf16: str, why: str) -> list[str]:
    """One line per precision whose runs the prior rates apart: at which ratio, and why (bf16 native or
    emulated on this device: `why`, hardware.bf16_support_why), with their share of the estimate."""
    lines = []
    for dtype in dict.fromkeys(r.dtype for r in runs if r.scenario == "accuracy"):
        speed, mine = study.estimate.dtype_speed(dtype, bf16), [r for r in runs if r.dtype == dtype]
        emulated = dtype == "bf16" and bf16 == "emulated"
        if speed == 1.0 and not emulated:
            continue
        head = f"{dtype}: {len(mine)} runs, {total_s(mine, todo_only=False) / 60:.1f} min, at {speed:g}x the prior's rate"
        if emulated and dtype in study.estimate.emulated:
            lines.append(f"{head}: this device emulates bf16 ({why}); the ratio is the emulation cost the config "
                         "measured (its header says how)")  # fmt: skip
        elif emulated:
            lines.append(f"{head}: this device emulates bf16 ({why}) but the config gives no `emulated` ratio: "
                         "emulated bf16 is many times slower, so this estimate is far too low")  # fmt: skip
        else:
            native = f" (bf16 native here: {why})" if dtype == "bf16" else ""
            lines.append(f"{head}, the config's measured ratio{native}")
    return lines


def _labels(points: list[SweepPoint]) -> list[str]:
    """Each point as what it changes of the study's first accuracy point (the reference, by the configs'
    convention): 'model=fcn8s_vgg16_bn base_width=8 resolution=32x64'; seeds have their own column."""
    ref = next((sp.point for sp in points if sp.scenario == "accuracy"), {})
    labels = []
    for sp in points:
        if sp.scenario != "accuracy":
            labels.append(sp.point.get("model", sp.scenario))
            continue
        keys = [k for k in sp.point if k not in ("seed", "loader_seed") and sp.point[k] != ref.get(k)]
        labels.append(" ".join(f"{k}={_value(k, sp.point[k])}" for k in keys) or "(reference)")
    return labels


def _value(key: str, v: Any) -> str:
    if key == "data_root":
        return Path(str(v)).name  # a dataset without a manifest yet (a dry run before the data is made)
    return format_hw(v)


def total_s(runs: list[PlannedRun], todo_only: bool = True) -> float:
    return math.fsum(r.estimate_s for r in runs if not (todo_only and r.done))
