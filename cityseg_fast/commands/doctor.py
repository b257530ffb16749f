"""Report what this machine has and what cityseg_fast can do on it.

Versions (Python, torch, torchvision, DALI, CUDA), the CPU, each GPU via NVML, whether one batch of
the DALI loader's real train and eval graphs runs on the CPU and (with a GPU) through the `mixed`
decoder, the nvJPEG it loaded and whether the hardware JPEG decoder is there, whether bf16 is native or
emulated (slow) on the CPU and the GPU, whether torch.compile can work (a C++ compiler), and which
distributed backends are available. A missing GPU or DALI is reported, never a crash.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from cityseg_fast import jsonsafe
from cityseg_fast.environment import bf16_why, collect_env, compiler, nvml_gpus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _yes(v: bool) -> str:
    return "[green]yes[/]" if v else "[red]no[/]"


def _graphs(g: dict | None) -> str:
    """'train yes, eval yes' for one batch of each real graph."""
    if not g:
        return _yes(False)
    return ", ".join(f"{mode} graph {_yes(bool(g.get(mode)))}" for mode in ("train", "eval"))


def _nvjpeg(d: dict) -> str:
    """'13.0.2, hardware decoder yes (7 engines)', or why there is none ('no GPU', a CPU fallback)."""
    if not d.get("nvjpeg_version"):
        return f"[red]none[/] ({d.get('gpu_decode_note') or 'not loaded'})"
    engines = d.get("hw_decoder_engines")
    hw = _yes(bool(d.get("hw_decoder"))) + (f" ({engines} engines)" if engines else "")
    note = f" ({d['gpu_decode_note']})" if d.get("gpu_decode_note") else ""
    return f"{d['nvjpeg_version']}, hardware decoder {hw}{note}"


def _bf16(info: dict) -> str:
    """'CPU emulated (no ... flag), GPU 0 native (compute capability 9.0)'."""
    names = {"cpu": "CPU", "cuda": "GPU 0"}
    parts = []
    for dev, support in info["bf16"].items():
        colour = "green" if support == "native" else "yellow"
        parts.append(f"{names[dev]} [{colour}]{support}[/] ({info['bf16_why'][dev]})")
    return ", ".join(parts)


def distributed_backends() -> dict[str, bool]:
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return {"gloo": False, "nccl": False}
    # NCCL needs both the build and a visible GPU.
    return {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available() and torch.cuda.is_available()}


def doctor_report() -> dict[str, Any]:
    """Everything `cityseg doctor` shows: collect_env() plus GPUs in detail and capability probes."""
    from cityseg_fast.data.dali import probe

    env = collect_env()
    gpus, nvml_error = nvml_gpus()
    cxx = compiler()
    return {
        **env,
        "gpus": gpus,
        "nvml_error": nvml_error,
        "bf16_why": {dev: why for dev, (_, why) in bf16_why(gpus).items()},
        "dali_probe": probe(),
        "compile": {"cxx": cxx, "possible": cxx is not None or env["cuda_available"]},
        "distributed": distributed_backends(),
    }


def run(args: argparse.Namespace) -> int:
    info = doctor_report()
    if args.json:
        print(jsonsafe.dumps(info, sort_keys=True))
        return 0

    t = Table(title="cityseg doctor", show_header=True, header_style="bold")
    t.add_column("item")
    t.add_column("value")
    t.add_row("Python", info["python"])
    t.add_row("torch / torchvision", f"{info['torch']} / {info['torchvision']}")
    t.add_row("CUDA (torch build)", str(info["cuda_runtime"] or "none (CPU build)"))
    t.add_row("CUDA available", _yes(info["cuda_available"]))
    t.add_row("CPU", f"{info['cpu']} ({info['cpu_cores']} cores usable)")
    if info["gpus"]:
        for g in info["gpus"]:
            t.add_row(
                f"GPU {g['index']}",
                f"{g['name']}, {g['memory_total_mib']} MiB, driver {g['driver']}, sm {g['compute_capability']}",
            )
    else:
        t.add_row("GPU", f"none ({info['nvml_error'] or 'NVML reports no devices'})")
    t.add_row("bf16", _bf16(info))
    d = info["dali_probe"]
    t.add_row("DALI", d["version"] or "[red]not installed[/]")
    t.add_row("DALI CPU pipeline", _graphs(d.get("cpu_graphs")))
    gpu = _graphs(d.get("gpu_graphs")) if info["cuda_available"] else _yes(False) + " (no GPU)"
    t.add_row("DALI GPU (mixed) decode", gpu)
    t.add_row("DALI's nvJPEG", _nvjpeg(d))
    if d["error"]:
        t.add_row("DALI note", d["error"])
    c = info["compile"]
    t.add_row("torch.compile", _yes(c["possible"]) + (f" (C++: {c['cxx']})" if c["cxx"] else " (no C++ compiler)"))
    t.add_row("distributed", ", ".join(f"{k}: {_yes(v)}" for k, v in info["distributed"].items()))
    t.add_row("git commit", str(info["git_commit"]))
    Console().print(t)
    return 0
