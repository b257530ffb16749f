"""Bad inputs, one table: each is one line on stderr naming the file or key, exit 2, no traceback, and every
file that existed before is byte-identical after. Run through `cityseg_fast.cli.main` in-process, from a
scratch working directory (so a default such as runs/default can only land there).

Add a row for every bad input found: (id, setup, words). `setup(ctx)` makes what the case needs under
ctx.tmp and returns the CLI arguments; `words` must all appear in the one stderr line.
Below the table: the behaviours around bad inputs that are not an exit 2 (a report that keeps the good rows,
a resume that falls back past a truncated checkpoint, a fresh start).
"""

from __future__ import annotations

import json
import shutil
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fixtures import tiny_overrides, trained_run, write_tiny_cityscapes
from PIL import Image

from cityseg_fast.cli import main
from cityseg_fast.config import CHOICES, RANGES, Config, Range, load_config
from cityseg_fast.data.prepare import prepare_dataset
from cityseg_fast.engine.checkpoint import list_checkpoints, load_checkpoint
from cityseg_fast.results import append_row, row_for

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "results_fixture.jsonl"
PNG = b"\x89PNG\r\n\x1a\nnot really"


@dataclass
class Ctx:
    tmp: Path  # this case's scratch directory, also the working directory
    data: Path  # a tiny raw Cityscapes root (8 train, 4 val), shared by all cases: read only
    run: Path  # a trained tiny run (ckpt_00000020.pt, ckpt_00000030.pt), shared: read only
    monkeypatch: pytest.MonkeyPatch

    @property
    def ckpt(self) -> str:
        return str(list_checkpoints(self.run)[-1])

    def file(self, name: str, data: bytes = b"mine\n") -> str:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return str(p)

    def copy(self, src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, self.tmp / name))

    def train(self, out: Path | str, *extra: str, options: tuple[str, ...] = ()) -> list[str]:
        """`cityseg train OPTIONS` with the shared run's config (tiny U-Net, torch loader) into `out`, then
        the `extra` overrides (argparse takes the options before the positional overrides)."""
        return ["train", *options, *tiny_overrides(self.data, Path(out)), *extra]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _all_truncated(c: Ctx) -> list[str]:
    run = c.copy(c.run, "run")
    for p in list_checkpoints(run):
        _truncate(p)
    return c.train(run)


def _moved_checkpoint(c: Ctx) -> list[str]:
    """A checkpoint whose config names a relative data.root that does not resolve from here."""
    ck = torch.load(c.ckpt, weights_only=True)
    ck["config"]["data"]["root"] = "data/synth"
    torch.save(ck, c.tmp / "moved.pt")
    return ["eval", "--checkpoint", str(c.tmp / "moved.pt")]


def _unreadable_labels(c: Ctx) -> list[str]:
    """A label directory this process may not read (simulated: tests may run as root, which reads anyway)."""
    import os

    denied = c.data / "gtFine" / "val" / "bochum"
    real = os.access
    c.monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != denied and real(p, mode, **kw))
    return ["prepare", "--src", str(c.data), "--out", str(c.tmp / "out"), "--no-progress"]


def _missing_label(c: Ctx) -> list[str]:
    src = c.copy(c.data, "src")
    next((src / "gtFine" / "val").rglob("*_labelIds.png")).unlink()
    return ["prepare", "--src", str(src), "--out", str(c.tmp / "out"), "--no-progress"]


def _damaged(c: Ctx, which: str, damage: Callable[[Path], None]) -> list[str]:
    """prepare of a copy of the shared data whose first val image or label was damaged (named `bad_*`)."""
    src = c.copy(c.data, "src")
    suffix = "_leftImg8bit.png" if which == "image" else "_gtFine_labelIds.png"
    victim = sorted((src / ("leftImg8bit" if which == "image" else "gtFine") / "val").rglob(f"*{suffix}"))[0]
    damage(victim)
    return ["prepare", "--src", str(src), "--out", str(c.tmp / "out"), "--no-progress", "--workers", "1"]


