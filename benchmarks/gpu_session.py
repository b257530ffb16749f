"""One GPU session of about 9 minutes: the headline numbers first, then sweeps and the GPU suite, into
reports/<gpu>-<date>/.

    python benchmarks/gpu_session.py                 # one H100/H200 with 16 cores: <= 540 s
    python benchmarks/gpu_session.py --dry-run       # the steps, their budgets, what each measures
    python benchmarks/gpu_session.py --smoke         # the same flow at toy sizes on the CPU (CI runs it)

Nothing needs installing but torch: with the DALI / cityscapesscripts wheels unpacked into /tmp/site
(../shared/gpu/bundle.sh, .gpu/unpack.sh), run it as `PYTHONPATH=/tmp/site:$PWD python benchmarks/gpu_session.py`.

Order. doctor and data; then the headline numbers, each its own resumable step: DALI mixed decode-only and
train (1024x2048 JPEG -> 512x1024 crops), torch's nvJPEG loader (torchvision.io on the GPU), the torch
DataLoader on CPU workers, the model alone (FCN-R50 bf16 channels_last, eager and compiled, with MFU), end
to end with each loader; then the sweeps, the GPU suite (fast, then slow) and the report.

Budgets. Each step's budget is sized from what its work costs (the COST table and `sized`, with how each
figure was estimated); `--dry-run` lists them, and they sum to at most 540 s. A step may also use what the
steps before it left unused, never what the steps after it are owed. A point starts only when its estimated
cost fits in what its step has left: a compiled FCN-R50 that would be killed halfway is left for a rerun.

Processes. Each measuring step runs its points one after another in one child process (torch import, CUDA
initialisation and cuDNN autotuning once per step, not once per point); memory baselines are taken after
DALI's and torch's pools are released and the host peak is reset (bench/memory.release_pools,
bench/loader_bench). Every child leads its own process group, which is killed with all its descendants at
the step's deadline. The inductor and Triton caches live under --work, so a rerun does not compile again.

The suite. pytest with CITYSEG_REQUIRE_GPU=1 (a skipped gpu test is a failure), a time limit per test, a
junit XML per attempt, and a progress log (tests/conftest.py) that survives a kill: a rerun runs only the
tests that have not passed; a test that the deadline would cut is not started (the step is then partial).

Resumable: OUT/session.json records every step of every run; a rerun skips the steps that finished and,
inside a step, the points already in OUT/results.jsonl. What a budget left out is listed in SESSION.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
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

SESSION_S = 540  # the whole run: about 9 minutes of a 10-minute command, the rest for start-up and transfers

# -- the headline settings (one H200, 16 cores) ------------------------------------------------------

DALI_GPU = ("loader.backend=dali", "loader.device=gpu", "loader.hw_decoder_load=0.75", "loader.num_threads=8")
TORCH_GPU = ("loader.backend=torch", "loader.device=gpu", "loader.num_workers=8")  # 8 file-reading threads
TORCH_CPU = ("loader.backend=torch", "loader.device=cpu", "loader.num_workers=16")  # torchvision.io decoder
FCN = ("model.name=fcn_resnet50", "precision.dtype=bf16", "precision.channels_last=true")
PNG_LABELS = "data.root=<png>"  # the same frames with PNG labels (Ctx.base resolves it)
HEAD_BATCH = 16  # every headline loader, model and e2e point: the e2e points' companions are the headline rows
TRAIN_FRAMES, VAL_FRAMES = 512, 16  # 32 batches of 16 an epoch: no loader re-primes within a measurement

# -- what things cost, in wall seconds on one H200 with 16 cores --------------------------------------

STARTUP_S = 12  # a step's child: torch import ~4 s cold, CUDA init ~2 s, DALI import and plugin ~3 s, margin
COST = {
    # build (a DALI pipeline ~2 s, 16 forkserver workers ~5 s, nvJPEG init ~1 s) + 35 batches of 16 frames
    # (560 frames: 0.5 s at 1,000 img/s, 2 s at 300) + the memory readings
    "loader": 8.0,
    # FCN-R50 bf16 batch 16 at 512x1024: build, cuDNN autotune of the first steps ~10 s, 35 train steps
    # (~1 TFLOP each image: ~2 s at 40 % of 989 TFLOP/s), the eval-mode half, FLOP counting ~5 s
    "model": 30.0,
    # the same, compiled: inductor takes 40-90 s cold for the train graph and once more for the eval-mode
    # half's own graph (the row's infer_compile_s); with the inductor cache under --work warm (a rerun), a
    # fraction of that
    "model-compiled-cold": 120.0,
    "model-compiled-warm": 45.0,
    # the same train step fed by a real loader: its build + 35 steps (the autotune is cached in the process)
    "e2e": 15.0,
}
SMOKE_POINT_S = 4.0  # --smoke: toy sizes on the CPU, every point a few seconds
SMOKE_SLACK = 4.0  # --smoke: budgets x4, since process start-up, not the toy work, dominates on a busy CPU
TEST_TIMEOUT_S = {"suite": 120, "suite-slow": 300}  # a compiled FCN-R50 test trains and resumes: minutes


@dataclass(frozen=True)
class Point:
    scenario: str
    over: tuple[str, ...]


def cost(p: Point, smoke: bool, cache_warm: bool = False) -> float:
    """Estimated wall seconds of one point (COST), its step's start-up apart."""
    if smoke:
        return SMOKE_POINT_S
    if p.scenario == "model" and "precision.compile=default" in p.over:
        return COST["model-compiled-warm" if cache_warm else "model-compiled-cold"]
    return COST[p.scenario]


