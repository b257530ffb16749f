"""Loader backends (dali on the CPU, torch, synthetic) against the Batch contract, pairing and sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loader_fixtures import classes_of, identify, loader_cfg, sample_number, write_prepared, write_raw

from cityseg_fast.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from cityseg_fast.data.batch import check_batch
from cityseg_fast.data.factory import build_loader
from cityseg_fast.data.plan import Aug, crop_geometry, eval_batches, train_batches
from cityseg_fast.errors import UserError

CPU = torch.device("cpu")


make_cfg = loader_cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prep"), {"train": 10, "val": 5})


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_raw(tmp_path_factory.mktemp("raw"), {"train": 10, "val": 5})


def pixel_rgb(image: torch.Tensor, y: int = 0, x: int = 0) -> np.ndarray:
    """Un-normalize one pixel of a 3 x H x W image back to 0..255 RGB."""
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    return image[:, y, x].cpu().numpy() * std + mean


# -- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["dali", "torch", "synthetic"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_batch_contract(prepared, backend, split):
    loader = build_loader(make_cfg(prepared, backend), split, device=CPU)
    try:
        batches = list(loader)
        assert len(batches) == len(loader) > 0
        for b in batches:
            check_batch(b, "cpu")
            if split == "train":
                assert tuple(b.image.shape) == (2, 3, 32, 64) and tuple(b.target.shape) == (2, 32, 64)
                # normalized: roughly zero-centred values, not 0..255 pixels
                assert b.image.abs().max() < 10
            else:
                assert b.index is not None and b.index.dtype == torch.int64
                assert tuple(b.image.shape) == (1, 3, 64, 128)  # synthetic too: the dataset's frame size
                assert tuple(b.target.shape) == (1, 64, 128)
        assert isinstance(loader.description, str) and loader.description.startswith(backend)
        if backend != "synthetic":
            assert len(loader.samples) == (10 if split == "train" else 5)
    finally:
        loader.close()


@pytest.mark.parametrize("backend", ["dali", "torch", "synthetic"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_model_receives_the_memory_format_precision_names(prepared, backend, channels_last):
    """precision.channels_last=false must run NCHW activations, not NHWC input against NCHW weights:
    the format the model's forward receives, from every loader, in training and evaluation."""
    from cityseg_fast.engine.step import build_train_state, eval_step, train_step

    flag = str(channels_last).lower()
    cfg = make_cfg(prepared, backend, f"precision.channels_last={flag}", "model.name=unet_s16", "model.base_width=2")
    state = build_train_state(cfg, CPU)
    seen = []
    state.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    for split in ("train", "val"):
        loader = build_loader(cfg, split, device=CPU)
        try:
            batch = next(iter(loader))
            check_batch(batch, "cpu", channels_last=channels_last)
            train_step(state, batch) if split == "train" else eval_step(state.model, batch, cfg)
        finally:
            loader.close()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert len(seen) == 2 and all(x.is_contiguous(memory_format=fmt) for x in seen)
    assert not any(x.is_contiguous(memory_format=torch.channels_last) for x in seen) or channels_last


def test_synthetic_epoch_length(prepared):
    assert len(build_loader(make_cfg(prepared, "synthetic"), "train", device=CPU)) == 10 // 2
    no_root = load_config([], ["loader.backend=synthetic", "data.crop=[8,16]"])
    assert len(build_loader(no_root, "train", device=CPU)) == 100


def test_factory_errors(prepared):
    with pytest.raises(UserError, match="loader.backend"):
        build_loader(make_cfg(prepared, "nope"), "train", device=CPU)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="loader.device=gpu"):
            build_loader(make_cfg(prepared, "dali", "loader.device=gpu"), "train", device=CPU)
    for backend in ("torch", "dali"):
        with pytest.raises(UserError, match="batch_size"):
            build_loader(make_cfg(prepared, backend, "loader.batch_size=8"), "train", 0, 2, device=CPU)


