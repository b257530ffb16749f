"""`prepare`: exact trainIds, decodable JPEGs at the requested size, clear errors, crash-safe reruns."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg_fast import labels as L
from cityseg_fast.cli import main
from cityseg_fast.data.cityscapes import find_samples, read_label, read_manifest, validate_samples
from cityseg_fast.data.prepare import prepare_dataset
from cityseg_fast.data.synthetic import write_synthetic
from cityseg_fast.errors import EXIT_PREEMPTED, UserError

SIZE = (64, 128)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    write_synthetic(root, train=4, val=2, test=0, size=SIZE, seed=3, workers=1, progress=False)
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_ids_equal_the_official_mapping_at_every_pixel(src, tmp_path):
    out = tmp_path / "out"
    summary = prepare_dataset(src, out, image_format="png", workers=1, progress=False, label_format="png")
    assert summary["written"] == 6 and summary["skipped"] == 0
    for split in ("train", "val"):
        raw, prep = find_samples(src, split), find_samples(out, split)
        assert [s.stem for s in raw] == [s.stem for s in prep]
        for r, p in zip(raw, prep, strict=True):
            assert p.label_kind == "trainIds"
            lab = Image.open(p.label)
            assert lab.mode == "L"
            np.testing.assert_array_equal(np.asarray(lab), L.ID_TO_TRAINID[np.asarray(Image.open(r.label))])
            # PNG images are lossless copies.
            np.testing.assert_array_equal(np.asarray(Image.open(p.image)), np.asarray(Image.open(r.image)))


def test_npy_labels_hold_the_same_train_ids_as_png(src, tmp_path, capsys):
    png, npy = tmp_path / "png", tmp_path / "npy"
    prepare_dataset(src, png, workers=1, progress=False, scale=0.5, label_format="png")
    assert main(["prepare", "--src", str(src), "--out", str(npy),  # npy: the default for a new --out
                 "--scale", "0.5", "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    assert read_manifest(npy)["label_format"] == "npy" and read_manifest(png)["label_format"] == "png"
    for split in ("train", "val"):
        a, b = find_samples(png, split), find_samples(npy, split)
        assert [s.label.suffix for s in b] == [".npy"] * len(b)
        for x, y in zip(a, b, strict=True):
            arr = np.load(y.label)
            assert arr.dtype == np.uint8 and arr.shape == (SIZE[0] // 2, SIZE[1] // 2)
            np.testing.assert_array_equal(arr, np.asarray(Image.open(x.label)))
            assert x.image.read_bytes() == y.image.read_bytes()
    validate_samples(find_samples(npy, "train"))  # the checks read .npy labels too
    # a rerun keeps the earlier format; asking for the other one would mix outputs: refused
    assert prepare_dataset(src, png, workers=1, progress=False, scale=0.5)["skipped"] > 0
    assert read_manifest(png)["label_format"] == "png"
    with pytest.raises(UserError, match="label_format"):
        prepare_dataset(src, npy, workers=1, progress=False, scale=0.5, label_format="png")


def test_bad_npy_label_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((4, 4), np.float32))
    with pytest.raises(UserError, match=r"x\.npy: label array is float32"):
        read_label(bad, "trainIds")
    bad.write_bytes(b"PNG? no")
    with pytest.raises(UserError, match=r"x\.npy: not a \.npy file"):
        read_label(bad, "trainIds")


def test_manifest(src, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(src, out, quality=90, workers=1, progress=False)
    m = read_manifest(out)
    assert m["format_version"] == 1 and m["image_format"] == "jpeg" and m["quality"] == 90
    assert m["label_encoding"] == "trainIds" and m["size"] is None and m["scale"] is None
    assert m["source"] == str(src.resolve())
    assert m["splits"]["train"]["count"] == 4 and len(m["splits"]["train"]["files"]) == 4
    assert m["splits"]["val"]["sizes"] == {f"{SIZE[0]}x{SIZE[1]}": 2}


@pytest.mark.parametrize("kw, hw", [({"size": (32, 48)}, (32, 48)), ({"scale": 0.5}, (32, 64))])
def test_jpeg_output_decodes_at_the_requested_size(src, tmp_path, kw, hw):
    out = tmp_path / "out"
    prepare_dataset(src, out, workers=2, progress=False, label_format="png", **kw)
    for split in ("train", "val"):
        for raw, p in zip(find_samples(src, split), find_samples(out, split), strict=True):
            assert p.image.suffix == ".jpg"
            img = Image.open(p.image)
            img.load()
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (hw[1], hw[0]))
            lab = Image.open(p.label)
            assert lab.size == (hw[1], hw[0])
            # Nearest-neighbour: the downscaled label is a resample of the trainIds, no new values.
            expected = Image.fromarray(L.ID_TO_TRAINID[np.asarray(Image.open(raw.label))]).resize(
                (hw[1], hw[0]), Image.NEAREST
            )
            np.testing.assert_array_equal(np.asarray(lab), np.asarray(expected))
    assert read_manifest(out)["splits"]["train"]["sizes"] == {f"{hw[0]}x{hw[1]}": 4}


def test_image_downscale_is_antialiased(tmp_path):
    """A one-pixel checkerboard downscaled 2x must become flat grey, not aliasing stripes."""
    root = tmp_path / "src"
    img = root / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png"
    lab = root / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    img.parent.mkdir(parents=True)
    lab.parent.mkdir(parents=True)
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.repeat(board[:, :, None], 3, 2)).save(img)
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(lab)
    prepare_dataset(
        root, tmp_path / "out", image_format="png", scale=0.5, splits=("train",), workers=1, progress=False
    )
    out = np.asarray(Image.open(tmp_path / "out" / "train" / "images" / "ulm_000000_000019.png")).astype(int)
    assert abs(out[4:-4, 4:-4].mean() - 127.5) < 3 and out[4:-4, 4:-4].std() < 3


# ---- bad inputs: one line naming the file, exit 2, earlier outputs intact -----------------------


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:200])


def _resize_label(p: Path) -> None:
    Image.fromarray(np.asarray(Image.open(p))[: SIZE[0] // 2]).save(p)


def _bad_ids(p: Path) -> None:
    a = np.asarray(Image.open(p)).copy()
    a[0, 0] = 77
    Image.fromarray(a).save(p)


def _sixteen_bit(p: Path) -> None:
    Image.fromarray(np.asarray(Image.open(p)).astype(np.uint16)).save(p)


@pytest.mark.parametrize(
    "which, damage, words",
    [
        ("image", _truncate, "truncated"),
        ("label", _truncate, "truncated"),
        ("label", _resize_label, "32x128"),
        ("label", _bad_ids, "77"),
        ("label", _sixteen_bit, "16-bit"),
    ],
)
def test_bad_input_is_a_clear_error_and_keeps_prepared_files(src, tmp_path, capsys, which, damage, words):
    data = _copy(src, tmp_path / "src")
    out = tmp_path / "out"
    prepare_dataset(data, out, splits=("train",), workers=1, progress=False)
    before = _files(out)
    bad = getattr(find_samples(data, "val")[1], which)
    damage(bad)
    code = main(
        [
            "prepare",
            "--src",
            str(data),
            "--out",
            str(out),
            "--splits",
            "train,val",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(bad) in err and words in err, err
    after = _files(out)
    for name, content in before.items():
        assert after[name] == content, name
    assert not [n for n in after if ".tmp" in n]


def test_missing_label_fails_before_writing(src, tmp_path, capsys):
    data = _copy(src, tmp_path / "src")
    lab = find_samples(data, "val")[0].label
    lab.unlink()
    out = tmp_path / "out"
    assert main(["prepare", "--src", str(data), "--out", str(out), "--no-progress"]) == 2
    assert "has no label" in capsys.readouterr().err
    assert not out.exists()


def test_bad_arguments(src, tmp_path):
    with pytest.raises(UserError, match="not both"):
        prepare_dataset(src, tmp_path / "o", size=(8, 8), scale=0.5)
    with pytest.raises(UserError, match="quality"):
        prepare_dataset(src, tmp_path / "o", quality=0)
    with pytest.raises(UserError, match="differ"):
        prepare_dataset(src, src)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prepare_dataset(src, tmp_path / "full", progress=False)


def test_rerun_with_other_settings_is_refused(src, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(src, out, workers=1, progress=False)
    with pytest.raises(UserError, match="other settings") as e:
        prepare_dataset(src, out, quality=80, workers=1, progress=False)
    assert str(out / ".prepare.json") in str(e.value)


# ---- crash safety ------------------------------------------------------------------------------


def test_interrupted_run_completes_to_identical_output(src, tmp_path):
    ref = tmp_path / "ref"
    prepare_dataset(src, ref, scale=0.5, workers=1, progress=False, label_format="png")
    out = tmp_path / "out"
    prepare_dataset(src, out, scale=0.5, workers=1, progress=False, label_format="png")
    # What a kill leaves behind: no manifest, some pairs missing one or both files, a stray temp file.
    (out / "manifest.json").unlink()
    train = sorted((out / "train" / "images").iterdir())
    train[0].unlink()
    (out / "train" / "labels" / (train[1].stem + ".png")).unlink()
    shutil.rmtree(out / "val")
    (out / "train" / "images" / f".{train[2].name}.tmp12345").write_bytes(b"half a JPEG")
    summary = prepare_dataset(src, out, scale=0.5, workers=2, progress=False, label_format="png")
    assert summary["written"] == 4 and summary["skipped"] == 2 and summary["stray_temps_removed"] == 1
    assert _files(out) == _files(ref)


@pytest.mark.parametrize("sig, workers", [(signal.SIGKILL, 1), (signal.SIGTERM, 2)], ids=["sigkill", "sigterm-job"])
def test_killed_or_stopped_midway_then_rerun_gives_identical_output(tmp_path, sig, workers):
    """SIGKILL: whatever was written stays whole. SIGTERM to the whole process group (a cluster's time limit):
    the workers ignore it, the frames under way finish, exit 75 with one line; either way a rerun continues."""
    src = tmp_path / "src"
    write_synthetic(src, train=30, val=0, test=0, size=(256, 512), seed=5, workers=2, progress=False)
    prepare_dataset(src, tmp_path / "ref", splits=("train",), workers=2, progress=False, label_format="png")
    args = ["prepare", "--src", str(src), "--splits", "train", "--workers", str(workers), "--no-progress",
            "--label-format", "png"]  # fmt: skip
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "cityseg_fast", *args, "--out", str(out)], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    labels = out / "train" / "labels"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if labels.is_dir() and len(list(labels.glob("*.png"))) >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, sig)  # the process and its workers
    _, err = proc.communicate(timeout=60)
    assert not (out / "manifest.json").exists(), "prepare finished before it could be stopped"
    done = len(list(labels.glob("*.png")))
    assert 3 <= done < 30
    if sig == signal.SIGTERM:
        assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and last.startswith("cityseg prepare: stopped by SIGTERM during prepare after "), last
        assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # the frames under way finished
    assert main([*args, "--out", str(out)]) == 0
    assert _files(out) == _files(tmp_path / "ref")


def test_a_later_run_adds_splits_to_the_manifest(src, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(src, out, splits=("train",), workers=1, progress=False)
    assert list(read_manifest(out)["splits"]) == ["train"]
    summary = prepare_dataset(src, out, splits=("val",), workers=1, progress=False)
    assert summary["written"] == 2
    assert sorted(read_manifest(out)["splits"]) == ["train", "val"]
    assert len(find_samples(out, "train")) == 4 and len(find_samples(out, "val")) == 2
