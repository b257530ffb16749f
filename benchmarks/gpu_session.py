"""One GPU session: the GPU test suite, then the headline measurements, into reports/<gpu>-<date>/.

    python benchmarks/gpu_session.py                 # one H100/H200 with 16 cores: <= 8 minutes
    python benchmarks/gpu_session.py --dry-run       # the steps, their time budgets, what each measures
    python benchmarks/gpu_session.py --smoke         # the same flow at toy sizes on the CPU (CI runs it)

Nothing needs installing but torch: with the DALI / cityscapesscripts wheels unpacked into /tmp/site
(../shared/gpu/bundle.sh, .gpu/unpack.sh), run it as `PYTHONPATH=/tmp/site:$PWD python benchmarks/gpu_session.py`.

Resumable: OUT/session.json records every step of every run; a rerun skips the steps that finished and,
inside a step, the points already in OUT/results.jsonl, so a session cut short by its budget or a kill
goes on where it stopped. Each step gets its own time budget (`--dry-run` lists them); what a budget
leaves out is listed in OUT/SESSION.md as not measured yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAD = {"batch_size": 16, "hw_decoder_load": 0.75, "num_threads": 8}  # the headline DALI GPU setting


@dataclass
class Ctx:
    out: Path
    work: Path
    smoke: bool
    env: dict[str, str]
    deadline: float = 0.0  # this step's, time.time()

    @property
    def results(self) -> Path:
        return self.out / "results.jsonl"

    def left(self) -> float:
        return max(0.0, self.deadline - time.time())

    def data(self, labels: str) -> Path:
        return self.work / f"jpeg_{labels}"

    def base(self) -> list[str]:
        """Overrides every point shares: crop, data, timing (toy sizes with --smoke)."""
        if self.smoke:
            return [f"data.root={self.data('npy')}", "data.crop=[32,64]", "bench.iters=3", "bench.warmup=1"]
        return [f"data.root={self.data('npy')}", "data.crop=[512,1024]", "bench.iters=30", "bench.warmup=5"]


@dataclass
class Step:
    name: str
    budget_s: float
    what: str
    run: Callable[[Ctx], str]
    smoke: bool = True  # runs in --smoke too


@dataclass
class Record:
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            d = json.loads(path.read_text())
            return cls(d.get("steps", {}), d.get("runs", []))
        except (OSError, json.JSONDecodeError):
            return cls()

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"steps": self.steps, "runs": self.runs}, indent=1) + "\n")
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# running things


def run_cmd(ctx: Ctx, args: list[str], log: str | None = None, timeout: float | None = None) -> int:
    """Run `python ARGS` from the repo root within the step's time; returns its exit code (124 on timeout)."""
    limit = max(1.0, ctx.left() if timeout is None else timeout)
    try:
        p = subprocess.run([sys.executable, *args], cwd=ROOT, env=ctx.env, capture_output=True, text=True, timeout=limit)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        text = _text(e.stdout) + _text(e.stderr) + f"\n[gpu_session: stopped after {limit:.0f} s]\n"
    if log:
        with open(ctx.out / log, "a") as f:
            f.write(f"$ python {' '.join(args)}\n{text}\n")
    return rc


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def done_points(results: Path) -> set[str]:
    from cityseg_fast.results import read_rows

    return {r.point_id for r in read_rows(results) if r.status in ("ok", "oom")}


def measure_loaders(ctx: Ctx, points: list[list[str]]) -> str:
    """Each loader point in this process, priority order, skipping measured ones, until the deadline."""
    from cityseg_fast.bench.loader_bench import measure_loader
    from cityseg_fast.config import load_config
    from cityseg_fast.environment import collect_env
    from cityseg_fast.results import append_row, point_for, point_id, row_for

    env, done = collect_env(), done_points(ctx.results)
    iters, warmup = (3, 1) if ctx.smoke else (25, 5)
    n_new = n_left = 0
    for over in points:
        cfg = load_config([], ctx.base() + over)
        if point_id("loader", point_for("loader", cfg)) in done:
            continue
        if ctx.left() <= 0:
            n_left += 1
            continue
        metrics, failure = {}, None
        try:
            metrics = measure_loader(cfg, iters, warmup)
        except Exception as e:  # a failed point is a result, and the next point still runs
            failure = e
        row = row_for("loader", cfg, metrics, error=failure, env=env)
        append_row(ctx.results, row)
        done.add(row.point_id)
        n_new += 1
        ips = metrics.get("images_per_s")
        print(f"  {row.status:5s} {' '.join(over):90s} {ips:8.1f} img/s" if ips else f"  {row.status:5s} {over} {row.error}")
    if n_left:
        raise Budget(f"{n_new} points measured, {n_left} left for a rerun")
    return f"{n_new} points measured"


