"""Sizing a CPU study (configs/studies/cpu_synth.yaml, precision_cpu.yaml): the train-step throughput of each
of its settings relative to the reference (a one-off measurement, kept so that the study's time estimate can
be checked and redone).

Each setting runs `cityseg bench model` (engine.step.train_step on synthetic batches at its crop and batch)
in turn, round-robin, so that all of them share the same background load; one intra-op thread, so that a
loaded machine's spinning OpenMP threads do not distort the ratios (reports/cpu-models/). One record per
measurement (with the load average when it started) is appended to the study's sizing/ratios.jsonl:
    PYTHONPATH=$PWD python benchmarks/study_sizing_ratios.py 3      # 3 rounds; ~25 min on 2 busy cores
    PYTHONPATH=$PWD python benchmarks/study_sizing_ratios.py 1 --only ref --out /tmp/ratios.jsonl   # one point
    PYTHONPATH=$PWD python benchmarks/study_sizing_ratios.py 3 --study precision_cpu  # -> reports/cpu-precision/
    PYTHONPATH=$PWD python benchmarks/study_sizing_ratios.py 5 --study precision_cpu --paired 4 --only ref --only bf16

A setting named NAME@avx2 runs with oneDNN and ATen capped to AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY):
on a CPU with native bf16, what a CPU without it does (bf16 emulated), measured beside the native settings.
--paired times the settings in one process, in short bursts back to back (robust to a shared machine's
drifting load); the caps are read when a process starts, so the @avx2 settings are paired in a process of
their own: `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ... --paired 3 --only ref@avx2 --only bf16@avx2`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "train" / "unet_cpu_synth.yaml"  # cpu_synth.yaml's base recipe
FCN = ["model.name=fcn8s_vgg16_bn", "model.base_width=8"]
POINTS = {  # cpu_synth.yaml's settings whose step cost differs (lr and image format do not change it)
    "ref": [], "transposed": ["model.upsample=transposed"], "depth3": ["model.depth=3"],
    "w8": ["model.base_width=8"], "fcn32s": ["model.name=fcn32s_vgg16_bn", "model.base_width=8"],
    "fcn16s": ["model.name=fcn16s_vgg16_bn", "model.base_width=8"], "fcn8s": FCN,
    "bs4": ["loader.batch_size=4"], "bs16": ["loader.batch_size=16"],
    "crop32": ["data.crop=[32,64]"], "crop96": ["data.crop=[96,192]"],
    "fcn8s_crop32": FCN + ["data.crop=[32,64]"], "fcn8s_crop96": FCN + ["data.crop=[96,192]"],
}  # fmt: skip
# precision_cpu.yaml's settings (its header has the sum): each precision of its two models, the speed axes'
# settings (compile's first step is timed apart: first_step_s), and the same precisions with bf16 emulated.
BF16, FP16 = ["precision.dtype=bf16"], ["precision.dtype=fp16"]
PRECISION = {
    "ref": [], "bf16": BF16, "fp16": FP16, "fcn8s": FCN, "fcn8s_bf16": FCN + BF16, "nchw": ["precision.channels_last=false"],
    "compiled": ["precision.compile=default"], "ref@avx2": [], "bf16@avx2": BF16, "fcn8s@avx2": FCN,
    "fcn8s_bf16@avx2": FCN + BF16,
}  # fmt: skip
STUDIES = {"cpu_synth": (POINTS, "cpu-study"), "precision_cpu": (PRECISION, "cpu-precision")}
CAPPED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # NAME@avx2: no native bf16


def measure(name: str, over: list[str], rnd: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(CAPPED if name.endswith("@avx2") else {})}
    cmd = [sys.executable, "-m", "cityseg_fast", "bench", "model", "--config", str(CFG), *over,
           "bench.iters=5", "bench.warmup=2", "--json"]  # fmt: skip
    load, t0 = open("/proc/loadavg").read().split()[0], time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    rec = {"round": rnd, "name": name, "load": load, "wall": round(time.time() - t0, 1)}
    try:
        row = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {**rec, "error": p.stderr[-300:]}
    m = row["metrics"]
    return {**rec, "ips": m["images_per_s"], "p50_ms": m["latency_ms_p50"], "bs": row["point"]["batch_size"],
            "train_gflop": (m.get("train_flops_per_image") or 0) / 1e9, "first_step_s": m.get("first_step_s"),
            "infer_ips": m.get("infer_images_per_s")}  # fmt: skip


def paired(points: dict[str, list[str]], rounds: int, steps: int) -> list[dict]:
    """--paired: in this one process, each setting's train step (engine.step) built once on a synthetic batch,
    then `rounds` rounds of `steps` timed steps per setting back to back: a ratio compares bursts seconds
    apart, where separate processes minutes apart saw a shared machine's load move 2.5 -> 6.5 in between."""
    import torch

    from cityseg_fast.config import load_config
    from cityseg_fast.data.batch import Batch, to_layout
    from cityseg_fast.engine.step import build_train_state, train_step

    torch.set_num_threads(1)  # as the subprocess mode's OMP_NUM_THREADS=1
    steps_of, isa = {}, torch.backends.cpu.get_cpu_capability()
    for name, over in points.items():
        cfg = load_config([CFG], over)
        n, (h, w) = cfg.loader.batch_size, cfg.data.crop
        batch = Batch(to_layout(torch.randn(n, 3, h, w), cfg.precision.channels_last), torch.randint(0, 19, (n, h, w)))
        state = build_train_state(cfg, "cpu")
        t0 = time.perf_counter()
        train_step(state, batch)  # the first step: compilation, if any, and lazy init
        steps_of[name] = (state, batch, n, time.perf_counter() - t0)
    out = []
    for rnd in range(rounds):
        for name, (state, batch, n, first) in steps_of.items():
            load, t0 = open("/proc/loadavg").read().split()[0], time.perf_counter()
            for _ in range(steps):
                train_step(state, batch)
            ips = steps * n / (time.perf_counter() - t0)
            out.append({"mode": "paired", "round": rnd, "name": name, "isa": isa, "load": load, "ips": ips,
                        "first_step_s": first})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", type=int, nargs="?", default=3, help="rounds over every setting (default 3)")
    ap.add_argument("--study", choices=list(STUDIES), default="cpu_synth", help="whose settings (default cpu_synth)")
    ap.add_argument("--only", action="append", help="measure only these settings (names: the script's tables)")
    ap.add_argument("--out", help="default: reports/<the study's folder>/sizing/ratios.jsonl")
    ap.add_argument("--paired", type=int, metavar="STEPS", help="time STEPS steps per setting per round in this one "
                    "process (the settings without @avx2; run it again under the @avx2 caps for those)")  # fmt: skip
    args = ap.parse_args(argv)
    table, folder = STUDIES[args.study]
    args.out = args.out or str(ROOT / "reports" / folder / "sizing" / "ratios.jsonl")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    points = {k: v for k, v in table.items() if not args.only or k in args.only}
    if args.paired:
        with open(args.out, "a") as out:
            for rec in paired({k.removesuffix("@avx2"): v for k, v in points.items()}, args.rounds, args.paired):
                out.write(json.dumps(rec) + "\n")
        return 0
    with open(args.out, "a") as out:
        for rnd in range(args.rounds):
            for name, over in points.items():
                out.write(json.dumps(measure(name, over, rnd)) + "\n")
                out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
