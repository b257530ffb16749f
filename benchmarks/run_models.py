"""Train-step throughput of the models on this machine: fp32 eager, channels_last, bf16 autocast, compiled.

    PYTHONPATH=$PWD python benchmarks/run_models.py --models unet_s16 fcn_resnet50 --crop 256 512 \
        --batch 2 --rounds 4 --steps 2 --out reports/cpu-models

The step is a minimal local SGD step (forward, cross-entropy with ignore 255, ScalerStep backward +
step), because the shared `engine.step.train_step` had not landed when this was written. Variants of
one model are timed interleaved (round-robin, `--steps` steps each per round) so they see the same
background load; per-step times are medians over all rounds. One JSON row per variant goes to
OUT/results.jsonl (cityseg_fast.results rows, scenario "model"); OUT/README.md gets a table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cityseg_fast.bench.flops import count_flops
from cityseg_fast.config import load_config
from cityseg_fast.engine.precision import (
    ScalerStep,
    autocast,
    compile_counters,
    reset_compile_counters,
    setup_precision,
    to_channels_last,
)
from cityseg_fast.environment import collect_env
from cityseg_fast.models import create_model
from cityseg_fast.results import append_row, read_rows, row_for

# name -> (dtype, channels_last, compile)
VARIANTS: dict[str, tuple[str, bool, str]] = {
    "fp32 eager": ("fp32", False, "off"),
    "fp32 channels_last": ("fp32", True, "off"),
    "bf16 autocast": ("bf16", False, "off"),
    "fp32 compiled": ("fp32", False, "default"),
    "bf16 + channels_last + compiled": ("bf16", True, "default"),
}


class Runner:
    """One variant: its own copy of the model and optimizer, and the step it times."""

    def __init__(self, base: torch.nn.Module, dtype: str, channels_last: bool, compile_mode: str) -> None:
        self.dtype, self.channels_last, self.compile = dtype, channels_last, compile_mode
        model = copy.deepcopy(base).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.model = torch.compile(model, dynamic=False) if compile_mode != "off" else model
        self.scaler = ScalerStep.for_dtype(dtype, "cpu")
        self.times: list[float] = []
        self.first_s = 0.0
        self.compile_stats: dict[str, Any] = {}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x = to_channels_last(x) if self.channels_last else x
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.dtype, "cpu"):
            out = self.model(x)
        loss = F.cross_entropy(out.float(), y, ignore_index=255)
        self.scaler(loss, self.opt)
        return time.perf_counter() - t0  # CPU ops are synchronous: no device sync needed


def bench_model(
    name: str, crop: tuple[int, int], batch: int, rounds: int, steps: int, variants: list[str]
) -> list[dict]:
    torch.manual_seed(0)
    base = create_model(name)
    x = torch.randn(batch, 3, *crop)
    y = torch.randint(0, 19, (batch, *crop))
    flops = count_flops(base, crop)
    runners = {v: Runner(base, *VARIANTS[v]) for v in variants}
    for v, r in runners.items():  # warm-up: the first step (compiles), then one more
        reset_compile_counters()
        r.first_s = r.step(x, y)
        r.compile_stats = compile_counters() if r.compile != "off" else {}
        r.step(x, y)
        print(f"  {name} {v}: first step {r.first_s:.1f} s", file=sys.stderr, flush=True)
    for i in range(rounds):
        for r in runners.values():
            r.times += [r.step(x, y) for _ in range(steps)]
        print(f"  {name} round {i + 1}/{rounds}", file=sys.stderr, flush=True)
    rows = []
    env = collect_env()
    for v, r in runners.items():
        med = statistics.median(r.times)
        q = statistics.quantiles(r.times, n=4) if len(r.times) > 1 else [med, med, med]
        metrics = {
            "images_per_s": batch / med,
            "latency_ms_median": med * 1e3,
            "latency_ms_p50": med * 1e3,
            "latency_ms_iqr": (q[2] - q[0]) * 1e3,
            "variance_warning": (q[2] - q[0]) / med > 0.15,
            "first_step_s": r.first_s,
            "compile_s": r.first_s - med if r.compile != "off" else None,
            "recompiles": r.compile_stats.get("recompiles"),
            "flops_per_image": flops.forward_per_image,
            "train_flops_per_image": flops.train_step_per_image,
            "achieved_tflops": flops.train_step_per_image * batch / med / 1e12,
            "mfu": None,  # no honest peak for a CPU
            "timed_steps": len(r.times),
        }
        cfg = load_config([], [f"model.name={name}", f"data.crop=[{crop[0]},{crop[1]}]", f"loader.batch_size={batch}",
                               f"precision.dtype={r.dtype}", f"precision.channels_last={str(r.channels_last).lower()}",
                               f"precision.compile={r.compile}"])  # fmt: skip
        rows.append(row_for("model", cfg, metrics, env=env, point={"variant": v}))
    return rows


def write_readme(out: Path, cmd: str) -> None:
    rows = [r for r in read_rows(out / "results.jsonl") if r.ok]
    lines = [
        "| model | crop | batch | variant | images/s | step ms (median) | IQR ms | vs fp32 eager | first step s | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {}
    for r in rows:
        if r.point["variant"] == "fp32 eager":
            base[r.point["model"]] = r.metrics["images_per_s"]
    for r in rows:
        p, m = r.point, r.metrics
        ratio = m["images_per_s"] / base[p["model"]] if p["model"] in base else float("nan")
        lines.append(
            f"| {p['model']} | {p['crop'][0]}x{p['crop'][1]} | {p['batch_size']} | {p['variant']} | "
            f"{m['images_per_s']:.2f} | {m['latency_ms_median']:.0f} | {m['latency_ms_iqr']:.0f} | "
            f"{ratio:.2f}x | {m['first_step_s']:.1f} | {m['achieved_tflops']:.3f} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n\nCommand: `" + cmd + "`\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["unet_s16", "fcn_resnet50"])
    p.add_argument("--crop", nargs=2, type=int, default=[256, 512], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="reports/cpu-models")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_precision("fp32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        for row in bench_model(name, tuple(args.crop), args.batch, args.rounds, args.steps, args.variants):
            append_row(out / "results.jsonl", row)
            m = row.metrics
            print(
                f"{name:14s} {row.point['variant']:34s} {m['images_per_s']:7.2f} img/s  {m['latency_ms_median']:8.0f} ms"
            )
    write_readme(
        out,
        "PYTHONPATH=$PWD python benchmarks/run_models.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