class Budget(Exception):
    """The step's time ran out with work left: the step is 'partial' and a rerun resumes it."""


# ---------------------------------------------------------------------------------------------
# steps


def step_doctor(ctx: Ctx) -> str:
    rc = run_cmd(ctx, ["-m", "cityseg_fast", "doctor", "--json"], log="doctor.log")
    text = (ctx.out / "doctor.log").read_text().splitlines()
    info = next((json.loads(ln) for ln in reversed(text) if ln.startswith("{")), None)
    if rc or info is None:
        raise RuntimeError(f"doctor exited {rc}")
    (ctx.out / "doctor.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    gpu = info["gpus"][0]["name"] if info.get("gpus") else "no GPU"
    d = info["dali_probe"]
    return f"{gpu}; DALI {d['version']}: cpu graphs {d.get('cpu_pipeline')}, gpu graphs {d.get('gpu_decode')}"


def _suite(ctx: Ctx, marker: str, log: str) -> str:
    rc = run_cmd(ctx, ["-m", "pytest", "-q", "-m", marker, "tests/gpu", "-p", "no:cacheprovider", "-rfE"], log=log)
    tail = [ln for ln in (ctx.out / log).read_text().splitlines() if re.search(r"passed|failed|error|skipped", ln)]
    summary = tail[-1].strip() if tail else f"exit {rc}"
    if rc == 124:
        raise Budget(f"suite stopped by its budget: {summary}")
    if rc not in (0, 5):  # 5: nothing collected (no test of this marker)
        raise RuntimeError(summary)
    return summary


def step_suite(ctx: Ctx) -> str:
    return _suite(ctx, "gpu and not slow", "gpu_suite.log")


def step_suite_slow(ctx: Ctx) -> str:
    return _suite(ctx, "gpu and slow", "gpu_suite_slow.log")


def step_data(ctx: Ctx) -> str:
    """Street-like frames at Cityscapes' size, prepared as JPEG q95 twice: npy and PNG labels."""
    frames, size = ("8", "2") if ctx.smoke else ("64", "8"), "64x128" if ctx.smoke else "1024x2048"
    raw = ctx.work / "raw"
    if not (raw / "leftImg8bit").is_dir():
        rc = run_cmd(ctx, ["-m", "cityseg_fast", "synth", "--out", str(raw), "--train", frames[0], "--val",
                           frames[1], "--test", "0", "--size", size, "--no-progress"], log="data.log")  # fmt: skip
        if rc:
            raise RuntimeError(f"synth exited {rc}")
    for labels in ("npy", "png"):
        rc = run_cmd(ctx, ["-m", "cityseg_fast", "prepare", "--src", str(raw), "--out", str(ctx.data(labels)),
                           "--label-format", labels, "--no-progress"], log="data.log")  # fmt: skip
        if rc:
            raise RuntimeError(f"prepare ({labels} labels) exited {rc}")
    return f"{frames[0]} + {frames[1]} frames at {size} -> JPEG q95, npy and PNG labels, in {ctx.work}"


def dali_points(ctx: Ctx) -> list[list[str]]:
    """The DALI mixed-decode grid, the headline setting first (so a short budget still measures it)."""
    dev = "cpu" if ctx.smoke else "gpu"
    base = ["loader.backend=dali", f"loader.device={dev}"]
    head = [f"loader.{k}={v}" for k, v in HEAD.items()]
    if ctx.smoke:
        head = ["loader.batch_size=2", "loader.num_threads=1"]
    points = [head, [*head, "loader.decode_only=true"], [*head, f"data.root={ctx.data('png')}"],
              [*head, "loader.roi=resize"]]  # fmt: skip
    if not ctx.smoke:
        for decode_only in ("false", "true"):
            for bs in (8, 16):
                for hw in (0.0, 0.5, 0.75, 0.9, 1.0):
                    for threads in (2, 4, 8):
                        points.append([f"loader.decode_only={decode_only}", f"loader.batch_size={bs}",
                                       f"loader.hw_decoder_load={hw}", f"loader.num_threads={threads}"])  # fmt: skip
    return [base + p for p in points]


def torch_points(ctx: Ctx) -> list[list[str]]:
    """The torch DataLoader by worker count, and DALI decoding on the CPU for the GPU, at batch 8."""
    if ctx.smoke:
        return [["loader.backend=torch", "loader.batch_size=2", "loader.num_workers=1"]]
    pts = [["loader.backend=torch", "loader.batch_size=8", f"loader.num_workers={w}"] for w in (16, 8, 4, 2)]
    return [*pts, ["loader.backend=dali", "loader.device=cpu", "loader.batch_size=8", "loader.num_threads=16"]]


def step_dali(ctx: Ctx) -> str:
    return _child(ctx, "dali")


def step_torch(ctx: Ctx) -> str:
    return _child(ctx, "torch")


def _child(ctx: Ctx, which: str) -> str:
    """Loader points in a child process (a hung pipeline cannot stall the session)."""
    args = [str(Path(__file__)), "--child", which, "--out", str(ctx.out), "--work", str(ctx.work),
            "--deadline", str(ctx.deadline - 5)] + (["--smoke"] if ctx.smoke else [])  # fmt: skip
    rc = run_cmd(ctx, args, log=f"loaders_{which}.log")
    said = re.findall(r"^gpu_session: (.*)$", (ctx.out / f"loaders_{which}.log").read_text(), re.M)
    last = said[-1] if said else f"exit {rc}"
    if rc == 3:
        raise Budget(last)
    if rc:
        raise RuntimeError(f"exit {rc}: {last}")
    return last


def _sweep(ctx: Ctx, name: str, spec: dict[str, Any]) -> str:
    import yaml

    path = ctx.out / f"sweep_{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    budget = max(1.0, ctx.left() - min(60.0, ctx.left() / 4))  # the point started last takes its own time
    rc = run_cmd(ctx, ["-m", "cityseg_fast", "sweep", str(path), "--out", str(ctx.out), "--time-budget",
                       f"{budget:.0f}"], log=f"sweep_{name}.log")  # fmt: skip
    text = (ctx.out / f"sweep_{name}.log").read_text()
    done = re.findall(r"done: (.*?)\s+\(", text)
    summary = done[-1] if done else f"exit {rc}"
    if rc == 124 or "not_started" in summary:
        raise Budget(summary)
    return summary


def _sweep_base(ctx: Ctx) -> dict[str, Any]:
    import yaml

    over = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in ctx.base())}
    over.update({"model.name": "unet_s16" if ctx.smoke else "fcn_resnet50", "loader.batch_size": 2 if ctx.smoke else 8,
                 "precision.dtype": "fp32" if ctx.smoke else "bf16", "precision.compile": "off"})  # fmt: skip
    cfg = ["configs/bench/cpu.yaml" if ctx.smoke else "configs/bench/gpu.yaml"]
    return {"config": cfg, "overrides": over, "timeout_s": 120 if ctx.smoke else 300}


