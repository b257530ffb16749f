"""Run the whole product end to end on a small synthetic dataset, then build the report.

  1. synthesize a small Cityscapes-layout dataset      (cityseg synth)
  2. prepare it: JPEG images, trainId labels            (cityseg prepare)
  3. compare the loaders alone: DALI (CPU, and GPU when there is one), torch, synthetic, decode-only
  4. a small model sweep: batch size x precision, and end to end with each real loader (cityseg sweep)
  5. train an FCN and a U-Net briefly and evaluate their mIoU     (cityseg train)
  6. build the report: OUT/report/REPORT.md with tables and plots   (cityseg report)

Every measurement is a result row in OUT/results.jsonl, so `cityseg report OUT` rebuilds the report.
Uses the GPU when there is one. On a 2-core CPU machine: under 10 minutes (about 3 with --quick).

  cityseg demo                 # -> runs/demo/report/REPORT.md
  cityseg demo --quick --out /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Plan:
    """How big each step is: the demo's only knobs, chosen to fit the time budget on a 2-core CPU."""

    train_frames: int
    val_frames: int
    frame_size: tuple[int, int]  # synthesized frames (H, W)
    crop: tuple[int, int]  # training crop for loaders, sweep and training
    batch_size: int
    loader_iters: int
    loader_warmup: int
    sweep_batch_sizes: tuple[int, ...]
    sweep_dtypes: tuple[str, ...]
    bench_iters: int
    bench_warmup: int
    sweep_model: str
    # (model, iterations, batch size): an FCN and a U-Net. On a CPU the FCN (a dilated ResNet-50, ~30x the
    # U-Net's FLOPs) gets few, small steps: the point there is the pipeline working, not its mIoU.
    train_runs: tuple[tuple[str, int, int], ...]
    train_crop: tuple[int, int]
    train_dtype: str


def make_plan(quick: bool, cuda: bool) -> Plan:
    if cuda:
        return Plan(
            train_frames=48 if quick else 160,
            val_frames=12 if quick else 40,
            frame_size=(512, 1024),
            crop=(256, 512),
            batch_size=8,
            loader_iters=20 if quick else 50,
            loader_warmup=5,
            sweep_batch_sizes=(4, 8) if quick else (4, 8, 16, 32),
            sweep_dtypes=("fp32", "bf16"),
            bench_iters=10 if quick else 30,
            bench_warmup=3 if quick else 10,
            sweep_model="unet_s32",
            train_runs=(("fcn_resnet50", 100, 8), ("unet_s32", 100, 8))
            if quick
            else (("fcn_resnet50", 600, 8), ("unet_s32", 600, 8)),
            train_crop=(256, 512),
            train_dtype="bf16",
        )
    return Plan(
        train_frames=16 if quick else 40,
        val_frames=4 if quick else 10,
        frame_size=(128, 256) if quick else (256, 512),
        crop=(64, 128) if quick else (128, 256),
        batch_size=4,
        loader_iters=10 if quick else 30,
        loader_warmup=2 if quick else 5,
        sweep_batch_sizes=(2, 4) if quick else (2, 4, 8),
        sweep_dtypes=("fp32",) if quick else ("fp32", "bf16"),
        bench_iters=5 if quick else 10,
        bench_warmup=2 if quick else 3,
        sweep_model="unet_s16",
        train_runs=(("fcn_resnet50", 4, 2), ("unet_s16", 40, 4))
        if quick
        else (("fcn_resnet50", 100, 2), ("unet_s16", 800, 4)),  # ~4 of the 10 minutes on 2 idle cores
        train_crop=(64, 128),
        train_dtype="fp32",
    )