def sized(points: list[Point]) -> float:
    """A measuring step's budget: its child's start-up and every point's cost, cold."""
    return STARTUP_S + sum(cost(p, smoke=False) for p in points)


# -- the session's context --------------------------------------------------------------------------


@dataclass
class Ctx:
    out: Path
    work: Path
    smoke: bool
    env: dict[str, str]
    gpus: int = 0
    deadline: float = 0.0  # this step's, time.time()

    @property
    def results(self) -> Path:
        return self.out / "results.jsonl"

    def left(self) -> float:
        return max(0.0, self.deadline - time.time())

    def data(self, labels: str) -> Path:
        return self.work / f"jpeg_{labels}"

    def base(self) -> list[str]:
        """Overrides every point shares: the data, the crop, timing (toy sizes with --smoke)."""
        if self.smoke:
            return [f"data.root={self.data('npy')}", "data.crop=[32,64]", "bench.iters=3", "bench.warmup=1",
                    "loader.batch_size=2", "loader.num_threads=1", "loader.num_workers=1"]  # fmt: skip
        return [f"data.root={self.data('npy')}", "data.crop=[512,1024]", "bench.iters=30", "bench.warmup=5",
                f"loader.batch_size={HEAD_BATCH}"]  # fmt: skip

    def overrides(self, p: Point) -> list[str]:
        return [*self.base(), *(f"data.root={self.data('png')}" if o == PNG_LABELS else o for o in p.over)]

    def config_files(self) -> list[str]:
        return ["configs/bench/cpu.yaml" if self.smoke else "configs/bench/gpu.yaml"]


@dataclass
class Step:
    name: str
    budget_s: float
    what: str
    run: Callable[[Ctx], str]
    smoke: bool = True  # runs in --smoke too
    sizing: str = ""  # how the budget was sized (--dry-run prints it)


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


class Budget(Exception):
    """The step's time ran out with work left: the step is 'partial' and a rerun resumes it."""