def step_e2e(ctx: Ctx) -> str:
    """Loader alone, model alone and end to end, for each loader, at the headline model setting."""
    loaders = [
        {"loader.backend": "dali", "loader.device": "gpu", "loader.num_threads": 8, "loader.hw_decoder_load": 0.75},
        {"loader.backend": "dali", "loader.device": "cpu", "loader.num_threads": 16},
        {"loader.backend": "torch", "loader.num_workers": 16},
    ]
    if ctx.smoke:
        loaders = [{"loader.backend": "dali", "loader.device": "cpu", "loader.num_threads": 1}]
    runs = [{"scenarios": ["model"]}] + [{"scenarios": ["loader", "e2e"], "overrides": o} for o in loaders]
    return _sweep(ctx, "e2e", {"name": "gpu_session_e2e", **_sweep_base(ctx), "runs": runs})


def step_models(ctx: Ctx) -> str:
    """Train-step throughput and MFU: the headline (FCN-R50 bf16 channels_last, compiled) early."""
    models = ["unet_s16"] if ctx.smoke else ["fcn_resnet50", "unet"]
    grid = lambda **kw: {"scenarios": ["model"], "grid": {"model.name": models, **kw}}  # noqa: E731
    if ctx.smoke:
        runs = [grid(**{"precision.channels_last": [True, False]})]
    else:
        runs = [
            grid(**{"precision.dtype": ["bf16"], "precision.channels_last": [True], "precision.compile": ["off", "default"]}),
            grid(**{"precision.dtype": ["fp16", "tf32"], "precision.channels_last": [True], "precision.compile": ["off"]}),
            grid(**{"precision.dtype": ["bf16", "fp16", "tf32"], "precision.channels_last": [False], "precision.compile": ["off"]}),
            grid(**{"precision.dtype": ["fp16", "tf32"], "precision.channels_last": [True], "precision.compile": ["default"]}),
            grid(**{"precision.dtype": ["bf16", "fp16", "tf32"], "precision.channels_last": [False], "precision.compile": ["default"]}),
        ]  # fmt: skip
    base = _sweep_base(ctx)
    base["overrides"] = {**base["overrides"], "bench.warmup": 1 if ctx.smoke else 8}
    return _sweep(ctx, "models", {"name": "gpu_session_models", **base, "runs": runs})


