"""Tiny learnable datasets in the raw Cityscapes layout and a trained-checkpoint cache for engine tests.

The scenes are street-like bands (sky, building, vegetation, sidewalk, road) with a car and an
ego-vehicle strip (labelId 1, ignored in evaluation), each class drawn in a noisy version of its
Cityscapes colour, so a small network learns them in a few dozen iterations on the CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cityseg_fast.bench.sweep_point import DIE_WITH_PARENT  # PR_SET_PDEATHSIG: the child stops when we die

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# labelId -> RGB (the Cityscapes colours)
SKY, BUILDING, VEGETATION, SIDEWALK, ROAD, CAR, EGO = 23, 11, 21, 8, 7, 26, 1
COLOURS = {
    SKY: (70, 130, 180),
    BUILDING: (70, 70, 70),
    VEGETATION: (107, 142, 35),
    SIDEWALK: (244, 35, 232),
    ROAD: (128, 64, 128),
    CAR: (0, 0, 142),
    EGO: (20, 20, 20),
}


def render(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 HxWx3, labelIds uint8 HxW) street-like frame."""
    lab = np.full((h, w), ROAD, np.uint8)
    horizon = int(h * rng.uniform(0.3, 0.45))
    side = int(h * rng.uniform(0.55, 0.65))
    lab[:side] = SIDEWALK
    lab[:horizon] = BUILDING
    sky = int(horizon * rng.uniform(0.3, 0.7))
    lab[:sky] = SKY
    x0 = int(w * rng.uniform(0, 0.6))
    lab[sky // 2 : horizon, x0 : x0 + w // 4] = VEGETATION
    cy, cx = int(h * rng.uniform(0.6, 0.75)), int(w * rng.uniform(0.1, 0.7))
    lab[cy : cy + h // 6, cx : cx + w // 5] = CAR
    lab[int(h * 0.92) :] = EGO
    img = np.zeros((h, w, 3), np.float32)
    for lid, c in COLOURS.items():
        img[lab == lid] = c
    img *= rng.uniform(0.8, 1.2)  # global brightness
    img += rng.normal(0, 12, img.shape)
    return img.clip(0, 255).astype(np.uint8), lab


def write_tiny_cityscapes(
    root: Path, splits: dict[str, int] | None = None, size: tuple[int, int] = (64, 128), seed: int = 0
) -> Path:
    """ROOT/leftImg8bit/{split}/{city}/..._leftImg8bit.png + ROOT/gtFine/{split}/{city}/..._gtFine_labelIds.png"""
    splits = splits if splits is not None else {"train": 8, "val": 4}
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for i in range(n):
            city = ("aachen", "bochum")[i % 2]
            stem = f"{city}_{i:06d}_{19:06d}"
            img, lab = render(rng, *size)
            idir, gdir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            idir.mkdir(parents=True, exist_ok=True)
            gdir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(idir / f"{stem}_leftImg8bit.png")
            Image.fromarray(lab, mode="L").save(gdir / f"{stem}_gtFine_labelIds.png")
    return root


def tiny_overrides(data: Path, out: Path, iters: int = 30, **extra: object) -> list[str]:
    """Config overrides for a tiny, fast CPU run (U-Net width 8 on 64x128 crops, torch loader in-process)."""
    values: dict[str, object] = {
        "data.root": str(data),
        "data.crop": "[64,128]",
        "data.scale_range": "[0.75,1.25]",
        "loader.backend": "torch",
        "loader.num_workers": 0,
        "loader.batch_size": 4,
        "loader.eval_batch_size": 2,
        "model.name": "unet",
        "model.base_width": 8,
        "train.out_dir": str(out),
        "train.iters": iters,
        "train.log_interval": 5,
        "train.eval_interval": iters,
        "train.ckpt_interval": 10,
        "train.optimizer": "adamw",
        "train.lr": 0.03,
        "train.weight_decay": 0.0,
        "train.min_lr": 0.0,
        "train.warmup_iters": 0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"  # see conftest.one_thread(); torchrun ranks share the cores
    for k in ("PYTEST_CURRENT_TEST", "PYTEST_VERSION"):
        e.pop(k, None)
    return e


def _start(cmd: list[str]) -> subprocess.Popen:
    """Start `cmd` from the repo root with the test environment, both streams captured, in a process group
    of its own (its workers, torchrun's ranks and DALI's processes with it: `_kill_group` stops them all),
    and told to stop when the test process dies (so a killed pytest leaves no child on the GPU)."""
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=DIE_WITH_PARENT,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it leads it: start_new_session), then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _finish(proc: subprocess.Popen, timeout: float, check: bool) -> subprocess.CompletedProcess:
    """Wait for `proc`; a timeout or (with check) a non-zero exit fails the test with both streams' tails.
    On a timeout, or anything else that ends the wait (the suite's per-test time limit), the child's
    whole process group is killed: no worker of it keeps running into the next test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args[2]} timed out\nstdout:\n{out}\nstderr:\n{err}") from None
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def _run(cmd: list[str], timeout: float, check: bool) -> subprocess.CompletedProcess:
    """Run `cmd` to the end (see _start and _finish)."""
    return _finish(_start(cmd), timeout, check)


def run_cli(*args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m cityseg_fast ARGS` in a subprocess (for torchrun and kill tests)."""
    return _run([PY, "-m", "cityseg_fast", *args], timeout, check)


def kill_after_first_row(results: Path, *args: str, timeout: float = 180) -> None:
    """Start `python -m cityseg_fast ARGS` and SIGKILL it once `results` holds a row (or after `timeout`):
    no chance to clean up, the worst case for a resumable command."""
    proc = subprocess.Popen(
        [PY, "-m", "cityseg_fast", *args], cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while time.time() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def child_pids(pid: int, marker: bytes = b"") -> list[int]:
    """The child processes of `pid` whose command line holds `marker` (from /proc: Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])  # the field after the name
            if ppid == pid and marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # a process that just ended
            continue
    return found


TORCHRUN = [PY, "-m", "torch.distributed.run"]


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m cityseg_fast ARGS` (--standalone: a free port, no hang)."""
    cmd = [*TORCHRUN, f"--nproc_per_node={nproc}", "--standalone", "-m", "cityseg_fast"]
    return _run([*cmd, *args], timeout, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_nodes(nnodes: int, *args: str, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`nnodes` torchrun launchers on this machine, one process each, started as on `nnodes` hosts:
    `--nnodes=N --node_rank=i`, the static rendezvous at master 127.0.0.1 on a free port (node 0 hosts it,
    so node 0 holds rank 0). Each node's result, in node order."""
    port = free_port()
    launch = [f"--nnodes={nnodes}", "--nproc_per_node=1", "--master-addr=127.0.0.1", f"--master-port={port}"]
    cmds = [[*TORCHRUN, *launch, f"--node_rank={i}", "-m", "cityseg_fast", *args] for i in range(nnodes)]
    procs = [_start(cmd) for cmd in cmds]
    try:
        return [_finish(p, timeout, check=True) for p in procs]
    finally:
        for p in procs:  # a node that failed leaves the others waiting for it
            if p.poll() is None:
                _kill_group(p)
                p.communicate()


def trained_run(base: Path) -> tuple[Path, Path]:
    """(data root, run dir) of a tiny U-Net trained once per test session (cached under `base`)."""
    from cityseg_fast.cli import main

    data, out = base / "tiny_data", base / "tiny_run"
    done = out / "DONE"
    if not done.exists():
        write_tiny_cityscapes(data)
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # module-scoped callers run before the one_thread fixture
        try:
            assert main(["train", *tiny_overrides(data, out, iters=30)]) == 0
        finally:
            torch.set_num_threads(before)
        done.write_text("ok")
    return data, out


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Turn a hang into a test failure: SIGALRM interrupts whatever the main thread waits on (a pool's
    workers, a loader's next batch) with a TimeoutError after `seconds`."""

    def boom(*_):
        raise TimeoutError(f"no answer within {seconds} s: it hangs")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