# -- running things -----------------------------------------------------------------------------------


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a child's process group and every descendant (a test's CLI child leads a group of its own)."""
    from cityseg_fast.memstats import descendants

    pids = descendants(proc.pid) if Path("/proc/self/stat").exists() else []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_cmd(ctx: Ctx, args: list[str], log: str | None = None, env: dict[str, str] | None = None) -> int:
    """Run `python ARGS` from the repo root, in a process group of its own (told to stop if the session
    dies), until the step's deadline; returns its exit code (124 when the deadline killed it, with
    everything it started)."""
    from cityseg_fast.bench.sweep_point import (
        DIE_WITH_PARENT,  # PR_SET_PDEATHSIG: it stops if the session dies
    )

    limit = max(1.0, ctx.left())
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env or ctx.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=DIE_WITH_PARENT)  # fmt: skip
    try:
        text, _ = proc.communicate(timeout=limit)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        text, rc = (proc.communicate()[0] or "") + f"\n[gpu_session: stopped after {limit:.0f} s]\n", 124
    except BaseException:
        kill_tree(proc)
        raise
    if log:
        with open(ctx.out / log, "a") as f:
            f.write(f"$ python {' '.join(args)}\n{text}\n")
    return rc


def done_points(results: Path) -> set[str]:
    from cityseg_fast.results import read_rows

    return {r.point_id for r in read_rows(results) if r.status in ("ok", "oom")}


def _cache_warm(ctx: Ctx) -> bool:
    cache = Path(ctx.env.get("TORCHINDUCTOR_CACHE_DIR", ""))
    return cache.is_dir() and any(cache.iterdir())


def measure_points(ctx: Ctx, points: list[Point]) -> str:
    """Each point in this process, in order, skipping measured ones and those whose estimated cost no
    longer fits before the deadline (left for a rerun: Budget)."""
    from cityseg_fast.bench.runners import run_scenario
    from cityseg_fast.config import load_config
    from cityseg_fast.environment import collect_env
    from cityseg_fast.results import append_row, point_for, point_id, row_for

    env, done, warm = collect_env(), done_points(ctx.results), _cache_warm(ctx)
    n_new, left = 0, []
    for p in points:
        cfg = load_config(ctx.config_files(), ctx.overrides(p))
        if point_id(p.scenario, point_for(p.scenario, cfg)) in done:
            continue
        if ctx.left() < cost(p, ctx.smoke, warm):
            left.append(f"{p.scenario} {' '.join(p.over)}")
            continue
        metrics, failure = {}, None
        try:
            metrics = run_scenario(p.scenario, cfg)
        except Exception as e:  # a failed point is a result, and the next point still runs
            failure = e
        row = row_for(p.scenario, cfg, metrics, error=failure, env=env)
        append_row(ctx.results, row)
        done.add(row.point_id)
        n_new += 1
        ips = metrics.get("images_per_s")
        said = f"{ips:9.1f} img/s" if ips else str(row.error)[:200]
        print(f"  {row.status:5s} {p.scenario:6s} {' '.join(p.over):100s} {said}", flush=True)
    if left:
        raise Budget(f"{n_new} points measured, {len(left)} left for a rerun: " + "; ".join(left)[:400])
    return f"{n_new} points measured"


def child(ctx: Ctx, which: str) -> str:
    """A measuring step's points in a child process (a hung pipeline cannot stall the session)."""
    args = [str(Path(__file__)), "--child", which, "--out", str(ctx.out), "--work", str(ctx.work),
            "--deadline", str(ctx.deadline - 5)] + (["--smoke"] if ctx.smoke else [])  # fmt: skip
    rc = run_cmd(ctx, args, log=f"step_{which}.log")
    said = re.findall(r"^gpu_session: (.*)$", (ctx.out / f"step_{which}.log").read_text(), re.M)
    last = said[-1] if said else f"exit {rc}"
    if rc in (3, 124):
        raise Budget(last if rc == 3 else f"stopped at the deadline: {last}")
    if rc:
        raise RuntimeError(f"exit {rc}: {last}")
    return last


