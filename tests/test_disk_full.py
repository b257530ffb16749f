"""A full disk (ENOSPC, EDQUOT) in synth, prepare, a checkpoint, a results row and report: one line naming
the path, exit 2, no temporary file, every finished file intact, and a rerun after space is freed continues.

Two ways to fill a disk: a real 600 KB tmpfs (root only: skipped with the reason where mounting is not
allowed), and an injected writer that fails with ENOSPC after writing part of its file (runs everywhere)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from engine_fixtures import run_cli, tiny_overrides, write_tiny_cityscapes
from PIL import Image

from cityseg_fast import diskio
from cityseg_fast.cli import main
from cityseg_fast.data.prepare import prepare_dataset
from cityseg_fast.data.synthetic import write_synthetic
from cityseg_fast.engine import checkpoint as ck
from cityseg_fast.errors import UserError
from cityseg_fast.results import append_row, read_rows

FIXTURE = Path(__file__).parent / "fixtures" / "results_fixture.jsonl"
FRAME = (256, 512)  # a prepared pair is ~190 KB: a 600 KB disk holds a few


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp*")]


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(f"cityseg {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _disk_full(code: int = errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a 600 KB tmpfs (needs root), unmounted after the test; `grow(d)` frees space."""
    d = tmp_path / "disk"
    d.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(d)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: a full disk is tested with the injected writer only")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): injected writer only")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def grow(d: Path) -> None:
    """Free space: the tmpfs grows to 64 MB, its files kept."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(d)], check=True)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    write_synthetic(root, train=6, val=0, test=0, size=FRAME, seed=2, workers=1, progress=False)
    return root


def _fail_after(n_ok: int, real, code: int = errno.ENOSPC):
    """A stand-in for a writer `real(obj, path, ...)`: its first `n_ok` calls write, the next ones leave part
    of the file and raise what a full disk raises."""
    calls = []

    def write(obj, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) <= n_ok:
            return real(obj, fp, *args, **kwargs)
        Path(fp).write_bytes(b"the first blocks")
        raise _disk_full(code)

    return write


# ---- prepare ---------------------------------------------------------------------------------------


def test_prepare_on_a_full_tmpfs_is_one_line_and_a_rerun_continues(src, tmp_path, small_disk):
    ref = tmp_path / "ref"
    prepare_dataset(src, ref, splits=("train",), workers=1, progress=False)
    out = small_disk / "out"
    args = ["prepare", "--src", str(src), "--out", str(out), "--splits", "train", "--workers", "2", "--no-progress"]
    p = run_cli(*args, check=False, timeout=120)
    assert p.returncode == 2
    line = _one_error_line(p.stderr, "prepare")
    assert "the disk is full" in line and str(out) in line
    assert not _temps(out)
    finished = _files(out)
    assert finished and all(content == _files(ref)[name] for name, content in finished.items())
    assert "manifest.json" not in finished
    grow(small_disk)
    summary = json.loads(run_cli(*args, "--json", timeout=120).stdout)
    assert summary["skipped"] >= 1  # the finished pairs were kept, not written again
    assert _files(out) == _files(ref)


def test_prepare_with_an_injected_full_disk(src, tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    prepare_dataset(src, ref, splits=("train",), workers=1, progress=False, label_format="png")
    out = tmp_path / "out"
    args = ["prepare", "--src", str(src), "--out", str(out), "--splits", "train", "--workers", "1",
            "--no-progress", "--label-format", "png"]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", _fail_after(5, Image.Image.save))  # 2 pairs and a label
        assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err, "prepare")
    assert "the disk is full" in line and str(out / "train" / "images") in line
    assert not _temps(out)
    assert len(_files(out)) == 1 + 5  # .prepare.json and what was finished, all intact
    assert all(content == _files(ref)[name] for name, content in _files(out).items())
    assert main(args) == 0
    assert _files(out) == _files(ref)


# ---- synth -----------------------------------------------------------------------------------------


def test_synth_on_a_full_tmpfs_is_one_line_and_a_rerun_completes(tmp_path, small_disk):
    out = small_disk / "synth"
    args = ["synth", "--out", str(out), "--train", "4", "--val", "0", "--test", "0", "--size", "256x512",
            "--seed", "2", "--no-progress"]  # fmt: skip
    p = run_cli(*args, "--workers", "2", check=False, timeout=120)
    assert p.returncode == 2
    line = _one_error_line(p.stderr, "synth")
    assert "the disk is full" in line and str(out) in line and ".png" in line
    assert not _temps(out)
    grow(small_disk)
    run_cli(*args, "--workers", "2", timeout=120)  # synth renders deterministically: a rerun writes the rest
    write_synthetic(tmp_path / "ref", train=4, val=0, test=0, size=FRAME, seed=2, workers=1, progress=False)
    assert _files(out) == _files(tmp_path / "ref")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota is exceeded")])
def test_synth_with_an_injected_full_disk_or_quota(tmp_path, monkeypatch, capsys, code, words):
    ref, out = tmp_path / "ref", tmp_path / "out"
    write_synthetic(ref, train=3, val=0, test=0, size=(64, 128), seed=4, workers=1, progress=False)
    args = ["synth", "--out", str(out), "--train", "3", "--val", "0", "--test", "0", "--size", "64x128",
            "--seed", "4", "--workers", "1", "--no-progress"]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", _fail_after(6, Image.Image.save, code))  # a frame and a half
        assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err, "synth")
    assert words in line and str(out) in line
    assert not _temps(out)
    assert len(_files(out)) == 6 and all(content == _files(ref)[name] for name, content in _files(out).items())
    assert main(args) == 0
    assert _files(out) == _files(ref)


# ---- checkpoints -----------------------------------------------------------------------------------


def _ckpt(iteration: int) -> dict:
    # 360 KB of weights: one fits on the 600 KB disk, two do not
    return {"format": ck.FORMAT, "iteration": iteration, "model": {"w": torch.full((90_000,), float(iteration))},
            "config": {}}  # fmt: skip


def test_checkpoint_on_a_full_tmpfs_keeps_the_previous_one(small_disk):
    ck.save_checkpoint(_ckpt(1), small_disk, keep=1)
    with pytest.raises(UserError) as e:
        ck.save_checkpoint(_ckpt(2), small_disk, keep=1)
    msg = str(e.value)
    assert str(small_disk / "ckpt_00000002.pt") in msg and "the disk is full" in msg and "\n" not in msg
    assert [p.name for p in small_disk.iterdir()] == ["ckpt_00000001.pt"]  # no temporary file
    assert ck.load_checkpoint(small_disk / "ckpt_00000001.pt")["iteration"] == 1
    grow(small_disk)
    ck.save_checkpoint(_ckpt(2), small_disk, keep=1)
    assert [p.name for p in small_disk.iterdir()] == ["ckpt_00000002.pt"]


def _torch_save_on_a_full_disk(obj, f, *args, **kwargs):
    """What torch.save does on a full disk: part of the file, then a RuntimeError raised while the
    write's OSError is handled (`[enforce fail at inline_container.cc:672] . unexpected pos`)."""
    f.write(b"PK\x03\x04 the first blocks")
    try:
        raise _disk_full()
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