def step_report(ctx: Ctx) -> str:
    rc = run_cmd(ctx, ["-m", "cityseg_fast", "report", str(ctx.out), "--out", str(ctx.out), "--title",
                       f"GPU session: {ctx.out.name}"], log="report.log")  # fmt: skip
    if rc:
        raise RuntimeError(f"cityseg report exited {rc}")
    return "REPORT.md, plots, results.csv"


STEPS = [
    Step("doctor", 20, "cityseg doctor --json: versions, the GPU, one batch of DALI's real graphs on CPU and GPU", step_doctor),
    Step("suite", 150, 'pytest -m "gpu and not slow" tests/gpu: graphs vs CPU, hand-offs, sync-free steps and eval, bench rows', step_suite, smoke=False),
    Step("data", 40, "synthesize 64 + 8 frames at 1024x2048; prepare JPEG q95 with npy and with PNG labels", step_data),
    Step("dali", 90, "DALI mixed decode-only and train (1024x2048 -> 512x1024), batch 8/16 x hw_decoder_load {0,.5,.75,.9,1} x num_threads {2,4,8}; PNG labels and full-frame decode at the headline", step_dali),
    Step("torch", 35, "torch DataLoader with 16, 8, 4, 2 workers; DALI on the CPU feeding the GPU (16 threads)", step_torch),
    Step("e2e", 70, "sweep: loader, model, e2e for DALI gpu, DALI cpu, torch at FCN-R50 bf16 channels_last batch 8", step_e2e),
    Step("models", 60, "sweep: FCN-R50 and U-Net bf16/fp16/tf32 x channels_last x compile off/default at 512x1024, MFU", step_models),
    Step("suite-slow", 0, 'pytest -m "gpu and slow": compiled FCN-R50 train + resume, fp16 scale, max-autotune, compiled bench rows', step_suite_slow, smoke=False),
    Step("report", 15, "cityseg report OUT --out OUT; SESSION.md with the goals as measured", step_report),
]


# ---------------------------------------------------------------------------------------------
# the session


def out_dir(smoke: bool) -> Path:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu-smoke"
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-")
    return ROOT / "reports" / f"{slug}-{dt.date.today().isoformat()}"


SMOKE_SLACK = 4.0  # --smoke: toy sizes, but each point still starts a process on a possibly busy CPU


def budgets(total: float, smoke: bool = False) -> dict[str, float]:
    """Each step's budget scaled to `total` (with --smoke, the toy steps get SMOKE_SLACK times theirs
    before that, since process start-up, not the toy work, dominates them); suite-slow gets the rest."""
    slack = SMOKE_SLACK if smoke else 1.0
    fixed = sum(s.budget_s * slack for s in STEPS)
    scale = min(1.0, total / fixed)
    b = {s.name: s.budget_s * slack * scale for s in STEPS}
    b["suite-slow"] = max(0.0, total - fixed)
    return b


