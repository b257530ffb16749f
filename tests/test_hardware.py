"""hardware: native vs emulated bf16 from planted /proc/cpuinfo text and CUDA compute capabilities; where
loader.device=auto puts the DALI loader."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cityseg_fast import hardware
from cityseg_fast.hardware import (
    bf16_support,
    bf16_support_why,
    cpu_bf16_from_cpuinfo,
    cuda_bf16_from_capability,
    loader_device,
)

_X86 = (
    "processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n"
)
_BASE = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2"
)
SPR = _X86.format(
    vendor="GenuineIntel",
    model="Intel(R) Xeon(R) Platinum 8480+",
    flags=_BASE + " avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8",
)
COOPER_LAKE = _X86.format(
    vendor="GenuineIntel",
    model="Intel(R) Xeon(R) Platinum 8380H",
    flags=_BASE + " avx512f avx512_vnni avx512_bf16",
)
EPYC_AVX2 = _X86.format(
    vendor="AuthenticAMD", model="AMD EPYC 7B12", flags=_BASE + " sha_ni clzero xsaveerptr"
)
SKYLAKE_AVX512 = _X86.format(vendor="GenuineIntel", model="Xeon Gold 6148", flags=_BASE + " avx512f avx512bw")
_ARM = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
GRAVITON3 = _ARM.format(
    features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve svebf16 i8mm bf16 dgh rng"
)
GRAVITON2 = _ARM.format(
    features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp ssbs"
)


@pytest.mark.parametrize(
    ("cpuinfo", "support", "why"),
    [
        (SPR, "native", "amx_bf16"),
        (COOPER_LAKE, "native", "avx512_bf16"),
        (EPYC_AVX2, "emulated", "no amx_bf16 / avx512_bf16"),
        (SKYLAKE_AVX512, "emulated", "no amx_bf16"),  # AVX-512 without its BF16 extension
        (GRAVITON3, "native", "feature bf16"),
        (GRAVITON2, "emulated", "no bf16"),
        (GRAVITON2.replace("ssbs", "svebf16"), "emulated", "no bf16"),  # SVE-BF16 alone is not the flag
        ("", "emulated", "unknown"),
    ],
)
def test_cpu_bf16_from_cpuinfo(cpuinfo, support, why):
    got, reason = cpu_bf16_from_cpuinfo(cpuinfo)
    assert got == support and why in reason


@pytest.mark.parametrize(
    ("cc", "support"),
    [((7, 0), "emulated"), ((7, 5), "emulated"), ((8, 0), "native"), ((8, 9), "native"), ((9, 0), "native")],
)
def test_cuda_bf16_from_capability(cc, support):
    got, why = cuda_bf16_from_capability(*cc)
    assert got == support and f"{cc[0]}.{cc[1]}" in why


def test_bf16_support_reads_this_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "_read_cpuinfo", lambda: SPR)
    assert bf16_support("cpu") == "native"
    monkeypatch.setattr(hardware, "_read_cpuinfo", lambda: EPYC_AVX2)
    assert bf16_support_why("cpu") == ("emulated", "no amx_bf16 / avx512_bf16 CPU flag")
    assert bf16_support("meta") == "emulated"  # a device type it knows nothing about


def test_collect_env_records_bf16_per_device(monkeypatch):
    from cityseg_fast import environment as env

    monkeypatch.setattr(hardware, "_read_cpuinfo", lambda: EPYC_AVX2)
    assert env.bf16_why([]) == {"cpu": ("emulated", "no amx_bf16 / avx512_bf16 CPU flag")}
    v100, h200 = {"compute_capability": "7.0"}, {"compute_capability": "9.0"}
    assert env.bf16_why([v100])["cuda"] == ("emulated", "compute capability 7.0 < 8.0")
    assert env.bf16_why([h200, v100])["cuda"][0] == "native"  # the first GPU, as collect_env's "gpu"
    monkeypatch.setattr(env, "nvml_gpus", lambda: ([{**h200, "name": "H200", "driver": "570"}], None))
    assert env.collect_env()["bf16"] == {"cpu": "emulated", "cuda": "native"}


# -- loader.device=auto: one rule, for the loader and for the point ids ------------------------------------


def test_loader_device_words():
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert loader_device("auto", cpu) == "cpu" and loader_device("auto", cuda) == "gpu"
    assert loader_device("cpu", cuda) == "cpu" and loader_device("gpu", cpu) == "gpu"  # an explicit word stays


@pytest.mark.parametrize("cuda", [False, True])
def test_auto_names_the_same_place_in_a_point_id_as_the_loader_picks(monkeypatch, cuda):
    """A sweep's parent names loader_device in the point id before any device exists; the point's process
    then builds its loader for resolve_device(): both must say the same, with a GPU and without."""
    import torch

    from cityseg_fast.config import load_config
    from cityseg_fast.data.factory import dali_device
    from cityseg_fast.results import point_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(hardware, "init_cuda", lambda device: None)  # no GPU needed to see which it would be
    cfg = load_config([], ["loader.backend=dali", "loader.device=auto"])
    picked = dali_device(cfg.loader.device, hardware.resolve_device())
    assert point_for("e2e", cfg)["loader_device"] == picked == ("gpu" if cuda else "cpu")


def test_a_point_id_creates_no_cuda_context():
    """The sweep's parent forks its points after naming them: a CUDA context made there would be inherited
    broken (and hold GPU memory for the whole sweep). Meaningful on a GPU machine; holds trivially without."""
    code = (
        "import torch; from cityseg_fast.config import load_config; from cityseg_fast.results import point_for; "
        "assert point_for('e2e', load_config([], ['loader.backend=dali']))['loader_device']; "
        "assert not torch.cuda.is_initialized()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_sets_read_and_written_as_the_tools_write_them():
    from cityseg_fast.hardware import cpu_list_text, cpus_from_mask

    # NVML's set for a GPU on the second socket of a 2 x 32-core machine: CPUs 32-63 and 96-127 (SMT siblings)
    words = [0xFFFFFFFF00000000, 0xFFFFFFFF00000000]
    assert cpus_from_mask(words) == list(range(32, 64)) + list(range(96, 128))
    assert cpu_list_text(cpus_from_mask(words)) == "32-63,96-127"
    assert cpu_list_text([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11" and cpu_list_text([]) == ""


def test_ranks_outside_their_gpus_cpu_set_are_named_once():
    from cityseg_fast.hardware import affinity_warning

    pinned = {"cpu_affinity": "0-31", "nvml_ideal_cpus": "0-31"}
    assert affinity_warning([{"rank": 0, **pinned}]) is None
    assert affinity_warning([{"rank": 0, "cpu_affinity": "0-1", "nvml_ideal_cpus": None}]) is None  # the CPU
    loose = [{"rank": r, "cpu_affinity": "0-127", "nvml_ideal_cpus": "0-31" if r < 4 else "32-63"} for r in range(8)]
    line = affinity_warning([{"rank": 8, **pinned}, *loose])
    assert line.startswith("8 of 9 rank(s) outside NVML's ideal CPU set")
    assert "rank 0 runs on CPUs 0-127, its GPU's are 0-31" in line and "and 4 more" in line and "\n" not in line