# -- pairing, labels, epochs and shards ------------------------------------------------------------


def epoch_samples(loader, epoch: int) -> list[tuple[int, tuple, frozenset]]:
    """[(sample number, top-left rgb, label values)] of one epoch, checking pairing as it goes."""
    loader.set_epoch(epoch)
    seen = []
    n = 15  # fixture samples are numbered 0..14 across both splits
    for b in loader:
        check_batch(b, "cpu")
        for i in range(b.image.shape[0]):
            k = sample_number(loader.samples[int(b.index[i])].stem) if b.index is not None else None
            rgb = pixel_rgb(b.image[i])
            values = frozenset(b.target[i].unique().tolist())
            who = identify(rgb, n)
            # label values after augmentation: a subset of this sample's classes and ignore
            assert values <= set(classes_of(who)) | {255}, (who, values)
            assert values - {255}, f"sample {who}: crop holds only ignore pixels"
            seen.append((who, tuple(np.round(rgb).astype(int)), values))
            if k is not None:
                assert k == who, f"image of sample {who} paired with index of sample {k}"
    return seen


@pytest.mark.parametrize(
    "backend,layout,extra",
    [
        ("dali", "prepared", ()),  # on the CPU: DALI decodes, torch resizes (resampler auto)
        ("dali", "raw", ()),
        ("dali", "raw", ("loader.resampler=dali",)),  # DALI's own resize: the GPU graph, run on the CPU
        ("torch", "prepared", ()),
    ],
)
def test_pairing_over_shuffled_epochs_and_shards(prepared, raw, backend, layout, extra):
    root = prepared if layout == "prepared" else raw
    cfg = make_cfg(root, backend, "data.scale_range=[0.5,2.0]", *extra)
    loaders = [build_loader(cfg, "train", r, 2, device=CPU) for r in range(2)]
    try:
        orders = []
        for epoch in range(3):
            per_rank = [[k for k, _, _ in epoch_samples(ld, epoch)] for ld in loaders]
            assert [len(p) for p in per_rank] == [4, 4]  # 10 samples / 2 ranks = 5, batch 2, drop last
            flat = per_rank[0] + per_rank[1]
            assert len(set(flat)) == len(flat), "a sample appeared on both ranks in one epoch"
            orders.append(flat)
        assert orders[0] != orders[1] or orders[1] != orders[2], "epochs are not reshuffled"
        # set_epoch is reproducible: the same epoch again gives the same samples and the same crops
        again = epoch_samples(loaders[0], 1)
        first = epoch_samples(loaders[0], 1)
        assert again == first
    finally:
        for ld in loaders:
            ld.close()


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_eval_shards_cover_split_exactly_once(prepared, backend, batch_size):
    cfg = make_cfg(prepared, backend, f"loader.eval_batch_size={batch_size}")
    counts: list[int] = []
    lens = []
    for rank in range(2):
        loader = build_loader(cfg, "val", rank, 2, device=CPU)
        lens.append(len(loader))
        for b in loader:
            check_batch(b, "cpu")
            for i, idx in enumerate(b.index.tolist()):
                if idx >= 0:  # -1: padding, a repeat that evaluate masks out (test_evaluate.py)
                    counts.append(idx)  # the right image for the index:
                    assert identify(pixel_rgb(b.image[i]), 15) == sample_number(loader.samples[idx].stem)
        assert loader.num_samples == (3 if rank == 0 else 2)
        loader.close()
    assert sorted(counts) == list(range(5)), "each of the 5 images exactly once across ranks"
    assert lens[0] == lens[1], "ranks must run the same number of eval steps"


def test_abandoned_epoch_then_next(prepared):
    """A consumer that stops early (benchmarks, max iters) must not break the next epoch."""
    loader = build_loader(make_cfg(prepared, "dali"), "train", device=CPU)
    it = iter(loader)
    next(it)
    del it
    loader.set_epoch(1)
    assert len(list(loader)) == len(loader)
    loader.close()