@dataclass
class Demo:
    out: Path
    plan: Plan
    cuda: bool
    console: Any
    results: Path = field(init=False)
    data_raw: Path = field(init=False)
    data: Path = field(init=False)
    env: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.results = self.out / "results.jsonl"
        self.data_raw = self.out / "data" / "synth"
        self.data = self.out / "data" / "prepared"

    def config(self, **overrides: Any):
        """The demo's base config (prepared data, crop, batch) with `section.key` overrides on top."""
        from cityseg_fast.config import load_config

        base = {
            "data.root": str(self.data),
            "data.crop": list(self.plan.crop),
            "data.scale_range": [0.5, 1.0],
            "loader.batch_size": self.plan.batch_size,
            "loader.num_workers": 2,
            "loader.num_threads": 2,
            "precision.compile": "off",
            "bench.iters": self.plan.bench_iters,
            "bench.warmup": self.plan.bench_warmup,
        }
        base.update(overrides)
        return load_config([], [f"{k}={_yaml(v)}" for k, v in base.items()])

    def append(
        self, scenario: str, point: dict[str, Any], metrics: dict[str, Any] | None, cfg, **kw: Any
    ) -> dict:
        from cityseg_fast.config import config_hash, to_dict
        from cityseg_fast.report.schema import append_row, make_row

        row = make_row(
            scenario,
            point,
            _json_safe(metrics or {}),
            config=to_dict(cfg),
            config_hash=config_hash(cfg),
            env=self.env,
            **kw,
        )
        append_row(self.results, row)
        return row


def _yaml(v: Any) -> str:
    """An override value as YAML: JSON is YAML, and quoting keeps 'off' a string (bare, YAML reads False)."""
    return json.dumps(list(v) if isinstance(v, tuple) else v)


def _json_safe(v: Any) -> Any:
    """NaN / inf (a class absent from a tiny val split has no IoU) become null: strict JSON for every reader."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]


def _failure(e: BaseException) -> tuple[str, str]:
    """(status, message) of a failed measurement: out-of-memory is `oom`, anything else `error`."""
    msg = _one_line(e)
    return ("oom" if "out of memory" in msg.lower() else "error"), msg


# ---------------------------------------------------------------------------------------------- steps


def step_synth(d: Demo) -> str:
    from cityseg_fast.data.synthetic import write_synthetic

    p = d.plan
    s = write_synthetic(d.data_raw, p.train_frames, p.val_frames, 0, p.frame_size, seed=0, progress=True)
    return f"{p.train_frames} train + {p.val_frames} val frames of {p.frame_size[0]}x{p.frame_size[1]} ({s['frames_per_s']:.1f} frames/s)"


def step_prepare(d: Demo) -> str:
    from cityseg_fast.data.prepare import prepare_dataset

    s = prepare_dataset(
        d.data_raw,
        d.data,
        image_format="jpeg",
        quality=95,
        size=None,
        scale=None,
        splits=("train", "val"),
        workers=None,
        progress=True,
    )
    return f"{s['pairs']} pairs -> JPEG q95 + trainId {s['label_format']} labels in {d.data}"


def loader_variants(cuda: bool) -> list[tuple[str, dict[str, Any]]]:
    """(label, config overrides) of every loader the demo compares."""
    variants = [("dali (cpu)", {"loader.backend": "dali", "loader.device": "cpu"})]
    if cuda:
        variants.insert(0, ("dali (gpu)", {"loader.backend": "dali", "loader.device": "gpu"}))
    variants += [
        ("torch", {"loader.backend": "torch"}),
        ("synthetic", {"loader.backend": "synthetic"}),
        ("dali (cpu) decode-only", {"loader.backend": "dali", "loader.device": "cpu", "loader.decode_only": True}),
    ]
    return variants


def step_loaders(d: Demo) -> str:
    from cityseg_fast.bench.loader_bench import measure_loader, point_of

    parts = []
    for label, overrides in loader_variants(d.cuda):
        cfg = d.config(**overrides)
        point = point_of(cfg)
        try:
            metrics = measure_loader(cfg, d.plan.loader_iters, d.plan.loader_warmup)
        except Exception as e:  # one loader failing must not hide the others: record it and go on
            status, msg = _failure(e)
            d.append("loader", point, {}, cfg, status=status, error=msg)
            d.console.print(f"  {label:24s} [red]{status}[/]: {msg}")
            parts.append(f"{label} {status}")
            continue
        d.append("loader", point, metrics, cfg)
        ips = metrics.get("images_per_s")
        d.console.print(f"  {label:24s} {ips:10.1f} images/s")
        parts.append(f"{label} {ips:.0f}/s")
    return ", ".join(parts)


def sweep_spec(d: Demo) -> dict[str, Any]:
    """The sweep: batch size x precision on the model alone; end to end with each real loader."""
    p = d.plan
    backends = ["dali", "torch"]
    return {
        "name": "demo",
        "description": "cityseg demo: model sweep and end to end on the demo's prepared synthetic data",
        "overrides": {
            "data.root": str(d.data),
            "data.scale_range": [0.5, 1.0],
            "loader.num_workers": 2,
            "loader.num_threads": 2,
            "precision.compile": "off",
            "bench.iters": p.bench_iters,
            "bench.warmup": p.bench_warmup,
        },
        "timeout_s": 600,
        "runs": [
            {
                "scenarios": ["model"],
                "grid": {
                    "model.name": [p.sweep_model],
                    "data.crop": [list(p.crop)],
                    "loader.batch_size": list(p.sweep_batch_sizes),
                    "precision.dtype": list(p.sweep_dtypes),
                },
            },
            {
                "scenarios": ["model", "e2e"],
                "grid": {
                    "model.name": [p.sweep_model],
                    "data.crop": [list(p.crop)],
                    "loader.batch_size": [p.batch_size],
                    "precision.dtype": [p.sweep_dtypes[0]],
                    "loader.backend": backends,
                },
            },
        ],
    }


def step_sweep(d: Demo) -> str:
    import yaml

    from cityseg_fast.bench.sweep import load_spec, run_sweep

    spec_path = d.out / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(sweep_spec(d), sort_keys=False))
    spec = load_spec(spec_path, d.out)
    d.console.print(f"  {len(spec.points)} points, one subprocess each (spec: {spec_path})")
    counts = run_sweep(spec, d.out, live=d.console.is_terminal)
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


def _train_images_per_s(out_dir: Path) -> float | None:
    """Median training throughput over the run's log intervals (metrics.jsonl 'train' events)."""
    try:
        events = [
            json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
        ]
    except (OSError, json.JSONDecodeError):
        return None
    ips = [e["images_per_s"] for e in events if e.get("event") == "train" and e.get("images_per_s")]
    return statistics.median(ips) if ips else None


