"""Loaders on a GPU: every DALI GPU graph against the CPU pipeline on the same plan, the hand-offs to cuda
(DALI on the GPU zero-copy, DALI on the CPU and the torch DataLoader through the side-stream prefetcher),
memory formats, and correctness while the compute stream is busy."""

from __future__ import annotations

import pytest
import torch
from gpu_fixtures import all_batches, gpu_cfg

from cityseg_fast.data.batch import check_batch
from cityseg_fast.data.factory import build_loader

pytestmark = pytest.mark.gpu
CPU = torch.device("cpu")
ONE_LEVEL = 1 / (255 * 0.229)  # one 8-bit level after normalization (the smallest std)

MODES = {
    "train-slice": ("train", ["loader.roi=slice"]),
    "train-resize": ("train", ["loader.roi=resize"]),
    "eval": ("val", []),
    "decode-only": ("train", ["loader.decode_only=true"]),
}


@pytest.mark.parametrize("labels", ["png", "npy", "raw"])
@pytest.mark.parametrize("mode", list(MODES))
def test_gpu_graph_agrees_with_the_cpu_pipeline(datasets, cuda, labels, mode):
    """The mixed decoder (fancy upsampling on) and DALI's GPU resize/normalize/pad against the same graph
    on CPU operators, batch by batch over the same plan: same samples, same padding, labels equal up to
    nearest-neighbour ties, images up to decoder and resampler rounding."""
    if labels == "npy" and mode == "decode-only":
        pytest.skip("decode-only reads no labels")
    split, extra = MODES[mode]
    common = ("loader.resampler=dali", *extra)
    gpu = all_batches(gpu_cfg(datasets[labels], "dali", "loader.device=gpu", *common), split, cuda)
    cpu = all_batches(gpu_cfg(datasets[labels], "dali", "loader.device=cpu", *common), split, CPU)
    assert len(gpu) == len(cpu) > 0
    for g, c in zip(gpu, cpu, strict=True):
        assert torch.equal(g.index, c.index)
        assert g.image.shape == c.image.shape and g.target.shape == c.target.shape
        diff = (g.image - c.image).abs()
        if mode == "decode-only":  # uint8 pixels
            assert float(diff.mean()) < 1.0 and float(diff.max()) <= 16
            continue
        if mode == "eval":
            assert torch.equal(g.target, c.target)
            assert float(diff.mean()) < 0.5 * ONE_LEVEL and float(diff.max()) < 8 * ONE_LEVEL
        else:
            assert float((g.target == c.target).float().mean()) > 0.99
            assert float(diff.mean()) < 0.05
        assert bool(((g.image == 0) == (c.image == 0)).float().mean() > 0.999)  # the same padding


HANDOFFS = {
    "dali-gpu": ("dali", ["loader.device=gpu"]),
    "dali-cpu": ("dali", ["loader.device=cpu"]),  # uint8 to pinned memory, normalized on the GPU
    "dali-cpu-dali-resize": ("dali", ["loader.device=cpu", "loader.resampler=dali"]),
    "torch": ("torch", []),
}


@pytest.mark.parametrize("handoff", list(HANDOFFS))
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("split", ["train", "val"])
def test_handoff_to_cuda_contract_and_layout(datasets, cuda, handoff, channels_last, split):
    backend, extra = HANDOFFS[handoff]
    cfg = gpu_cfg(datasets["png"], backend, *extra, f"precision.channels_last={str(channels_last).lower()}")
    loader = build_loader(cfg, split, device=cuda)
    try:
        n = 0
        for b in loader:
            check_batch(b, "cuda", channels_last=channels_last)
            n += 1
        assert n == len(loader) > 0
    finally:
        loader.close()


@pytest.mark.parametrize("handoff", list(HANDOFFS))
def test_batches_are_right_while_the_compute_stream_is_busy(datasets, cuda, handoff):
    """Each batch is used on the compute stream behind a long matmul (the step of a real run). If a
    prefetched copy or a DALI output were not ordered with the compute stream, or a buffer were reused
    while still in use, the result would differ from a run on an idle GPU."""
    backend, extra = HANDOFFS[handoff]
    cfg = gpu_cfg(datasets["png"], backend, *extra)
    heavy = torch.randn(4096, 4096, device=cuda)

    def epoch(busy: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = build_loader(cfg, "train", device=cuda)
        loader.set_epoch(3)
        seen = []
        try:
            for b in loader:
                if busy:
                    for _ in range(8):  # ~10 ms of work queued before the batch is read
                        heavy @ heavy
                seen.append((b.image.sum(dim=(1, 2, 3)), b.target.float().mean(dim=(1, 2))))
        finally:
            loader.close()
        torch.cuda.synchronize()
        return [(i.cpu(), t.cpu()) for i, t in seen]

    idle, busy = epoch(False), epoch(True)
    assert len(idle) == len(busy) > 0
    for (a, b), (c, d) in zip(idle, busy, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_cpu_loaders_on_cuda_agree_with_cpu_delivery(datasets, cuda):
    """The same plan delivered to cuda and to the CPU: identical targets and images (the normalization
    runs on another device, so up to float rounding)."""
    for backend, extra in (HANDOFFS["dali-cpu"], HANDOFFS["torch"]):
        cfg = gpu_cfg(datasets["npy"], backend, *extra)
        on_gpu, on_cpu = all_batches(cfg, "train", cuda), all_batches(cfg, "train", CPU)
        for g, c in zip(on_gpu, on_cpu, strict=True):
            assert torch.equal(g.target, c.target) and torch.equal(g.index, c.index)
            assert float((g.image - c.image).abs().max()) < 1e-4


def test_doctor_probe_runs_the_gpu_graphs():
    from cityseg_fast.data.dali import probe

    info = probe()
    assert info["gpu_decode"] is True and info["gpu_graphs"] == {"train": True, "eval": True}, info
