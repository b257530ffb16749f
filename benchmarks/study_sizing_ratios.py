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

A setting named NAME@avx2 runs with oneDNN and ATen capped to AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY):
on a CPU with native bf16, what a CPU without it does (bf16 emulated), measured beside the native settings.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", type=int, nargs="?", default=3, help="rounds over every setting (default 3)")
    ap.add_argument("--study", choices=list(STUDIES), default="cpu_synth", help="whose settings (default cpu_synth)")
    ap.add_argument("--only", action="append", help="measure only these settings (names: the script's tables)")
    ap.add_argument("--out", help="default: reports/<the study's folder>/sizing/ratios.jsonl")
    args = ap.parse_args(argv)
    table, folder = STUDIES[args.study]
    args.out = args.out or str(ROOT / "reports" / folder / "sizing" / "ratios.jsonl")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    points = {k: v for k, v in table.items() if not args.only or k in args.only}
    with open(args.out, "a") as out:
        for rnd in range(args.rounds):
            for name, over in points.items():
                out.write(json.dumps(measure(name, over, rnd)) + "\n")
                out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