def _label_edit(edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    return lambda p: Image.fromarray(edit(np.asarray(Image.open(p)).copy())).save(p)


def _set_77(a: np.ndarray) -> np.ndarray:
    a[0, 0] = 77  # not a Cityscapes labelId
    return a


def _prepared_once(c: Ctx) -> list[str]:
    prepare_dataset(c.data, c.tmp / "o", workers=1, progress=False)
    return _prepare(c, "--quality", "80", "--no-progress")


def _no_val(c: Ctx) -> str:
    """A dataset root with a train split and no val split."""
    return str(write_tiny_cityscapes(c.tmp / "d", {"train": 4}))


def _prepare(c: Ctx, *extra: str) -> list[str]:
    return ["prepare", "--src", str(c.data), "--out", str(c.tmp / "o"), *extra]


def _bench_loader(c: Ctx, *extra: str) -> list[str]:
    return ["bench", "loader", "--data", str(c.data), "--loader", "torch", *extra]


def _results(c: Ctx, text: str) -> str:
    (c.tmp / "res").mkdir()
    return c.file("res/results.jsonl", text.encode())


def _config_file(c: Ctx, text: str) -> list[str]:
    """The shared run's config with a YAML file layered under it: set only keys tiny_overrides does not."""
    return c.train(c.tmp / "r", options=("--config", c.file("bad.yaml", text.encode())))


def _sweep(c: Ctx, spec: dict | None = None) -> list[str]:
    """`cityseg sweep SPEC` of a tiny infer spec written to sub/s.yaml (keys of `spec` replace its own)."""
    import yaml

    body = {"name": "s", "overrides": {"data.crop": [32, 64]}, "runs": [{"scenarios": ["infer"]}], **(spec or {})}
    c.monkeypatch.delenv("CITYSEG_NO_GPUS", raising=False)
    return ["sweep", c.file("sub/s.yaml", yaml.safe_dump(body).encode())]


def _unset(c: Ctx, name: str, spec: str) -> list[str]:
    c.monkeypatch.delenv(name, raising=False)
    return ["sweep", spec]


TINY_BENCH = ["model.name=unet_s16", "model.base_width=2", "data.crop=[32,64]", "loader.batch_size=1"]
TINY_BENCH += ["bench.iters=1", "bench.warmup=0"]

Setup = Callable[[Ctx], list[str]]
# (id, setup, words of the one stderr line)
CASES: list[tuple[str, Setup, tuple[str, ...]]] = [
    # -- an output path that is an existing file (or lies under one) --------------------------------------
    ("prepare-out-is-a-file", lambda c: ["prepare", "--src", str(c.data), "--out", c.file("taken")],
     ("taken", "not a directory", "--out")),
    ("prepare-out-under-a-file", lambda c: ["prepare", "--src", str(c.data), "--out", c.file("f") + "/sub"],
     ("f/sub", "is a file")),
    ("train-out-is-a-file", lambda c: c.train(c.file("taken")),
     ("taken", "not a directory", "train.out_dir")),
    ("train-out-dir-key-is-a-file", lambda c: [*c.train(c.tmp / "r"), f"train.out_dir={c.file('taken')}"],
     ("taken", "not a directory")),
    ("eval-export-dir-is-a-file", lambda c: ["eval", "--checkpoint", c.ckpt, "--export-dir", c.file("taken")],
     ("taken", "not a directory", "--export-dir")),
    ("predict-out-is-a-file",
     lambda c: ["predict", "--checkpoint", c.ckpt, c.file("x.png", PNG), "--out", c.file("taken")],
     ("taken", "not a directory", "--out")),
    ("synth-out-is-a-file", lambda c: ["synth", "--out", c.file("taken"), "--size", "32x64"],
     ("taken", "not a directory", "--out")),
    ("report-out-is-a-file", lambda c: ["report", str(FIXTURE), "--out", c.file("taken")],
     ("taken", "not a directory")),
    ("bench-loader-out-is-a-dir",
     lambda c: _bench_loader(c, "--out", str(c.tmp)),
     ("is a directory", "--append")),
    ("bench-loader-append-to-an-image",
     lambda c: _bench_loader(c, "--append", c.file("a.png", PNG)),
     ("a.png", "not a results file")),
    ("bench-model-append-is-a-dir", lambda c: ["bench", "model", *TINY_BENCH, "--append", str(c.tmp)],
     ("is a directory", "--append")),
    ("bench-infer-append-to-yaml",
     lambda c: ["bench", "infer", *TINY_BENCH, "--append", c.file("c.yaml", b"train:\n  lr: 1\n")],
     ("c.yaml", "not a results file")),
    ("bench-e2e-append-under-a-file",
     lambda c: ["bench", "e2e", *TINY_BENCH, "--append", c.file("f") + "/results.jsonl"],
     ("f/results.jsonl", "is a file")),
    # -- numbers out of range (every RANGES key also gets rows of its own, below) -------------------------
    ("batch-size-negative", lambda c: c.train(c.tmp / "r", "loader.batch_size=-1"),
     ("loader.batch_size", ">= 1", "-1")),
    ("batch-size-zero", lambda c: c.train(c.tmp / "r", "loader.batch_size=0"), ("loader.batch_size", ">= 1")),
    ("eval-batch-size-zero", lambda c: c.train(c.tmp / "r", "loader.eval_batch_size=0"),
     ("loader.eval_batch_size", ">= 1")),
    ("lr-negative", lambda c: c.train(c.tmp / "r", "train.lr=-1"), ("train.lr", "> 0")),
    ("iters-negative", lambda c: c.train(c.tmp / "r", "train.iters=-5"), ("train.iters", ">= 1", "-5")),
    ("scale-range-reversed", lambda c: c.train(c.tmp / "r", "data.scale_range=[2.0,0.5]"),
     ("data.scale_range", "exceeds")),
    ("min-lr-above-lr", lambda c: c.train(c.tmp / "r", "train.min_lr=0.5"), ("train.min_lr", "train.lr")),
    ("range-error-in-a-config-file", lambda c: _config_file(c, "loader:\n  prefetch_queue_depth: 0\n"),
     ("bad.yaml", "loader.prefetch_queue_depth", ">= 1")),
    ("type-error-in-a-config-file", lambda c: _config_file(c, "train:\n  keep_ckpts: [1, 2]\n"),
     ("bad.yaml", "train.keep_ckpts", "integer")),
    ("bench-loader-batch-size-zero",
     lambda c: _bench_loader(c, "--batch-size", "0"),
     ("loader.batch_size", ">= 1")),
    ("bench-loader-iters-zero",
     lambda c: _bench_loader(c, "--iters", "0"),
     ("bench.iters", ">= 1")),
    # -- predict: two inputs of the same name -------------------------------------------------------------
    ("predict-same-name-twice",
     lambda c: ["predict", "--checkpoint", c.ckpt, c.file("a/x.png", PNG), c.file("b/x.png", PNG), "--out",
                str(c.tmp / "o")],
     ("a/x.png", "b/x.png", "x_overlay.png")),
    # -- a rerun into a run directory with another config ----------------------------------------------
    ("rerun-other-model", lambda c: c.train(c.copy(c.run, "run"), "model.base_width=16"),
     ("run/config.yaml", "has another config", "model.base_width 8 -> 16", "--fresh")),
    ("rerun-other-lr-and-crop", lambda c: c.train(c.copy(c.run, "run"), "train.lr=0.1", "data.crop=[32,64]"),
     ("run/config.yaml", "train.lr 0.03 -> 0.1", "data.crop")),
    ("resume-checkpoint-of-another-config",
     lambda c: c.train(c.tmp / "new", "train.optimizer=sgd", options=("--resume", c.ckpt)),
     ("ckpt_00000030.pt", "trained with another config", "train.optimizer 'adamw' -> 'sgd'")),
    ("resume-no-checkpoint-loads", _all_truncated, ("none of its 2 checkpoints loads", "ckpt_00000030.pt")),
    ("resume-missing-checkpoint",
     lambda c: c.train(c.tmp / "r", options=("--resume", str(c.tmp / "missing.pt"))),
     ("missing.pt", "not found")),
    # -- prepare ------------------------------------------------------------------------------------------
    ("prepare-out-inside-src", lambda c: ["prepare", "--src", str(c.data), "--out", str(c.data / "fast")],
     ("fast", "inside --src")),
    ("prepare-out-is-src", lambda c: ["prepare", "--src", str(c.data), "--out", str(c.data)],
     ("must differ from --src",)),
    ("prepare-label-dir-unreadable", _unreadable_labels, ("gtFine/val/bochum", "permission denied")),
    ("prepare-image-without-label", _missing_label, ("has no label",)),
    ("prepare-truncated-image", lambda c: _damaged(c, "image", _truncate),
     ("leftImg8bit.png", "truncated")),
    ("prepare-label-size-differs", lambda c: _damaged(c, "label", _label_edit(lambda a: a[:32])),
     ("labelIds.png", "32x128")),
    ("prepare-label-invalid-id", lambda c: _damaged(c, "label", _label_edit(_set_77)),
     ("labelIds.png", "77")),
    ("prepare-label-16-bit", lambda c: _damaged(c, "label", _label_edit(lambda a: a.astype(np.uint16))),
     ("labelIds.png", "16-bit")),
    ("prepare-rerun-other-settings", _prepared_once, (".prepare.json", "other settings")),
    ("prepare-foreign-out-dir",
     lambda c: (c.file("full/mine.txt"), ["prepare", "--src", str(c.data), "--out", str(c.tmp / "full")])[1],
     ("full", "not empty")),
    ("prepare-quality-zero",
     lambda c: _prepare(c, "--quality", "0"), ("--quality",)),
    ("prepare-scale-too-big",
     lambda c: _prepare(c, "--scale", "9"), ("--scale",)),
    ("prepare-size-not-hxw",
     lambda c: _prepare(c, "--size", "512"), ("--size '512'", "HxW")),
    ("prepare-no-splits",
     lambda c: _prepare(c, "--splits", ","), ("--splits",)),
    ("prepare-src-missing", lambda c: ["prepare", "--src", str(c.tmp / "nope"), "--out", str(c.tmp / "o")],
     ("nope", "does not exist")),
    # -- eval ---------------------------------------------------------------------------------------------
    ("eval-data-root-from-checkpoint", _moved_checkpoint,
     ("data/synth", "does not exist", "checkpoint's config", "--data DIR")),
    ("eval-checkpoint-missing", lambda c: ["eval", "--checkpoint", str(c.tmp / "nope.pt")],
     ("nope.pt", "checkpoint not found")),
    ("eval-checkpoint-junk", lambda c: ["eval", "--checkpoint", c.file("junk.pt")],
     ("junk.pt", "not a readable checkpoint")),
    ("eval-weights-do-not-fit",
     lambda c: ["eval", "--checkpoint", c.ckpt, "--data", str(c.data), "model.base_width=16"],
     ("ckpt_00000030.pt", "weights do not fit")),
    ("eval-split-missing",
     lambda c: ["eval", "--checkpoint", c.ckpt, "--data", _no_val(c)],
     ("split 'val'",)),
    ("eval-export-dir-under-a-file",
     lambda c: ["eval", "--checkpoint", c.ckpt, "--export-dir", c.file("f") + "/preds"],
     ("f/preds", "is a file")),
    # -- train --------------------------------------------------------------------------------------------
    ("train-data-missing", lambda c: c.train(c.tmp / "r", f"data.root={c.tmp / 'nodata'}"),
     ("nodata", "does not exist")),
    ("train-split-missing",
     lambda c: ["train", *tiny_overrides(Path(_no_val(c)), c.tmp / "r")],
     ("split 'val'",)),
    ("train-config-missing", lambda c: ["train", "--config", str(c.tmp / "nope.yaml")],
     ("nope.yaml", "config file not found")),
    ("train-config-not-yaml", lambda c: _config_file(c, "train: [\n"), ("bad.yaml", "not valid YAML")),
    ("train-config-unknown-key", lambda c: _config_file(c, "loader:\n  batchsize: 4\n"),
     ("bad.yaml", "loader.batchsize", "loader.batch_size")),
    ("train-unknown-key", lambda c: c.train(c.tmp / "r", "train.lrr=0.1"), ("train.lrr", "train.lr")),
    ("train-unknown-section", lambda c: c.train(c.tmp / "r", "trian.lr=0.1"), ("trian", "train")),
    ("train-override-syntax", lambda c: c.train(c.tmp / "r", "train.lr"),
     ("'train.lr'", "section.key=value")),
    ("train-wrong-type", lambda c: c.train(c.tmp / "r", "loader.batch_size=eight"),
     ("loader.batch_size", "integer")),
    ("train-batch-above-the-split", lambda c: c.train(c.tmp / "r", "loader.batch_size=64"),
     ("8 samples", "batch_size 64")),
    ("train-unknown-optimizer", lambda c: c.train(c.tmp / "r", "train.optimizer=adam"),
     ("train.optimizer", "adam")),
    # -- predict, synth, sweep, bench, report -------------------------------------------------------------
    ("predict-not-an-image", lambda c: ["predict", "--checkpoint", c.ckpt, c.file("bad.png"), "--out", "o"],
     ("bad.png", "not a readable image")),
    ("predict-image-missing",
     lambda c: ["predict", "--checkpoint", c.ckpt, str(c.tmp / "gone.png"), "--out", "o"],
     ("gone.png", "image not found")),
    ("predict-alpha", lambda c: ["predict", "--checkpoint", c.ckpt, c.file("x.png", PNG), "--out", "o",
                                 "--alpha", "2"], ("--alpha",)),
    ("synth-too-small", lambda c: ["synth", "--out", str(c.tmp / "s"), "--size", "8x8"], ("--size", "16x16")),
    ("synth-negative-count", lambda c: ["synth", "--out", str(c.tmp / "s"), "--train", "-1"], ("--train",)),
    ("sweep-only-bogus", lambda c: ["sweep", "configs/sweeps/cpu_quick.yaml", "--only", "bogus"],
     ("--only bogus", "loader, model, infer, e2e, accuracy")),
    ("sweep-spec-missing", lambda c: ["sweep", str(c.tmp / "nope.yaml")], ("nope.yaml",)),
    # -- sweeps: variables, paths from another working directory, shards, devices -------------------------
    ("sweep-shipped-spec-variable-unset", lambda c: _unset(c, "CITYSCAPES_QUICK", "configs/sweeps/cpu_quick.yaml"),
     ("cpu_quick.yaml", "${CITYSCAPES_QUICK} is not set", "data.root", "(loader, e2e)", "--only model --only infer")),
    ("sweep-variable-unset-in-world-size", lambda c: _sweep(c, {"runs": [{"scenarios": ["model"],
                                                                          "grid": {"world_size": ["${CITYSEG_NO_GPUS}"]}}]}),
     ("s.yaml", "${CITYSEG_NO_GPUS} is not set", "runs[0].grid.world_size")),
    ("sweep-variable-unset-in-config-path", lambda c: _sweep(c, {"config": ["${CITYSEG_NO_DIR}/cpu.yaml"]}),
     ("s.yaml", "${CITYSEG_NO_DIR} is not set", "config[0]")),
    ("sweep-variable-unset-for-accuracy", lambda c: _sweep(c, {"overrides": {"data.root": "${CITYSEG_NO_DATA}"},
                                                              "runs": [{"scenarios": ["accuracy"]}]}),
     ("s.yaml", "${CITYSEG_NO_DATA} is not set", "data.root of 1 point(s) (accuracy)")),
    ("sweep-config-missing-from-another-cwd", lambda c: _sweep(c, {"config": ["configs/bench/nope.yaml"]}),
     ("s.yaml", "'configs/bench/nope.yaml' not found", "sub/configs/bench/nope.yaml")),
    ("sweep-spec-missing-from-another-cwd", lambda c: ["sweep", "configs/sweeps/nope.yaml"],
     ("configs/sweeps/nope.yaml", "sweep spec not found", "nor under")),
    ("sweep-shard-past-the-count", lambda c: [*_sweep(c), "--shard", "3/2"], ("--shard '3/2'", "0 <= I < N")),
    ("sweep-shard-not-a-fraction", lambda c: [*_sweep(c), "--shard", "x"], ("--shard 'x'", "I/N")),
    ("sweep-shard-of-zero", lambda c: [*_sweep(c), "--shard", "0/0"], ("--shard '0/0'",)),
    ("sweep-devices-empty", lambda c: [*_sweep(c), "--devices", ""], ("--devices ''", "device ids")),
    ("sweep-devices-empty-entry", lambda c: [*_sweep(c), "--devices", "0,,1"], ("--devices '0,,1'",)),
    ("sweep-devices-twice", lambda c: [*_sweep(c), "--devices", "0,1,0"], ("--devices '0,1,0'", "listed twice")),
    ("sweep-devices-outside-the-visible-ones",
     lambda c: (c.monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5"), [*_sweep(c), "--devices", "0,4"])[1],
     ("--devices '0,4'", "device 0", "CUDA_VISIBLE_DEVICES=4,5")),
    ("sweep-devices-fewer-than-world-size",
     lambda c: [*_sweep(c, {"runs": [{"scenarios": ["model"], "grid": {"world_size": [1, 4]}}]}), "--devices", "0,1"],
     ("--devices 0,1", "2 device(s)", "need world_size 4")),
    ("bench-loader-data-missing",
     lambda c: ["bench", "loader", "--data", str(c.tmp / "nope"), "--loader", "dali", "--iters", "2"],
     ("nope", "does not exist")),
    ("bench-loader-backend-unknown",
     lambda c: ["bench", "loader", "--data", str(c.data), "loader.backend=nope"], ("loader.backend", "nope")),
    ("bench-loader-crop-not-hxw", lambda c: ["bench", "loader", "--data", str(c.data), "--crop", "512"],
     ("--crop '512'", "HxW")),
    ("report-run-dir-missing", lambda c: ["report", str(c.tmp / "nope")], ("nope", "no such run directory")),
    ("report-no-results", lambda c: (c.file("res/other.txt"), ["report", str(c.tmp / "res")])[1],
     ("results.jsonl: not found",)),
    ("report-empty-results", lambda c: ["report", _results(c, "")], ("results.jsonl", "empty")),
    ("report-only-garbage", lambda c: ["report", _results(c, "not json\n{}\n")],
     ("results.jsonl", "none of its 2 lines")),
]


def _bad_values(key: str, rng: Range) -> list[str]:
    """Values just outside `rng` for `key`, as override text (a list for a tuple key)."""
    section, name = key.split(".")
    hint = typing.get_type_hints(type(getattr(Config(), section)))[name]
    tuple_type = next((a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is tuple), None)
    values = []
    if rng.lo is not None:
        values.append(rng.lo if rng.open_lo else rng.lo - 1)
    if rng.hi is not None:
        values.append(rng.hi + 1)
    texts = [str(int(v)) if v == int(v) else str(v) for v in values]
    if tuple_type is not None:
        n = len(typing.get_args(tuple_type))
        texts = ["[" + ",".join([t] * n) + "]" for t in texts]
    return texts


RANGE_CASES = [
    (f"range-{key}={text}", lambda c, k=key, t=text: c.train(c.tmp / "r", f"{k}={t}"),
     (key, f"must be {rng}"))
    for key, rng in RANGES.items()
    for text in _bad_values(key, rng)
]



def _shown(word: str | None) -> str:
    return "null" if word is None else (word or "''")


# Every key of CHOICES, through `cityseg train`: the one line names the key, the value and every word it takes,
# and nothing is written (refused when the config is built, before the run directory or the data).
CHOICE_CASES = [
    (f"choice-{key}", lambda c, k=key: c.train(c.tmp / "r", f"{k}=bogus"),
     (key, "'bogus'", *map(_shown, words)))
    for key, words in CHOICES.items()
] + [
    ("choice-roi-with-the-torch-loader", lambda c: _bench_loader(c, "loader.roi=slcie"),
     ("loader.roi", "'slcie'", "slice", "resize")),
    ("choice-in-a-config-file", lambda c: _config_file(c, "precision:\n  dtype: fp8\n"),
     ("bad.yaml", "precision.dtype", "'fp8'", "fp32, tf32, bf16, fp16")),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    return trained_run(tmp_path_factory.getbasetemp())


def _snapshot(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, setup, words", [pytest.param(i, s, w, id=i) for i, s, w in CASES + RANGE_CASES + CHOICE_CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    case: str, setup: Setup, words: tuple[str, ...], shared, tmp_path, capsys, monkeypatch
) -> None:
    data, run = shared
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, data, run, monkeypatch)
    argv = setup(ctx)
    before = _snapshot(tmp_path, data, run)
    existing = set(tmp_path.rglob("*"))
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    after = _snapshot(tmp_path, data, run)
    assert {p: after.get(p) for p in before} == before, "a file that existed before was changed or removed"
    if case.startswith(("sweep-", "choice-")):  # refused before anything runs: no output folder, no scratch file
        assert set(tmp_path.rglob("*")) == existing, "something was written before the refusal"


def test_the_table_is_big_and_its_ids_unique():
    ids = [i for i, _, _ in CASES + RANGE_CASES + CHOICE_CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 50


# -- bad inputs that are not an exit 2 -----------------------------------------------------------------


def test_report_keeps_good_rows_and_names_bad_lines(tmp_path, capsys):
    run = tmp_path / "run"
    for b in (1, 2, 4):
        cfg = load_config([], ["loader.backend=torch", f"loader.batch_size={b}"])
        append_row(run / "results.jsonl", row_for("loader", cfg, {"images_per_s": 9.0}, env={}))
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    torn = lines[2][: len(lines[2]) // 2]  # a writer killed mid-line
    (run / "results.jsonl").write_text(lines[0] + "garbage in the middle\n" + lines[1] + torn)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.jsonl" in err[0], err
    assert "lines 2, 4" in err[0] and "keeps its 2 good rows" in err[0], err
    md = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "2 unreadable lines skipped (lines 2, 4)" in md and "Warning" in md
    assert len((tmp_path / "rep" / "results.csv").read_text().splitlines()) == 1 + 2  # the good rows stay


@pytest.fixture()
def run_copy(shared, tmp_path) -> tuple[Path, Path]:
    data, run = shared
    return data, Path(shutil.copytree(run, tmp_path / "run"))


def test_resume_passes_a_truncated_checkpoint_removes_a_stale_temp_and_says_so(run_copy, capsys):
    data, run = run_copy
    _truncate(run / "ckpt_00000030.pt")
    stale = run / ".ckpt_00000040.pt.tmp4242"
    stale.write_bytes(b"half a checkpoint")
    # train.iters and the intervals may change on a resume: they do not change what is trained
    over = tiny_overrides(data, run, iters=32, **{"train.ckpt_interval": 16, "train.log_interval": 4})
    assert main(["train", *over]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {run / 'ckpt_00000020.pt'} at iteration 20 of 32" in err
    warned = [ln for ln in err.splitlines() if "ckpt_00000030.pt" in ln]
    assert len(warned) == 1 and "ckpt_00000020.pt" in warned[0] and "not a readable checkpoint" in warned[0]
    assert any(".ckpt_00000040.pt.tmp4242" in ln and "interrupted" in ln for ln in err.splitlines()), err
    assert not stale.exists()
    assert load_config([run / "config.yaml"]).train.iters == 32
    assert load_checkpoint(run / "ckpt_00000032.pt")["iteration"] == 32
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in events if e["event"] == "resume"] == [20]


def test_fresh_starts_afresh_with_another_config(run_copy, capsys):
    data, run = run_copy
    over = tiny_overrides(data, run, iters=2, **{"model.base_width": 4, "train.eval_interval": 2})
    assert main(["train", *over, "--fresh"]) == 0
    err = capsys.readouterr().err
    assert "starting afresh" in err and "removed the previous run's 2 checkpoint(s)" in err
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000002.pt"]
    assert load_config([run / "config.yaml"]).model.base_width == 4
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == "start" and "resume" not in events