# -- the points of each measuring step ----------------------------------------------------------------


def _loader_pair(loader: tuple[str, ...]) -> list[Point]:
    """A loader's train point and its decode-only point (the decoder's limit)."""
    return [Point("loader", loader), Point("loader", (*loader, "loader.decode_only=true"))]


def points_for(which: str, smoke: bool) -> list[Point]:
    if smoke:
        return SMOKE_POINTS.get(which, [])
    return POINTS[which]


MODEL_EAGER = Point("model", FCN)  # compile off: the bench configs' default
POINTS: dict[str, list[Point]] = {
    "dali": _loader_pair(DALI_GPU),
    "torch-gpu": _loader_pair(TORCH_GPU),
    "torch-cpu": _loader_pair(TORCH_CPU),
    "model": [MODEL_EAGER, Point("model", (*FCN, "precision.compile=default"))],
    # each e2e point after its companions (measured by the steps above: skipped unless --only left them out)
    "e2e": [p for lo in (DALI_GPU, TORCH_GPU, TORCH_CPU)
            for p in (Point("loader", lo), MODEL_EAGER, Point("e2e", (*lo, *FCN)))],
}  # fmt: skip
SMOKE_DALI = ("loader.backend=dali", "loader.device=cpu")
SMOKE_MODEL = ("model.name=unet_s16",)
SMOKE_POINTS: dict[str, list[Point]] = {
    "dali": _loader_pair(SMOKE_DALI),
    "torch-cpu": _loader_pair(("loader.backend=torch",)),
    "model": [Point("model", SMOKE_MODEL)],
    "e2e": [Point("loader", SMOKE_DALI), Point("model", SMOKE_MODEL), Point("e2e", (*SMOKE_DALI, *SMOKE_MODEL))],
    "sweeps": [Point("loader", (*SMOKE_DALI, "loader.roi=resize"))],
}


def sweep_points() -> list[Point]:
    """After the headline numbers, most telling first (a short budget still measures the first ones): DALI
    at batch 8 and over its decoder knobs, PNG labels and roi=resize, DALI on the CPU feeding the GPU,
    torch by worker count and with PIL, the nvJPEG loader at batch 8, other models and dtypes."""
    b8 = ("loader.batch_size=8",)
    pts = [*_loader_pair((*DALI_GPU, *b8)), *_loader_pair((*TORCH_GPU, *b8))]
    pts += [Point("loader", (*DALI_GPU, f"loader.hw_decoder_load={hw}", f"loader.num_threads={t}"))
            for hw in (0.0, 0.5, 1.0) for t in (4, 8)]  # fmt: skip
    pts += [Point("loader", (*DALI_GPU, "loader.roi=resize")), Point("loader", (*DALI_GPU, PNG_LABELS))]
    dali_cpu = ("loader.backend=dali", "loader.device=cpu", "loader.num_threads=16")
    pts += [Point("loader", dali_cpu), Point("e2e", (*dali_cpu, *FCN))]
    pts += [Point("loader", (*TORCH_CPU[:2], f"loader.num_workers={w}")) for w in (8, 4)]
    pts += [Point("loader", (*TORCH_CPU, "loader.decoder=pil"))]
    pts += [Point("model", ("model.name=unet", "precision.dtype=bf16"))]
    pts += [Point("model", (*FCN[:1], f"precision.dtype={d}")) for d in ("fp16", "tf32")]
    pts += [Point("model", (*FCN[:2], "precision.channels_last=false"))]
    return pts


POINTS["sweeps"] = sweep_points()


# -- steps ----------------------------------------------------------------------------------------