def accuracy_point(cfg) -> dict[str, Any]:
    from cityseg_fast.bench.scenarios import point_from_config

    return point_from_config("accuracy", cfg)


def step_train(d: Demo) -> str:
    from cityseg_fast.engine.train import train

    p = d.plan
    parts = []
    for model, iters, batch in p.train_runs:
        run_dir = d.out / "train" / model
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time: the demo measures, never resumes
        cfg = d.config(
            **{
                "model.name": model,
                "data.crop": list(p.train_crop),
                "loader.batch_size": batch,
                "loader.backend": "dali",
                "precision.dtype": p.train_dtype,
                "train.out_dir": str(run_dir),
                "train.iters": iters,
                "train.eval_interval": iters,
                "train.ckpt_interval": iters,
                "train.log_interval": max(1, iters // 10),
                "train.optimizer": "adamw",
                "train.lr": 0.002,
                "train.weight_decay": 0.0001,
                "train.warmup_iters": max(1, iters // 10),
                "train.resume": "never",
            }
        )
        point = accuracy_point(cfg)
        h, w = p.train_crop
        d.console.print(f"  [bold]{model}[/]: {iters} iterations at {h}x{w}, batch {batch}, then val mIoU")
        try:
            s = train(cfg)
        except Exception as e:  # record the failure as a row (the report shows it) and train the next model
            status, msg = _failure(e)
            d.append("accuracy", point, {}, cfg, status=status, error=msg)
            d.console.print(f"  {model}: [red]{status}[/]: {msg}")
            parts.append(f"{model} {status}")
            continue
        metrics = {
            "miou": s["miou"],
            "per_class_iou": s.get("per_class_iou"),
            "acc": s.get("acc"),
            "train_wall_s": s.get("wall_s"),
            "images_per_s": _train_images_per_s(run_dir),
            "final_loss": s.get("final_loss"),
            "out_dir": str(run_dir),
        }
        d.append("accuracy", point, metrics, cfg)
        parts.append(f"{model} mIoU {100 * s['miou']:.1f}%")
    return ", ".join(parts)


def step_report(d: Demo) -> str:
    from cityseg_fast.report.build import build_report

    report = build_report([d.out], d.out / "report", title="cityseg demo report")
    return str(report)


STEPS: tuple[tuple[str, Callable[[Demo], str]], ...] = (
    ("Synthesize a small dataset", step_synth),
    ("Prepare it (JPEG + trainId labels)", step_prepare),
    ("Compare loaders", step_loaders),
    ("Model sweep (batch size x precision, end to end)", step_sweep),
    ("Train an FCN and a U-Net briefly, evaluate mIoU", step_train),
    ("Build the report", step_report),
)


# ---------------------------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default="runs/demo",
        metavar="DIR",
        help="where data, results and the report go (default runs/demo)",
    )
    p.add_argument("--quick", action="store_true", help="smaller everything: about 3 minutes on a 2-core CPU")


def _timeline(timings: list[tuple[str, float, str]], total: float) -> str:
    from cityseg_fast.report.tables import fmt_s, md_table

    body = [[f"{i}. {title}", fmt_s(dt), result] for i, (title, dt, result) in enumerate(timings, 1)]
    body.append(["total", fmt_s(total), ""])
    return (
        "\n## Demo timeline\n\nWall time of each `cityseg demo` step (also in ../demo_timings.json).\n\n"
        + md_table(["step", "wall time", "result"], body, [False, True, False])
        + "\n"
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from cityseg_fast.bench.env import collect_env
    from cityseg_fast.errors import UserError

    console = Console()
    out = Path(args.out)
    cuda = torch.cuda.is_available()
    plan = make_plan(args.quick, cuda)
    marker = out / ".cityseg-demo"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise UserError(
            f"{out}: exists and is not a demo output folder; pass --out NEW_DIR (or an earlier demo's --out)"
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by `cityseg demo`: a rerun with this --out replaces its results and report\n")
    # A demo starts afresh: earlier results would be mixed into this report (and skipped by the sweep), and
    # frames of an earlier run at another size would be mixed into this dataset (prepare skips existing pairs).
    for stale in ("results.jsonl", "points", "report", "sweep.yaml", "data", "train", "demo_timings.json"):
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    d = Demo(out=out, plan=plan, cuda=cuda, console=console, env=collect_env())
    where = (
        f"GPU: {d.env.get('gpu')}"
        if cuda
        else f"CPU only: {d.env.get('cpu')} ({d.env.get('cpu_cores')} cores)"
    )
    console.rule(f"[bold]cityseg demo{' --quick' if args.quick else ''}[/] on {where}")
    timings: list[tuple[str, float, str]] = []
    t_start = time.perf_counter()
    for i, (title, fn) in enumerate(STEPS, 1):
        console.rule(f"[bold cyan][{i}/{len(STEPS)}] {title}", align="left")
        t0 = time.perf_counter()
        result = fn(d)
        dt = time.perf_counter() - t0
        timings.append((title, dt, result))
        console.print(f"[green]done[/] in {dt:.1f} s: {result}")
    total = time.perf_counter() - t_start
    report = out / "report" / "REPORT.md"
    with open(report, "a") as f:
        f.write(_timeline(timings, total))
    (out / "demo_timings.json").write_text(
        json.dumps(
            {
                "quick": args.quick,
                "total_s": total,
                "steps": [{"step": t, "wall_s": s, "result": r} for t, s, r in timings],
            },
            indent=1,
        )
        + "\n"
    )
    table = Table(title="cityseg demo", show_header=True, header_style="bold")
    table.add_column("step")
    table.add_column("time", justify="right")
    table.add_column("result")
    for i, (title, dt, result) in enumerate(timings, 1):
        table.add_row(f"{i}. {title}", f"{dt:.1f} s", result)
    table.add_row("total", f"{total:.1f} s", "")
    console.print(table)
    console.print(f"[bold]Report:[/] {report}")
    return 0
