"""Convert a Cityscapes-layout dataset to the fast layout the loaders read: JPEG (or PNG) images,
uint8 trainId labels (raw .npy arrays by default, or PNG with --label-format png), optional downscaling, and a
manifest written last.

    OUT/manifest.json
    OUT/{split}/images/{stem}.jpg|png
    OUT/{split}/labels/{stem}.png|npy      trainIds 0..18, 255 = ignore

Why: a 1024x2048 Cityscapes PNG takes ~4x longer to decode than a q95 JPEG of the same frame, and
GPU decoders (nvJPEG, DALI "mixed") take JPEG only. Labels become trainIds so no loader needs the
id -> trainId table, and downscaled copies make low-resolution training I/O-cheap.

Crash safety: every file is written under a temporary name in its final directory and renamed
(atomic on POSIX), labels before images; a pair is finished when both files exist, so a rerun skips
finished pairs and completes the rest. The settings are recorded in OUT/.prepare.json before the
first file and must match on a rerun; the manifest is written last, so its presence means done. A full
disk stops the run with one line naming the file (diskio.py); a rerun after space is freed continues. One
writer: a second prepare into OUT while the first runs is refused with one line naming it (dirlock.py).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cityseg_fast import dirlock
from cityseg_fast.data.cityscapes import MANIFEST, Sample, find_samples, image_size, open_pair
from cityseg_fast.data.parallel import run_parallel
from cityseg_fast.diskio import atomic_path, make_dirs
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import cpu_count
from cityseg_fast.paths import check_out_dir

FORMAT_VERSION = 1
SETTINGS = ".prepare.json"
EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}
# png: small on disk, decoded on the CPU (the whole frame, even for a crop). npy: raw uint8 (2 MB a
# 1024x2048 frame), memory-mapped: a crop window costs a copy of its rows (reports/cpu-loaders/).
LABEL_EXTENSIONS = {"png": ".png", "npy": ".npy"}
LABEL_PNG_LEVEL = 1  # labels are low-entropy: level 1 is about as small as 6, and faster (reports/cpu-data/)
IMAGE_PNG_LEVEL = 1


@dataclass(frozen=True)
class _Task:
    sample: Sample
    image_out: Path
    label_out: Path  # .png or .npy (--label-format)
    image_format: str
    quality: int | None
    size: tuple[int, int] | None
    scale: float | None


def output_size(hw: tuple[int, int], size: tuple[int, int] | None, scale: float | None) -> tuple[int, int]:
    """The (H, W) a frame of size `hw` is written at."""
    if size is not None:
        return tuple(size)
    if scale is not None:
        return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))
    return tuple(hw)


def _save_image(img: Image.Image, path: Path, **kw) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, **kw)


def _save_npy(arr: np.ndarray, path: Path) -> None:
    # Through memory, then one Python write: np.save into a file reports a full disk as a short write
    # ("131072 requested and 44928 written") without the errno that says so.
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.uint8), allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def _prepare_one(task: _Task) -> tuple[str, tuple[int, int]]:
    """Read, check, resize and write one pair. Runs in a worker process."""
    img, label = open_pair(task.sample, check_values=True)
    h, w = output_size((img.height, img.width), task.size, task.scale)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.LANCZOS, reducing_gap=3.0)  # antialiased
        label = label.resize((w, h), Image.NEAREST)  # never invents a class at a boundary
    if task.label_out.suffix == ".npy":
        _save_npy(np.asarray(label), task.label_out)
    else:
        _save_image(label, task.label_out, format="PNG", compress_level=LABEL_PNG_LEVEL)
    if task.image_format == "jpeg":
        _save_image(img, task.image_out, format="JPEG", quality=task.quality)
    else:
        _save_image(img, task.image_out, format="PNG", compress_level=IMAGE_PNG_LEVEL)
    return str(task.label_out), (h, w)


def _task_name(task: _Task) -> str:
    return str(task.sample.image)


def _check_args(image_format: str, quality: int, size, scale, label_format: str = "png") -> None:
    if label_format not in LABEL_EXTENSIONS:
        raise UserError(f"--label-format must be one of {', '.join(LABEL_EXTENSIONS)}, got '{label_format}'")
    if image_format not in EXTENSIONS:
        raise UserError(f"--image-format must be one of {', '.join(EXTENSIONS)}, got '{image_format}'")
    if image_format == "jpeg" and not 1 <= quality <= 100:
        raise UserError(f"--quality must be in 1..100, got {quality}")
    if size is not None and scale is not None:
        raise UserError("give --size or --scale, not both")
    if scale is not None and not 0 < scale <= 4:
        raise UserError(f"--scale must be in (0, 4], got {scale}")


def _earlier_label_format(out: Path) -> str | None:
    """The label format an earlier prepare into `out` used (so a rerun resumes it), else None."""
    try:
        old = json.loads((out / SETTINGS).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return old.get("label_format", "png") if isinstance(old, dict) else None  # png: before the option


def _claim_out(out: Path, settings: dict) -> None:
    """Record the settings before writing any file; a rerun with other settings would mix outputs."""
    make_dirs(out)
    path = out / SETTINGS
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            old.setdefault("label_format", "png")  # outputs from before --label-format existed
        if old != settings:
            diff = {k: (old or {}).get(k) for k in settings if (old or {}).get(k) != settings[k]}
            raise UserError(
                f"{path}: {out} was prepared with other settings {diff}; use another --out or delete it"
            )
        return
    if any(not dirlock.is_lock_file(p) for p in out.iterdir()):
        raise UserError(f"{out}: not empty and not a prepare output; use an empty or new --out directory")
    _write_json(path, settings)


def _write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _remove_stray_temps(out: Path, splits) -> int:
    n = 0
    for split in splits:
        for sub in ("images", "labels"):
            for p in (out / split / sub).glob(".*.tmp*"):
                p.unlink()
                n += 1
    return n


def prepare_dataset(
    src: str | Path,
    out: str | Path,
    image_format: str = "jpeg",
    quality: int = 95,
    size: tuple[int, int] | None = None,
    scale: float | None = None,
    splits: tuple[str, ...] | list[str] = ("train", "val"),
    workers: int | None = None,
    progress: bool = True,
    label_format: str | None = None,
) -> dict:
    """Prepare `splits` of `src` into `out` (see the module docstring); returns a summary dict.

    label_format: "npy" (the default for a new output: a crop reads only its window's rows, the
    cheapest label path for every loader, on the CPU and feeding a GPU; reports/cpu-loaders/) or
    "png" (100x smaller on disk, decoded on the CPU every time); None keeps an earlier run's format.

    Bad input (a structural problem, an unreadable/truncated file, a size mismatch, invalid label
    values, a 16-bit label) raises a one-line UserError naming the file; files already written stay.
    """

    src, out = Path(src).expanduser(), check_out_dir(out, "--out")
    label_format = label_format or _earlier_label_format(out) or "npy"
    _check_args(image_format, quality, size, scale, label_format)
    if src.resolve() == out.resolve():
        raise UserError(f"{out}: --out must differ from --src")
    if out.resolve().is_relative_to(src.resolve()):
        raise UserError(f"{out}: --out lies inside --src {src}; put the prepared copy outside the source")
    samples = {split: find_samples(src, split) for split in splits}  # structure errors before any write
    settings = {
        "format_version": FORMAT_VERSION,
        "source": str(src.resolve()),
        "image_format": image_format,
        "quality": quality if image_format == "jpeg" else None,
        "label_encoding": "trainIds",
        "label_format": label_format,
        "size": list(size) if size is not None else None,
        "scale": scale,
    }
    with dirlock.held(out, "cityseg prepare"):  # one writer per output, taken before .prepare.json is read
        _claim_out(out, settings)
        stray = _remove_stray_temps(out, splits)
        tasks, done = _plan(samples, out, image_format, settings["quality"], size, scale, label_format)
        n_workers = max(1, min(workers or cpu_count(), len(tasks) or 1))
        t0 = time.perf_counter()
        try:
            results = run_parallel(_prepare_one, tasks, n_workers, progress, "prepare", _task_name)
        finally:
            # A worker killed (or Ctrl-C) inside a write leaves its temp file: it must not outlive this run
            # (finished files are never touched).
            _remove_stray_temps(out, splits)
        wall = time.perf_counter() - t0
        manifest = _write_manifest(out, settings, samples, {**done, **dict(results)})
        return {
            "src": str(src),
            "out": str(out),
            "pairs": sum(len(ss) for ss in samples.values()),
            "label_format": label_format,
            "written": len(tasks),
            "skipped": len(done),
            "stray_temps_removed": stray,
            "workers": n_workers,
            "wall_s": wall,
            "pairs_per_s": len(tasks) / wall if tasks and wall > 0 else None,
            "splits": {k: v["count"] for k, v in manifest["splits"].items()},
        }


def _plan(samples: dict[str, list[Sample]], out: Path, image_format: str, quality: int | None,
          size: tuple[int, int] | None, scale: float | None,
          label_format: str = "png") -> tuple[list[_Task], dict[str, tuple[int, int]]]:
    """Pairs still to write, and the finished ones (both files present: renames are atomic) with their sizes."""
    ext, lab_ext = EXTENSIONS[image_format], LABEL_EXTENSIONS[label_format]
    tasks, done = [], {}
    for split, ss in samples.items():
        make_dirs(out / split / "images")
        make_dirs(out / split / "labels")
        for s in ss:
            t = _Task(s, out / split / "images" / f"{s.stem}{ext}", out / split / "labels" / f"{s.stem}{lab_ext}",
                      image_format, quality, size, scale)
            if t.image_out.exists() and t.label_out.exists():
                done[str(t.label_out)] = image_size(t.image_out)
            else:
                tasks.append(t)
    return tasks, done


def _write_manifest(out: Path, settings: dict, samples: dict[str, list[Sample]],
                    sizes: dict[str, tuple[int, int]]) -> dict:
    """The manifest, last; splits prepared by earlier runs with the same settings are kept."""
    lab_ext = LABEL_EXTENSIONS[settings["label_format"]]
    manifest = dict(settings)
    manifest["splits"] = dict(_read_old_manifest(out).get("splits", {}))
    for split, ss in samples.items():
        manifest["splits"][split] = {
            "count": len(ss),
            "files": [s.stem for s in ss],
            "sizes": _size_histogram(sizes[str(out / split / "labels" / f"{s.stem}{lab_ext}")] for s in ss),
        }
    _write_json(out / MANIFEST, manifest)
    return manifest


def _read_old_manifest(out: Path) -> dict:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _size_histogram(sizes) -> dict[str, int]:
    hist: dict[str, int] = {}
    for h, w in sizes:
        hist[f"{h}x{w}"] = hist.get(f"{h}x{w}", 0) + 1
    return hist