def step_doctor(ctx: Ctx) -> str:
    """Versions, the GPU, one batch of DALI's real graphs on CPU and GPU, the nvJPEG DALI loaded and the
    hardware decoder; on a GPU machine the step fails unless CUDA works and DALI decoded on the GPU with
    nvJPEG and the JPEG engines (the rest of the session would measure a fallback)."""
    rc = run_cmd(ctx, ["-m", "cityseg_fast", "doctor", "--json"], log="doctor.log")
    text = (ctx.out / "doctor.log").read_text().splitlines()
    info = next((json.loads(ln) for ln in reversed(text) if ln.startswith("{")), None)
    if rc or info is None:
        raise RuntimeError(f"doctor exited {rc}")
    (ctx.out / "doctor.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    gpu = info["gpus"][0]["name"] if info.get("gpus") else "no GPU"
    d = info["dali_probe"]
    said = (f"{gpu}; DALI {d['version']}: cpu graphs {d.get('cpu_pipeline')}, gpu graphs {d.get('gpu_decode')}, "
            f"nvjpeg {d.get('nvjpeg_version')}, hw decoder {d.get('hw_decoder')} ({d.get('hw_decoder_engines')} "
            "engines)")  # fmt: skip
    missing = gpu_decoding_missing(info)
    if not ctx.smoke and missing:
        raise RuntimeError(f"{missing} ({said}; {d.get('error')})")
    return said


def gpu_decoding_missing(info: dict[str, Any]) -> str | None:
    """Why doctor's report (`cityseg doctor --json`) shows no GPU decoding as the session needs it, or None:
    CUDA, DALI's graphs through the mixed decoder, the nvJPEG DALI loaded (without it the mixed decoder
    decodes on the CPU and still runs) and the hardware JPEG decoder (the headline rates assume its engines)."""
    d = info.get("dali_probe") or {}
    note = d.get("gpu_decode_note") or "no reason given"
    if not info.get("cuda_available"):
        return "no GPU decoding here: CUDA is not available"
    if not d.get("nvjpeg_version"):
        return f"no GPU decoding here: DALI's mixed decoder ran without nvJPEG ({note})"
    if not d.get("gpu_decode"):
        return "no GPU decoding here: DALI's GPU graphs did not run"
    if not d.get("hw_decoder"):
        return f"no hardware JPEG decoder here ({note}): DALI's mixed decode would run on CUDA cores only"
    return None


def step_data(ctx: Ctx) -> str:
    """Street-like frames at Cityscapes' size, prepared as JPEG q95 twice: npy labels and PNG labels."""
    frames = ("8", "2") if ctx.smoke else (str(TRAIN_FRAMES), str(VAL_FRAMES))
    size = "64x128" if ctx.smoke else "1024x2048"
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


def _measuring(which: str) -> Callable[[Ctx], str]:
    return lambda ctx: child(ctx, which)


# -- the GPU suite -------------------------------------------------------------------------------


def suite_records(log: Path) -> list[dict[str, Any]]:
    """The progress log's records (tests/conftest.py), a line torn by a kill left out."""
    out = []
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def outcomes(records: list[dict[str, Any]]) -> dict[str, str]:
    """Each test's outcome in its latest run among `records`: passed, failed, skipped, or 'cut' when it
    started and its pytest ended before it reported (the hard time-out, or a kill)."""
    out: dict[str, str] = {}
    for r in records:
        nid, event = r.get("nodeid"), r.get("event")
        if event == "start":
            out[nid] = "cut"
        elif event == "report" and nid in out:
            if r["outcome"] != "passed" or out[nid] in ("failed", "skipped"):
                out[nid] = "failed" if "failed" in (r["outcome"], out[nid]) else "skipped"
            elif r["when"] == "teardown":
                out[nid] = "passed"  # setup and call passed (or their failure is kept above)
    return out


def collected(records: list[dict[str, Any]]) -> list[str]:
    """Every test any attempt collected, in order (an attempt deselects the settled ones)."""
    order: dict[str, None] = {}
    for r in records:
        if r.get("event") == "collected":
            order.update(dict.fromkeys(r["nodeids"]))
    return list(order)


def suite_command(ctx: Ctx, marker: str, junit: Path, settled: list[str]) -> list[str]:
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, "tests/gpu", "-rfE", "--junitxml", str(junit)]
    if ctx.gpus < 2:  # test_gpu_multi needs two GPUs: on one it is left out by name, not skipped
        args += ["--ignore", "tests/gpu/test_gpu_multi.py"]
    for nid in settled:
        args += ["--deselect", nid]
    return args