# -- plan --------------------------------------------------------------------------------------


def test_crop_geometry_stays_inside_and_fits_crop():
    rng = np.random.default_rng(0)
    for _ in range(500):
        H, W = int(rng.integers(8, 300)), int(rng.integers(8, 300))
        ch, cw = int(rng.integers(4, 200)), int(rng.integers(4, 200))
        aug = Aug(
            float(rng.uniform(0.25, 3)), float(rng.random()), float(rng.random()), bool(rng.random() < 0.5)
        )
        g = crop_geometry((H, W), (ch, cw), aug)
        assert 0 <= g.y and g.y + g.h <= H and 0 <= g.x and g.x + g.w <= W
        assert 1 <= g.out_h <= ch and 1 <= g.out_w <= cw
        assert abs(g.out_h - g.h * aug.scale) <= max(1.0, aug.scale) + 1e-9
        if g.h < H and g.w < W:  # a window inside the frame fills the crop: no padding
            assert (g.out_h, g.out_w) == (ch, cw)


def test_plans_deterministic_and_sharded():
    a = train_batches(11, 0, 2, 3, 7, 2, (0.5, 2.0), 0.5)
    assert a == train_batches(11, 0, 2, 3, 7, 2, (0.5, 2.0), 0.5)
    assert a != train_batches(11, 0, 2, 4, 7, 2, (0.5, 2.0), 0.5)
    e = [eval_batches(7, r, 3, 2) for r in range(3)]
    idx = sorted(it.index for batches in e for b in batches for it in b if it.index >= 0)
    assert idx == list(range(7)) and len({len(b) for b in e}) == 1


# -- cityseg bench loader ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra", [["--loader", "dali"], ["--loader", "dali", "--decode-only"], ["--loader", "synthetic"]]
)
def test_bench_loader_cli_json(prepared, capsys, extra):
    import json

    from cityseg_fast.cli import main

    argv = ["bench", "loader", "--data", str(prepared), "--crop", "32x64", "--batch-size", "2"]
    rc = main([*argv, "--iters", "3", "--warmup", "1", "--json", *extra, "loader.num_threads=1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    row = json.loads(out[0])
    m = row["metrics"]
    assert row["scenario"] == "loader" and m["images_per_s"] > 0 and m["latency_ms_p50"] > 0
    # CPU utilisation only over a window long enough for /proc's 10 ms ticks; 3 tiny batches are not.
    assert m["cpu_util"] is None if m["wall_s"] < 0.5 else 0 <= m["cpu_util"]
    assert row["point"].get("decode_only", False) == ("--decode-only" in extra) and row["point"]["loader"] == extra[1]


def test_bench_loader_cli_bad_input(tmp_path, capsys):
    from cityseg_fast.cli import main

    rc = main(["bench", "loader", "--data", str(tmp_path / "nope"), "--loader", "dali", "--iters", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_train_pads_small_frames_to_the_crop(raw, backend):
    """Scaled frames smaller than the crop: every batch still has the crop's shape (drop-last fixed
    shapes, so torch.compile never recompiles), padded with image 0 and label 255."""
    cfg = make_cfg(raw, backend, "data.crop=[48,96]", "data.scale_range=[0.25,0.5]")
    loader = build_loader(cfg, "train", device=CPU)
    try:
        for b in loader:
            check_batch(b, "cpu")
            assert tuple(b.image.shape) == (2, 3, 48, 96) and tuple(b.target.shape) == (2, 48, 96)
            # a 64x128 frame at scale <= 0.5 covers at most 32x64 of the crop: the rest is padding
            assert bool((b.image[:, :, 32:, :] == 0).all()) and bool((b.image[:, :, :, 64:] == 0).all())
            assert bool((b.target[:, 32:, :] == 255).all()) and bool((b.target[:, :, 64:] == 255).all())
    finally:
        loader.close()
