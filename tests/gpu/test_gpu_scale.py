"""At scale, on a GPU: the allocator snapshot of a point (bench.memory_snapshot) and at an out-of-memory, with
NVML's used memory beside it; NVJPG utilisation in DALI loader rows where the GPU has the engines; NVML's ideal
CPU set for the device; the gradient all-reduce clock's CUDA events under NCCL (2 GPUs)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from engine_fixtures import PY, _run, run_cli

from cityseg_fast.hardware import cpu_affinity, nvml_ideal_cpus

pytestmark = pytest.mark.gpu
SMALL = ["model.name=unet_s16", "model.base_width=16", "data.crop=[128,256]", "loader.batch_size=4",
         "bench.iters=5", "bench.warmup=2"]  # fmt: skip


def _row(p) -> dict:
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def test_a_memory_snapshot_of_one_step_beside_the_row(tmp_path):
    p = run_cli("bench", "model", *SMALL, "bench.memory_snapshot=true", f"bench.trace_dir={tmp_path}", "--json",
                timeout=600)  # fmt: skip
    m = _row(p)["metrics"]
    with open(m["memory_snapshot"], "rb") as f:
        snap = pickle.load(f)  # what pytorch.org/memory_viz reads
    assert snap["segments"] and any(snap["device_traces"])  # the allocator's blocks and the step's history
    assert m["memory_snapshot_nvml_used_mib"] >= m["memory_snapshot_torch_reserved_mib"] > 0  # NVML sees more


def test_an_out_of_memory_row_names_its_snapshot(tmp_path):
    free, _ = torch.cuda.mem_get_info()
    side = int((free / 4 / 3 / 8) ** 0.5) * 2  # a batch of 8 frames this size cannot fit with activations
    p = run_cli("bench", "model", "model.name=unet_s16", f"data.crop=[{side},{side}]", "loader.batch_size=8",
                "bench.memory_snapshot=true", f"bench.trace_dir={tmp_path}", "--json", timeout=600, check=False)  # fmt: skip
    row = _row(p)
    assert p.returncode == 3 and row["status"] == "oom"
    with open(row["metrics"]["memory_snapshot"], "rb") as f:
        assert pickle.load(f)["segments"]  # the allocator's state when it gave up
    assert row["metrics"]["memory_snapshot_nvml_used_mib"] > 0


def test_dali_loader_rows_sample_the_jpeg_decoder_engines(datasets):
    cfg_args = ["--data", str(datasets["png"]), "--loader", "dali", "--device", "gpu", "--crop", "128x256",
                "--batch-size", "4", "--iters", "20", "--warmup", "3", "loader.hw_decoder_load=1.0",
                "bench.sample_interval_s=0.01"]  # fmt: skip
    m = _row(run_cli("bench", "loader", *cfg_args, "--json", timeout=600))["metrics"]
    assert m["gpu_util"] is not None
    name = torch.cuda.get_device_name()
    if any(g in name for g in ("A100", "H100", "H200", "H20", "B200")):  # GPUs with NVJPG engines
        assert m["gpu_jpg_util"] is not None and 0 <= m["gpu_jpg_util"] <= 1


def test_nvml_names_an_ideal_cpu_set_for_the_device(cuda):
    ideal = nvml_ideal_cpus(cuda)
    assert ideal and set(ideal) <= set(range(os.cpu_count() or 1))
    assert set(cpu_affinity()) & set(ideal)  # this process may run on some of them


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more GPUs")
def test_nccl_rank_figures_from_cuda_events():
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cityseg_fast",
           "bench", "model", "--json", *SMALL, "precision.dtype=bf16"]  # fmt: skip
    m = _row(_run(cmd, timeout=600, check=True))["metrics"]
    assert len(m["rank_allreduce_wait_s"]) == 2 and all(w >= 0 for w in m["rank_allreduce_wait_s"])
    assert all(c > 0 for c in m["rank_compute_s"]) and m["slowest_rank"] in (0, 1)