@pytest.mark.usefixtures("one_thread")
def test_train_with_an_injected_full_disk_at_a_checkpoint_then_resumes(tmp_path, monkeypatch, capsys):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=20, **{"train.ckpt_interval": 10, "train.eval_interval": 20})
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(obj["iteration"])
        return (real_save if len(calls) == 1 else _torch_save_on_a_full_disk)(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        assert main(["train", *over]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert str(out / "ckpt_00000020.pt") in line and "the disk is full" in line
    assert sorted(p.name for p in out.glob("*ckpt*")) == ["ckpt_00000010.pt"]  # no .ckpt_*.tmpN
    assert ck.load_checkpoint(out / "ckpt_00000010.pt")["iteration"] == 10
    assert main(["train", *over]) == 0  # space freed: resumes from iteration 10
    assert "resuming from" in capsys.readouterr().err
    assert [p.name for p in ck.list_checkpoints(out)] == ["ckpt_00000010.pt", "ckpt_00000020.pt"]


# ---- a results row and report ------------------------------------------------------------------------


class _NearlyFullOs:
    """diskio's `os`, whose write() stores part of the bytes and then fails as a full disk does."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        self.calls += 1
        if self.calls == 1:
            return os.write(fd, data[:40])
        raise _disk_full()


def test_a_row_on_a_full_disk_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    first, second = list(read_rows(FIXTURE))[:2]
    path = tmp_path / "results.jsonl"
    append_row(path, first)
    before = path.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(diskio, "os", _NearlyFullOs())
        with pytest.raises(UserError) as e:
            append_row(path, second)
    assert str(e.value) == f"{path}: cannot write, the disk is full (No space left on device); free space and rerun"
    assert path.read_bytes() == before  # no torn row
    append_row(path, second)  # space freed
    assert [r.point_id for r in read_rows(path)] == [first.point_id, second.point_id]


def _write_text_on_a_full_disk(path: Path, text: str, *args, **kwargs) -> int:
    path.write_bytes(text.encode()[:100])
    raise _disk_full()


@pytest.mark.parametrize("target", ["png", "REPORT.md"])
def test_report_with_an_injected_full_disk(tmp_path, monkeypatch, capsys, target):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / "results.jsonl")
    out = tmp_path / "report"
    with monkeypatch.context() as m:
        if target == "png":
            from matplotlib.figure import Figure

            m.setattr(Figure, "savefig", _fail_after(1, Figure.savefig))
        else:
            m.setattr(Path, "write_text", _write_text_on_a_full_disk)
        assert main(["report", str(run), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "report")
    path = line.removeprefix("cityseg report: error: ").split(": cannot write")[0]
    assert "the disk is full" in line and Path(path).parent == out and path.endswith(target[-3:])
    assert not _temps(out)
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert (out / "REPORT.md").read_text().startswith("#")


# ---- the helper ----------------------------------------------------------------------------------


def test_atomic_path_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(UserError, match="x.txt: cannot write, the disk is full"), diskio.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise _disk_full()
    assert path.read_text() == "old" and not _temps(tmp_path)
    with pytest.raises(KeyError), diskio.atomic_path(path) as tmp:  # any other error: raised as it is
        tmp.write_text("half")
        raise KeyError("a bug")
    assert path.read_text() == "old" and not _temps(tmp_path)
    with diskio.atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and not _temps(tmp_path)


def test_a_full_disk_left_unnamed_is_still_one_line(tmp_path, monkeypatch, capsys):
    # A write outside the helpers (a metrics.jsonl append): the CLI's fallback still gives one line.
    import cityseg_fast.commands.synth as synth_command

    def full(*args, **kwargs):
        raise _disk_full()

    monkeypatch.setattr(synth_command, "write_synthetic", full)
    assert main(["synth", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert _one_error_line(capsys.readouterr().err, "synth").endswith(
        "cannot write, the disk is full (No space left on device); free space and rerun"
    )