def _suite(ctx: Ctx, name: str, marker: str) -> str:
    """The tests of `marker` that have not passed (in any earlier run), attempt after attempt until each
    has an outcome in this run or the deadline stops it; a test cut by its hard time-out ends its attempt,
    and the next attempt goes on without it."""
    log = ctx.out / f"{name}.jsonl"
    env = {**ctx.env, "CITYSEG_REQUIRE_GPU": "1", "CITYSEG_TEST_TIMEOUT_S": str(TEST_TIMEOUT_S[name]),
           "CITYSEG_TEST_DEADLINE": f"{ctx.deadline - 5:.0f}", "CITYSEG_TEST_LOG": str(log)}  # fmt: skip
    passed_before = {t for t, o in outcomes(suite_records(log)).items() if o == "passed"}
    start = len(suite_records(log))

    def state() -> tuple[list[str], dict[str, str], list[str]]:
        records = suite_records(log)
        now = outcomes(records[start:])
        tests = collected(records)
        return tests, {**dict.fromkeys(passed_before, "passed"), **now}, [t for t in tests if t in passed_before or t in now]

    while True:
        tests, outcome, settled = state()
        if tests and len(settled) == len(tests):
            return _suite_result(tests, outcome)
        if ctx.left() < 15:
            raise Budget(_suite_summary(tests, outcome) + " (no time left for another test)")
        n_records = len(suite_records(log))
        junit = ctx.out / f"{name}-junit-{len(list(ctx.out.glob(f'{name}-junit-*.xml'))) + 1}.xml"
        rc = run_cmd(ctx, suite_command(ctx, marker, junit, settled), log=f"{name}.log", env=env)
        new = suite_records(log)[n_records:]
        if rc == 124 or any(r.get("event") == "deadline" for r in new):
            raise Budget(_suite_summary(*state()[:2]) + " (the deadline stopped it)")
        if rc == 5 and not state()[0]:
            return "no tests of this marker"
        if not any(r.get("event") == "report" for r in new):  # no progress: a collection error, say
            raise RuntimeError(f"pytest exited {rc} without running a test (see {name}.log)")


