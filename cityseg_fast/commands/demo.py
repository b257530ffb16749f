"""Run the whole product end to end on a small synthetic dataset, then build the report.

  1. synthesize a small Cityscapes-layout dataset     (cityseg synth)
  2. prepare it: JPEG q95 images, npy trainId labels   (cityseg prepare)
  3. the demo sweep: every loader alone, the model alone, end to end, the colour baseline and two short
     training runs (an FCN and a U-Net), one process per point   (cityseg sweep configs/sweeps/demo_cpu.yaml,
     demo_gpu.yaml with a GPU); where the CPU runs bf16 natively (`cityseg doctor`), the spec's `demo.bf16`
     runs too: model and end-to-end points in bf16 beside fp32 (the report's "Mixed precision")
  4. the report with the demo's timeline                (cityseg report)

The demo is configuration: the sweep file says what is measured and how big the dataset is (its
`demo:` block); this command only runs the four steps. Every measurement is a row in OUT/results.jsonl,
so `cityseg report OUT` rebuilds the report. On a 2-core CPU: under 5 minutes (under 2 with --quick).

  cityseg demo                 # -> runs/demo/report/REPORT.md
  cityseg demo --quick --out /tmp/demo
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from cityseg_fast import jsonsafe
from cityseg_fast.bench.sweep import run_sweep
from cityseg_fast.bench.sweep_spec import PACKAGE_ROOT, load_spec
from cityseg_fast.config import load_yaml
from cityseg_fast.data.prepare import prepare_dataset
from cityseg_fast.data.synthetic import write_synthetic
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import bf16_support, resolve_device
from cityseg_fast.paths import check_out_dir
from cityseg_fast.report.build import build_report
from cityseg_fast.report.format import fmt_s, md_table
from cityseg_fast.report.mixed_precision import emulated_note, mixed_precision_section
from cityseg_fast.report.runs import load_runs

STALE = ("results.jsonl", "points", "runs", "report", "data", "demo_timings.json", "sweep.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="data, results and report (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="the same flow, smaller everything: under 2 minutes on 2 cores")
    p.add_argument("--spec", metavar="SWEEP.yaml", help="another demo sweep (default configs/sweeps/demo_cpu.yaml, or demo_gpu.yaml with a GPU)")


def demo_plan(spec_path: Path, quick: bool, data: Path, bf16: str = "emulated") -> tuple[dict[str, Any], dict[str, Any]]:
    """(frames {train, val, size}, the sweep to run) from a demo spec: its `demo:` block says the dataset,
    and with --quick its `quick:` part replaces the frames, adds overrides and may replace the runs; where
    `bf16` (hardware.bf16_support of the device) is "native", its `bf16: {runs}` are added to the runs.
    The sweep reads the prepared data at `data` (the shipped specs say ${CITYSEG_DEMO_DATA})."""

    spec = dict(load_yaml(spec_path))
    demo = spec.pop("demo", None)
    if not isinstance(demo, dict) or not isinstance(demo.get("frames"), dict):
        raise UserError(f"{spec_path}: a demo sweep needs a `demo: {{frames: {{train, val, size}}}}` block")
    part = (demo.get("quick") or {}) if quick else {}
    spec["overrides"] = {**(spec.get("overrides") or {}), **part.get("overrides", {}), "data.root": str(data)}
    spec["runs"] = part.get("runs", spec.get("runs"))
    if bf16 == "native":
        spec["runs"] = [*spec["runs"], *((demo.get("bf16") or {}).get("runs") or [])]
    return {**demo["frames"], **part.get("frames", {})}, spec


def _fresh(out: Path) -> None:
    """A demo starts afresh (earlier rows would be mixed into this report); only ever in a demo folder."""

    marker = out / ".cityseg-demo"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise UserError(f"{out}: exists and is not a demo output folder; pass --out NEW_DIR (or an earlier demo's --out)")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by `cityseg demo`: a rerun with this --out replaces its results and report\n")
    for name in STALE:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    import torch

    console, out = Console(), check_out_dir(args.out, "--out")
    cuda = torch.cuda.is_available()
    spec_path = Path(args.spec or Path(PACKAGE_ROOT) / "configs" / "sweeps" / f"demo_{'gpu' if cuda else 'cpu'}.yaml")
    raw, prepared = out / "data" / "synth", out / "data" / "prepared"
    bf16 = bf16_support(resolve_device())
    frames, sweep_spec = demo_plan(spec_path, args.quick, prepared, bf16)
    _fresh(out)
    (out / "sweep.yaml").write_text(  # exactly what runs: `cityseg sweep OUT/sweep.yaml --out OUT` reruns it
        f"# {'cityseg demo --quick' if args.quick else 'cityseg demo'}: {spec_path}, as run\n"
        + yaml.safe_dump(sweep_spec, sort_keys=False)
    )

    def synth() -> str:
        h, w = frames["size"]
        s = write_synthetic(raw, frames["train"], frames["val"], 0, (h, w), seed=0, progress=True)
        return f"{frames['train']} train + {frames['val']} val frames of {h}x{w} ({s['frames_per_s']:.1f} frames/s)"

    def prepare() -> str:
        s = prepare_dataset(raw, prepared, image_format="jpeg", quality=95, progress=True)
        return f"{s['pairs']} pairs -> JPEG q95 + trainId {s['label_format']} labels"

    def sweep() -> str:
        spec = load_spec(out / "sweep.yaml", out)
        console.print(f"  {len(spec.points)} points from {spec_path.name}, one process each (OUT/sweep.yaml)")
        counts = run_sweep(spec, out, live=console.is_terminal)
        return ", ".join(f"{k} {v}" for k, v in counts.items() if v)

    steps = [("Synthesize a small dataset", synth), ("Prepare it (JPEG + trainId labels)", prepare),
             (f"The demo sweep ({spec_path.name})", sweep)]  # fmt: skip
    timings, t_start = [], time.perf_counter()
    console.rule(f"[bold]cityseg demo{' --quick' if args.quick else ''}[/] on {'GPU' if cuda else 'CPU only'}")
    for i, (title, fn) in enumerate(steps, 1):
        console.rule(f"[bold cyan][{i}/{len(steps) + 1}] {title}", align="left")
        t0 = time.perf_counter()
        result = fn()
        timings.append((title, time.perf_counter() - t0, result))
        console.print(f"[green]done[/] in {timings[-1][1]:.1f} s: {result}")
    console.rule(f"[bold cyan][{len(steps) + 1}/{len(steps) + 1}] Build the report", align="left")
    t0 = time.perf_counter()
    sections = [("Demo timeline", _timeline(timings, t0 - t_start)), ("Mixed precision", _precision([out]))]
    report = build_report([out], out / "report", title="cityseg demo report", extra=sections)
    timings.append(("Build the report", time.perf_counter() - t0, str(report)))
    total = time.perf_counter() - t_start
    (out / "demo_timings.json").write_text(jsonsafe.dumps({"quick": args.quick, "spec": str(spec_path), "total_s": total,
        "steps": [{"step": t, "wall_s": s, "result": r} for t, s, r in timings]}, indent=1) + "\n")  # fmt: skip
    console.print(f"[bold]total {total:.0f} s. Report:[/] {report}")
    return 0


def _precision(folders: list[Path]) -> str:
    """The bf16 points beside fp32 with their speed-up, or why there are none (bf16 emulated here)."""
    runs = load_runs(folders)
    return mixed_precision_section(runs) or emulated_note(runs)


def _timeline(timings: list[tuple[str, float, str]], total: float) -> str:
    body = [[f"{i}. {title}", fmt_s(dt), result] for i, (title, dt, result) in enumerate(timings, 1)]
    body.append(["total before the report", fmt_s(total), ""])
    return "Wall time of each `cityseg demo` step (with the report's own: ../demo_timings.json).\n\n" + md_table(
        ["step", "wall time", "result"], body, [False, True, False]
    )
