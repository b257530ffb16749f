"""The torch backend's decoders (loader.decoder: torchvision.io or PIL), their rows and how reports name them.

Both decode the same JPEGs with libjpeg-turbo, so the batches must be identical; palette labels keep their
indices either way; the loader rows split the CPU time per image into decode, transform and hand-off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from loader_fixtures import loader_cfg, write_prepared, write_raw
from PIL import Image

from cityseg_fast.data.batch import check_batch
from cityseg_fast.data.decode import decode_label, whole
from cityseg_fast.data.factory import build_loader
from cityseg_fast.errors import UserError
from cityseg_fast.results import point_for

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prep"), {"train": 6, "val": 3}, pattern="texture")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_raw(tmp_path_factory.mktemp("raw"), {"train": 6, "val": 3}, pattern="texture")


def epoch(root, split: str, *extra: str) -> list:
    loader = build_loader(loader_cfg(root, "torch", "loader.num_workers=0", *extra), split, device=CPU)
    try:
        batches = list(loader)
        assert len(batches) == len(loader) > 0
        return batches
    finally:
        loader.close()


@pytest.mark.parametrize("layout", ["prepared", "raw"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_torchvision_and_pil_give_the_same_batches(prepared, raw, layout, split):
    """Same libjpeg-turbo (JPEG) and libpng/zlib (PNG) underneath: identical pixels, labels, padding."""
    root = prepared if layout == "prepared" else raw
    common = ("data.scale_range=[0.4,1.6]", "data.eval_size=[48,96]")
    tv, pil = epoch(root, split, "loader.decoder=torchvision", *common), epoch(root, split, "loader.decoder=pil", *common)
    for a, b in zip(tv, pil, strict=True):
        check_batch(a, "cpu")
        assert torch.equal(a.image, b.image) and torch.equal(a.target, b.target)


def test_decode_only_is_the_same_frames(prepared):
    tv = epoch(prepared, "train", "loader.decoder=torchvision", "loader.decode_only=true")
    pil = epoch(prepared, "train", "loader.decoder=pil", "loader.decode_only=true")
    for a, b in zip(tv, pil, strict=True):
        assert a.image.dtype == torch.uint8 and torch.equal(a.image, b.image)


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_a_palette_labels_indices_are_its_ids(tmp_path, decoder):
    """A palette PNG label whose palette maps every index to another grey: the loader reads the indices
    (as cityscapes.read_label), not the colours (torchvision's GRAY mode would give the colours)."""
    ids = np.random.default_rng(0).integers(0, 19, (16, 24)).astype(np.uint8)
    im = Image.fromarray(ids, "P")
    im.putpalette([(255 - i) % 256 for i in range(256) for _ in range(3)])
    im.save(tmp_path / "pal.png")
    Image.fromarray(ids, "L").save(tmp_path / "grey.png")
    for name in ("pal.png", "grey.png"):
        got = whole(decode_label(tmp_path / name, decoder))
        assert torch.equal(got, torch.from_numpy(ids)), name


def test_decoder_errors_name_the_key_and_the_file(prepared, tmp_path):
    with pytest.raises(UserError, match="loader.decoder"):
        build_loader(loader_cfg(prepared, "torch", "loader.decoder=turbo"), "train", device=CPU)
    with pytest.raises(UserError, match="loader.device=gpu"):
        build_loader(loader_cfg(prepared, "torch", "loader.device=gpu"), "train", device=CPU)
    bad = write_prepared(tmp_path / "bad", {"train": 2}, pattern="texture")
    victim = next((bad / "train" / "images").iterdir())
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(UserError, match=victim.name):
        epoch(bad, "train", "loader.decoder=torchvision", "data.scale_range=[1.0,1.0]")


def test_the_decoder_is_in_the_point_only_when_not_the_default(prepared):
    tv = point_for("loader", loader_cfg(prepared, "torch", "loader.decoder=torchvision"))
    pil = point_for("loader", loader_cfg(prepared, "torch", "loader.decoder=pil"))
    assert "decoder" not in tv and pil["decoder"] == "pil"
    assert "decoder" not in point_for("loader", loader_cfg(prepared, "dali", "loader.decoder=pil"))


@pytest.mark.parametrize("decoder,name", [("torchvision", "torchvision.io"), ("pil", "PIL")])
def test_bench_loader_cli_runs_each_decoder_and_splits_cpu_time(prepared, capsys, tmp_path, decoder, name):
    """`cityseg bench loader --loader torch loader.decoder=X` on the CPU: a row naming its decoder, with
    the CPU ms per image split into decode, transform and hand-off, adding up to about the whole (the
    stages are the batches handed out in the window, the whole is the CPU spent in it: close, not equal;
    a one-off cost counted as a stage, such as the decoder's import, would be far off)."""
    from cityseg_fast.cli import main

    results = tmp_path / "results.jsonl"
    argv = ["bench", "loader", "--data", str(prepared), "--loader", "torch", "--crop", "32x64", "--batch-size", "2",
            "--iters", "4", "--warmup", "1", "--json", "--append", str(results), f"loader.decoder={decoder}"]  # fmt: skip
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = row["metrics"]
    assert row["status"] == "ok" and m["loader_decoder"] == name and f"decoder {name}" in m["loader_description"]
    parts = [m[f"cpu_ms_per_image_{k}"] for k in ("decode", "transform", "handoff")]
    assert all(p > 0 for p in parts) and sum(parts) < 3 * m["cpu_ms_per_image"] + 2

    from cityseg_fast.report.build import build_report

    md = build_report([tmp_path], tmp_path / "report").read_text()
    assert f"torch [{name}]" in md  # the loader table names the decoder each row ran
    assert "decode / transform / hand-off (CPU ms/img)" in md