def _suite_summary(tests: list[str], outcome: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for t in tests:
        counts[outcome.get(t, "not run")] = counts.get(outcome.get(t, "not run"), 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test collected"


def _suite_result(tests: list[str], outcome: dict[str, str]) -> str:
    """'42 passed'; a failure (any outcome but passed: a skip, a cut) raises with the first names."""
    summary = _suite_summary(tests, outcome)
    bad = [t for t in tests if outcome.get(t) != "passed"]
    if bad:
        raise RuntimeError(f"{summary}: " + ", ".join(t.split("::")[-1] for t in bad[:6]))
    return summary


def step_suite(ctx: Ctx) -> str:
    return _suite(ctx, "suite", "gpu and not slow")


def step_suite_slow(ctx: Ctx) -> str:
    return _suite(ctx, "suite-slow", "gpu and slow")


def step_report(ctx: Ctx) -> str:
    rc = run_cmd(ctx, ["-m", "cityseg_fast", "report", str(ctx.out), "--out", str(ctx.out), "--title",
                       f"GPU session: {ctx.out.name}"], log="report.log")  # fmt: skip
    if rc:
        raise RuntimeError(f"cityseg report exited {rc}")
    return "REPORT.md, plots, results.csv"


STEPS = [
    Step("doctor", 60, "cityseg doctor --json: versions, the GPU, one batch of DALI's real graphs on CPU and GPU; "
         "fails without GPU decoding", step_doctor, sizing="a cold torch import, ~0.5 GB of DALI libraries, CUDA "
         "init and 4 pipeline builds (issue 21: 20 s did not fit)"),
    Step("data", 35, f"synthesize {TRAIN_FRAMES} + {VAL_FRAMES} frames at 1024x2048; prepare JPEG q95 with npy "
         "and with PNG labels", step_data, sizing="synth ~1.8 frames/s a core (16 cores: ~18 s), prepare "
         "~10 pairs/s a core (twice: ~7 s), three process starts"),
    Step("dali", sized(POINTS["dali"]), "DALI mixed decode-only and train, 1024x2048 JPEG -> 512x1024, batch 16, "
         "hw_decoder_load 0.75, 8 threads", _measuring("dali"), sizing="start-up + 2 loader points"),
    Step("torch-gpu", sized(POINTS["torch-gpu"]), "torch nvJPEG loader (batched torchvision.io decode_jpeg on "
         "the GPU + torch ops): decode-only and train, batch 16", _measuring("torch-gpu"), smoke=False,
         sizing="start-up + 2 loader points"),
    Step("torch-cpu", sized(POINTS["torch-cpu"]), "torch DataLoader, 16 CPU workers, torchvision.io decoder: "
         "decode-only and train, batch 16", _measuring("torch-cpu"), sizing="start-up + 2 loader points"),
    Step("model", sized(POINTS["model"]), "FCN-R50 bf16 channels_last train step alone at 512x1024 batch 16, "
         "eager and compiled, MFU", _measuring("model"), sizing="start-up + eager + compiled (cold cache)"),
    Step("e2e", sized([p for p in POINTS["e2e"] if p.scenario == "e2e"]), "end to end: each headline loader "
         "feeding the FCN-R50 eager train step", _measuring("e2e"), sizing="start-up + 3 e2e points (their "
         "loader and model companions are the headline rows)"),
    Step("sweeps", 35, "DALI batch 8, hw_decoder_load x threads, roi=resize, PNG labels; DALI on the CPU (+e2e); "
         "torch workers 8/4, PIL; nvJPEG batch 8; U-Net, fp16, tf32, NCHW", _measuring("sweeps"),
         sizing="what fits (start-up + the first ~3 points); a rerun or unused time measures the rest"),
    Step("suite", 55, 'pytest -m "gpu and not slow" tests/gpu, CITYSEG_REQUIRE_GPU=1, 120 s a test, junit XML',
         step_suite, smoke=False, sizing="its first files (~40 tests); unused time from the steps before "
         "and reruns finish it"),
    Step("suite-slow", 15, 'pytest -m "gpu and slow": compiled FCN-R50 train + resume, fp16 scale, '
         "max-autotune, compiled bench rows; 300 s a test", step_suite_slow, smoke=False,
         sizing="runs on unused time and reruns: no slow test fits a first run's own share"),
    Step("report", 10, "cityseg report OUT --out OUT; SESSION.md with the goals as measured", step_report,
         sizing="one process start, tables and plots of ~40 rows"),
]  # fmt: skip


# -- the session ------------------------------------------------------------------------------------


def out_dir(smoke: bool) -> Path:
    """reports/<gpu>-<date>: the GPU's name from NVML (no CUDA context in this process)."""
    from cityseg_fast.environment import nvml_gpus

    gpus, _ = ([], None) if smoke else nvml_gpus()
    name = gpus[0]["name"] if gpus else "cpu-smoke"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return ROOT / "reports" / f"{slug}-{dt.date.today().isoformat()}"


def budgets(total: float, smoke: bool = False) -> dict[str, float]:
    """Each step's budget, scaled down to fit `total` if the table's sum exceeds it (with --smoke, the toy
    steps get SMOKE_SLACK times theirs first)."""
    slack = SMOKE_SLACK if smoke else 1.0
    fixed = sum(s.budget_s * slack for s in STEPS)
    scale = min(1.0, total / fixed)
    return {s.name: s.budget_s * slack * scale for s in STEPS}


def _deadline(step: Step, plan: dict[str, float], todo: list[Step], t_end: float) -> float:
    """This step's budget plus what earlier steps left unused: the session's time left minus what the steps
    after it are owed (every step keeps its own budget)."""
    owed = sum(plan[s.name] for s in todo if s is not step)
    return time.time() + max(plan[step.name], t_end - time.time() - owed)


def _skip(step: Step, ctx: Ctx, only: set[str] | None, prev: dict[str, Any]) -> bool:
    if (ctx.smoke and not step.smoke) or (only and step.name not in only):
        return True
    # data and report always run: a fresh machine has no data yet (prepare resumes what is there)
    return prev.get("status") == "done" and step.name not in ("data", "report")


def run_session(ctx: Ctx, total_s: float, record_path: Path, only: set[str] | None = None) -> Record:
    record = Record.load(record_path)
    run = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "steps": []}
    record.runs.append(run)
    t_end, plan = time.time() + total_s, budgets(total_s, ctx.smoke)
    todo = [s for s in STEPS if not _skip(s, ctx, only, record.steps.get(s.name, {}))]
    for i, step in enumerate(todo):
        ctx.deadline = _deadline(step, plan, todo[i:], t_end)
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


def dry_run(total_s: float) -> int:
    plan = budgets(total_s)
    print(f"gpu_session: {len(STEPS)} steps, {sum(plan.values()):.0f} s of budgets in {total_s:.0f} s "
          "(resumable; rerun to continue)")  # fmt: skip
    for s in STEPS:
        print(f"  {s.name:10s} {plan[s.name]:5.0f} s  {s.what}\n  {'':10s} {'':7s}  sized: {s.sizing}")
    return 0


def session_env(args: argparse.Namespace, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    # compiled kernels survive between the steps' processes and into a rerun: nothing compiles twice
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "inductor-cache"))
    env.setdefault("TRITON_CACHE_DIR", str(work / "triton-cache"))
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the flow on the CPU, even on a GPU machine
        env["OMP_NUM_THREADS"] = "1"  # tiny ops on a shared CI machine: spinning OpenMP pools cost 10x
    return env


