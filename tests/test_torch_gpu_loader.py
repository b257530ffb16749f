"""The torch backend's GPU loader (torch_gpu_loader.py, device_transform.py), run on the CPU: the same code
with torchvision's CPU decoder in place of nvJPEG. Held to the Batch contract and, batch by batch over the
same plans (epochs, shards, scales that pad, eval sizes, labelIds), to the torch CPU loader's output."""

from __future__ import annotations

import threading

import pytest
import torch
from loader_fixtures import loader_cfg, write_prepared, write_raw

from cityseg_fast.config import IMAGENET_STD
from cityseg_fast.data.batch import check_batch
from cityseg_fast.data.cityscapes import find_samples
from cityseg_fast.data.factory import build_loader, loader_spec
from cityseg_fast.data.torch_gpu_loader import TorchGpuLoader
from cityseg_fast.errors import UserError

CPU = torch.device("cpu")
ONE_LEVEL = 1 / (255 * min(IMAGENET_STD))  # one 8-bit level after normalization, at its largest


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prep"), {"train": 8, "val": 3}, pattern="texture")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_raw(tmp_path_factory.mktemp("raw"), {"train": 8, "val": 3}, pattern="texture")


def gpu_path(root, split: str, *extra: str, rank: int = 0, world: int = 1, epoch: int = 0) -> list:
    """An epoch of the GPU loader's code on the CPU (built as the factory would, but on a CPU spec)."""
    cfg = loader_cfg(root, "torch", *extra)
    train = split == cfg.data.train_split
    loader = TorchGpuLoader(find_samples(root, split), loader_spec(cfg, train, rank, world, CPU), num_threads=2)
    loader.set_epoch(epoch)
    try:
        return list(loader)
    finally:
        loader.close()


def cpu_path(root, split: str, *extra: str, rank: int = 0, world: int = 1, epoch: int = 0) -> list:
    loader = build_loader(loader_cfg(root, "torch", "loader.num_workers=0", *extra), split, rank, world, device=CPU)
    loader.set_epoch(epoch)
    try:
        return list(loader)
    finally:
        loader.close()


CASES = {
    "train": ("train", ["data.scale_range=[0.4,1.6]"]),  # scales below 1 pad, above 1 crop
    "train-nchw": ("train", ["precision.channels_last=false"]),
    "eval": ("val", []),
    "eval-resized": ("val", ["data.eval_size=[48,96]", "data.eval_label_resize=true"]),
    "eval-resized-image-only": ("val", ["data.eval_size=[48,96]"]),
}


@pytest.mark.parametrize("layout", ["prepared", "raw"])  # raw: PNG images, labelIds
@pytest.mark.parametrize("case", list(CASES))
def test_same_plan_same_batches_as_the_torch_cpu_loader(prepared, raw, layout, case):
    root = prepared if layout == "prepared" else raw
    split, extra = CASES[case]
    channels_last = "precision.channels_last=false" not in extra
    gpu, cpu = gpu_path(root, split, *extra, epoch=2), cpu_path(root, split, *extra, epoch=2)
    assert len(gpu) == len(cpu) > 0
    for g, c in zip(gpu, cpu, strict=True):
        check_batch(g, "cpu", channels_last=channels_last)
        assert torch.equal(g.index, c.index) and torch.equal(g.target, c.target)
        assert g.image.shape == c.image.shape
        # float resize rounded vs torch's uint8 kernel: at most one level apart
        assert float((g.image - c.image).abs().max()) <= ONE_LEVEL * 1.001
        assert torch.equal(g.image == 0, c.image == 0)  # the same padding (no pixel normalizes to exactly 0)


def test_shards_and_epochs_follow_the_same_plan(prepared):
    for rank in range(2):
        for epoch in (0, 1):
            gpu = gpu_path(prepared, "train", rank=rank, world=2, epoch=epoch)
            cpu = cpu_path(prepared, "train", rank=rank, world=2, epoch=epoch)
            assert [b.index.tolist() for b in gpu] == [b.index.tolist() for b in cpu]
            assert all(torch.equal(g.target, c.target) for g, c in zip(gpu, cpu, strict=True))


def test_decode_only_gives_the_decoded_frames(prepared):
    gpu = gpu_path(prepared, "train", "loader.decode_only=true")
    cpu = cpu_path(prepared, "train", "loader.decode_only=true")
    for g, c in zip(gpu, cpu, strict=True):
        assert g.image.dtype == torch.uint8 and torch.equal(g.image, c.image) and g.target.numel() == 0


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("cityseg-")}


def test_an_abandoned_epoch_and_close_leave_no_thread(prepared):
    cfg = loader_cfg(prepared, "torch")
    loader = TorchGpuLoader(find_samples(prepared, "train"), loader_spec(cfg, True, 0, 1, CPU), num_threads=2)
    it = iter(loader)
    next(it)
    loader.set_epoch(1)
    assert len(list(loader)) == len(loader)  # the next epoch whole, the first one's producer stopped
    next(iter(loader))
    loader.close()
    assert not _threads()
    s = loader.stages
    assert s.images >= len(loader) * 2 + 2 and s.decode > 0 and s.transform > 0


def test_a_corrupt_jpeg_is_named(tmp_path):
    root = write_prepared(tmp_path / "bad", {"train": 4}, pattern="texture")
    victim = sorted((root / "train" / "images").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(UserError, match=victim.name):
        gpu_path(root, "train", "data.scale_range=[1.0,1.0]")
    assert not _threads()
