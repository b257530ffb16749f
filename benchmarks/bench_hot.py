"""pytest-benchmark suite for the hot pieces: confusion-matrix update, LUT mapping, one DALI CPU batch, one train step.

CI collects this with `--benchmark-disable` (each body runs once, so it keeps working); `make bench`
gives the numbers. Sizes are small on purpose: a 2-core CI machine runs them in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cityseg_fast.config import load_config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny prepared JPEG dataset (8 train frames at 128x256) written by the real synth + prepare."""
    from cityseg_fast.data.prepare import prepare_dataset
    from cityseg_fast.data.synthetic import write_synthetic

    base = tmp_path_factory.mktemp("hot")
    write_synthetic(base / "raw", train=8, val=0, test=0, size=(128, 256), seed=0, workers=1, progress=False)
    prepare_dataset(
        base / "raw",
        base / "prep",
        image_format="jpeg",
        quality=95,
        splits=("train",),
        workers=1,
        progress=False,
    )
    return base / "prep"


def test_confusion_matrix_update(benchmark):
    from cityseg_fast.engine.evaluate import ConfusionMatrix

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (2, 256, 512), generator=g)
    target[:, :8] = 255  # some ignored pixels
    pred = torch.randint(0, 19, (2, 256, 512), generator=g)
    cm = ConfusionMatrix(19, "cpu")
    benchmark(cm.update, pred, target)
    valid = int((target != 255).sum())
    assert int(cm.mat.sum()) % valid == 0 and int(cm.mat.sum()) >= valid


def test_label_lut_mapping(benchmark):
    from cityseg_fast.labels import ID_TO_TRAINID

    rng = np.random.default_rng(0)
    label_ids = rng.integers(0, 34, size=(1024, 2048), dtype=np.uint8)  # one full-resolution labelIds frame
    train_ids = benchmark(np.take, ID_TO_TRAINID, label_ids)
    assert train_ids.shape == label_ids.shape and train_ids.dtype == np.uint8
    assert train_ids[label_ids == 7].max(initial=0) == 0  # road -> trainId 0
    assert (train_ids[label_ids == 0] == 255).all()  # unlabeled -> ignore


def test_one_dali_cpu_batch(benchmark, prepared):
    from cityseg_fast.data.batch import check_batch
    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.data.plan import endless

    cfg = load_config(
        [],
        [
            f"data.root={prepared}",
            "loader.backend=dali",
            "loader.device=cpu",
            "loader.batch_size=4",
            "data.crop=[64,128]",
            "loader.num_threads=2",
        ],
    )
    loader = build_loader(cfg, "train", device=torch.device("cpu"))
    it = (b for _, b in endless(loader))  # across epochs: benchmark rounds outnumber the 2 batches of an epoch
    try:
        batch = benchmark(next, it)
        check_batch(batch, "cpu")
        assert tuple(batch.image.shape) == (4, 3, 64, 128)
    finally:
        loader.close()


def test_one_tiny_train_step(benchmark):
    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.engine.step import build_train_state, train_step

    cfg = load_config(
        [], ["model.name=unet_s16", "data.crop=[32,64]", "loader.batch_size=2", "loader.backend=synthetic"]
    )
    device = torch.device("cpu")
    state = build_train_state(cfg, device)
    batch = next(iter(build_loader(cfg, "train", device=device)))
    loss = benchmark(train_step, state, batch)
    assert torch.isfinite(loss).all()