def run_child(ctx: Ctx, which: str, deadline: float | None) -> int:
    ctx.deadline = deadline or time.time() + 60
    try:
        print(f"gpu_session: {measure_points(ctx, points_for(which, ctx.smoke))}")
    except Budget as e:
        print(f"gpu_session: {e}")
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="report folder (default reports/<gpu>-<date>)")
    ap.add_argument("--work", default="/tmp/cityseg-gpu-session", help="scratch folder: data, compile caches")
    ap.add_argument("--budget-s", type=float, default=SESSION_S, help=f"the whole session's time (default {SESSION_S})")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and their budgets, run nothing")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: the flow, not the numbers")
    ap.add_argument("--tar", metavar="FILE", help="also pack the report folder into FILE (.tar.gz)")
    ap.add_argument("--only", metavar="STEP,...", help="run only these steps (e.g. dali,report)")
    ap.add_argument("--child", choices=sorted(POINTS), help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:
        return dry_run(args.budget_s)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else out_dir(args.smoke)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(out=out, work=work, smoke=args.smoke, env=session_env(args, work))
    if args.child:
        return run_child(ctx, args.child, args.deadline)
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {s.name for s in STEPS}
    if unknown:
        print(f"gpu_session: --only: no step {', '.join(sorted(unknown))} (steps: {', '.join(s.name for s in STEPS)})")
        return 2
    from cityseg_fast.environment import nvml_gpus

    ctx.gpus = 0 if args.smoke else len(nvml_gpus()[0])
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