def run_session(ctx: Ctx, total_s: float, record_path: Path, only: set[str] | None = None) -> Record:
    record = Record.load(record_path)
    run = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "steps": []}
    record.runs.append(run)
    t_end = time.time() + total_s
    plan = budgets(total_s, ctx.smoke)
    for step in STEPS:
        if (ctx.smoke and not step.smoke) or (only and step.name not in only):
            continue
        prev = record.steps.get(step.name, {})
        # data and report always run: a fresh machine has no data yet (prepare resumes what is there)
        if prev.get("status") == "done" and step.name not in ("data", "report"):
            continue
        # The report always runs; every other step stops at its budget or the session's end.
        reserve = 0 if step.name == "report" else plan["report"]
        ctx.deadline = min(time.time() + plan[step.name], t_end - reserve)
        if step.name == "suite-slow":
            ctx.deadline = t_end - reserve
        if step.name == "report":
            ctx.deadline = time.time() + plan["report"] + 30
        if ctx.left() <= 0:
            record.steps[step.name] = {**prev, "status": prev.get("status", "not started"), "note": "no time left"}
            continue
        t0 = time.time()
        print(f"[{step.name}] budget {ctx.left():.0f} s: {step.what}", flush=True)
        try:
            note, status = step.run(ctx), "done"
        except Budget as e:
            note, status = str(e), "partial"
        except Exception as e:  # a failed step is recorded; the session goes on with the next
            note, status = f"{type(e).__name__}: {e}"[:500], "failed"
        wall = time.time() - t0
        record.steps[step.name] = {"status": status, "note": note, "wall_s": round(wall, 1)}
        run["steps"].append({"step": step.name, "status": status, "wall_s": round(wall, 1)})
        record.save(record_path)
        print(f"[{step.name}] {status} in {wall:.0f} s: {note}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="report folder (default reports/<gpu>-<date>)")
    ap.add_argument("--work", default="/tmp/cityseg-gpu-session", help="scratch folder for the data")
    ap.add_argument("--budget-s", type=float, default=480, help="the whole session's time (default 480)")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and their budgets, run nothing")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: the flow, not the numbers")
    ap.add_argument("--tar", metavar="FILE", help="also pack the report folder into FILE (.tar.gz)")
    ap.add_argument("--only", metavar="STEP,...", help="run only these steps (e.g. dali,report)")
    ap.add_argument("--child", choices=["dali", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:
        plan = budgets(args.budget_s)
        print(f"gpu_session: {len(STEPS)} steps in {args.budget_s:.0f} s (resumable; rerun to continue)")
        for s in STEPS:
            extra = " (what the others leave)" if s.name == "suite-slow" else ""
            print(f"  {s.name:10s} {plan[s.name]:5.0f} s{extra}  {s.what}")
        return 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the flow on the CPU, even on a GPU machine
        env["OMP_NUM_THREADS"] = "1"  # tiny ops on a shared CI machine: spinning OpenMP pools cost 10x
    out = Path(args.out) if args.out else out_dir(args.smoke)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(out=out, work=Path(args.work), smoke=args.smoke, env=env)
    ctx.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        ctx.deadline = args.deadline or time.time() + 60
        try:
            print(f"gpu_session: {measure_loaders(ctx, dali_points(ctx) if args.child == 'dali' else torch_points(ctx))}")
        except Budget as e:
            print(f"gpu_session: {e}")
            return 3
        return 0
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {s.name for s in STEPS}
    if unknown:
        print(f"gpu_session: --only: no step {', '.join(sorted(unknown))} (steps: {', '.join(s.name for s in STEPS)})")
        return 2
    record = run_session(ctx, args.budget_s, out / "session.json", only)
    from session_summary import write_summary  # benchmarks/ is on the path

    write_summary(out, record, STEPS, budgets(args.budget_s, args.smoke))
    if args.tar:
        with tarfile.open(args.tar, "w:gz") as tar:
            tar.add(out, arcname=out.name)
    print(f"gpu_session: {out}/SESSION.md, {out}/REPORT.md")
    return 0 if all(s.get("status") == "done" for s in record.steps.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
