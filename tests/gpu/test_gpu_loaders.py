"""Loaders on a GPU: every DALI GPU graph against the CPU pipeline on the same plan, torch's nvJPEG loader
against its CPU loader on the same plan, the hand-offs to cuda (DALI on the GPU zero-copy, DALI on the CPU
and the torch DataLoader through the side-stream prefetcher, the nvJPEG loader through its producer's
event), memory formats, correctness when the producer is slow and buffers cycle, that GPU decoding really
ran on the GPU, and memory baselines that a second loader in the same process does not inherit."""

from __future__ import annotations

import pytest
import torch
from gpu_fixtures import all_batches, assert_decoders_agree, gpu_cfg, run_child

from cityseg_fast.data.batch import check_batch
from cityseg_fast.data.factory import build_loader
from cityseg_fast.data.plan import endless

pytestmark = pytest.mark.gpu
CPU = torch.device("cpu")

MODES = {
    "train-slice": ("train", ["loader.roi=slice"]),
    "train-resize": ("train", ["loader.roi=resize"]),
    "eval": ("val", []),
    "decode-only": ("train", ["loader.decode_only=true"]),
}
# decode-only reads no labels: one label format is enough for it (no test skips: the session forbids it)
GRAPHS = [(labels, mode) for labels in ("png", "npy", "raw") for mode in MODES if mode != "decode-only" or labels == "png"]


def _compare(gpu: list, cpu: list, mode: str) -> None:
    """Two loaders' epochs over one plan: same samples, shapes and padding, labels equal up to nearest-
    neighbour ties, images up to the decoders' and resamplers' differences (assert_decoders_agree)."""
    assert len(gpu) == len(cpu) > 0
    for g, c in zip(gpu, cpu, strict=True):
        assert torch.equal(g.index, c.index)
        assert g.image.shape == c.image.shape and g.target.shape == c.target.shape
        assert_decoders_agree(g.image, c.image, uint8=mode == "decode-only")
        if mode == "decode-only":
            continue
        if mode == "eval":
            assert torch.equal(g.target, c.target)
        else:
            assert float((g.target == c.target).float().mean()) > 0.99
        assert bool(((g.image == 0) == (c.image == 0)).float().mean() > 0.999)  # the same padding


@pytest.mark.parametrize("labels,mode", GRAPHS)
def test_gpu_graph_agrees_with_the_cpu_pipeline(datasets, cuda, labels, mode):
    """The mixed decoder (fancy upsampling on) and DALI's GPU resize/normalize/pad against the same graph
    on CPU operators, batch by batch over the same plan."""
    split, extra = MODES[mode]
    common = ("loader.resampler=dali", *extra)
    gpu = all_batches(gpu_cfg(datasets[labels], "dali", "loader.device=gpu", *common), split, cuda)
    cpu = all_batches(gpu_cfg(datasets[labels], "dali", "loader.device=cpu", *common), split, CPU)
    _compare(gpu, cpu, mode)


@pytest.mark.parametrize("labels,mode", [(lab, m) for lab, m in GRAPHS if m != "train-resize"])
def test_torch_nvjpeg_loader_agrees_with_the_torch_cpu_loader(datasets, cuda, labels, mode):
    """torch's GPU loader (batched nvJPEG, torch ops on the GPU) against the DataLoader with torchvision.io
    on the CPU, over the same plan: the same crops, flips, scales, labels and padding."""
    split, extra = MODES[mode]
    extra = [e for e in extra if not e.startswith("loader.roi")]
    probe = build_loader(gpu_cfg(datasets[labels], "torch", "loader.device=gpu", *extra), split, device=cuda)
    assert probe.decoder == "torchvision.io nvJPEG" and next(iter(probe)).image.is_cuda
    probe.close()
    gpu = all_batches(gpu_cfg(datasets[labels], "torch", "loader.device=gpu", *extra), split, cuda)
    cpu = all_batches(gpu_cfg(datasets[labels], "torch", *extra), split, CPU)
    _compare(gpu, cpu, mode)


HANDOFFS = {
    "dali-gpu": ("dali", ["loader.device=gpu"]),
    "dali-cpu": ("dali", ["loader.device=cpu"]),  # uint8 to pinned memory, normalized on the GPU
    "dali-cpu-dali-resize": ("dali", ["loader.device=cpu", "loader.resampler=dali"]),
    "torch": ("torch", []),
    "torch-nvjpeg": ("torch", ["loader.device=gpu"]),
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


SLOW_CYCLES = 20_000_000  # torch.cuda._sleep: ~10 ms of the producer's stream before each batch


def _slow_producers(monkeypatch) -> None:
    """Delay every batch's copy and kernels on the producer's stream (the prefetcher's side stream, the
    nvJPEG loader's stream): a consumer that did not wait for them would read unwritten buffers."""
    from cityseg_fast.data.handoff import CudaPrefetcher
    from cityseg_fast.data.torch_gpu_loader import TorchGpuLoader

    real_next, real_batch = CudaPrefetcher._next, TorchGpuLoader._batch

    def slow_next(self):
        with torch.cuda.stream(self.stream):
            torch.cuda._sleep(SLOW_CYCLES)
        return real_next(self)

    def slow_batch(self, *args):
        torch.cuda._sleep(SLOW_CYCLES)  # the producer thread runs it on the loader's stream
        return real_batch(self, *args)

    monkeypatch.setattr(CudaPrefetcher, "_next", slow_next)
    monkeypatch.setattr(TorchGpuLoader, "_batch", slow_batch)


@pytest.mark.parametrize("handoff", list(HANDOFFS))
def test_batches_are_right_when_the_producer_is_slow_and_buffers_cycle(datasets, cuda, handoff, monkeypatch):
    """Each batch is read on the compute stream as soon as it is handed out, and read again once all are
    in: against an unhurried run, with the producer slowed (a missing wait shows: the read comes before
    the write) over 4x the queue depth of batch-1 batches across two epochs (so the loader's buffers are
    reused: one handed out again while still held would have changed by the second read). DALI's own
    stream cannot be slowed from outside: for dali-gpu only the buffer cycling is tested."""
    backend, extra = HANDOFFS[handoff]
    cfg = gpu_cfg(datasets["png"], backend, *extra, "loader.batch_size=1", "loader.prefetch_queue_depth=2",
                  "loader.prefetch_factor=2")  # fmt: skip
    n = 16  # 8 training frames a epoch, batch 1: two epochs, 4x DALI's queue depth and the prefetch depth

    def run() -> tuple[list, list]:
        loader = build_loader(cfg, "train", device=cuda)
        batches = endless(loader, epoch=3)
        held, first = [], []
        try:
            for _ in range(n):
                b = next(batches)[1]
                first.append((b.image.double().sum(dim=(1, 2, 3)), b.target.sum(dim=(1, 2))))  # right away
                held.append(b)
        finally:
            batches.close()
            loader.close()
        again = [(b.image.double().sum(dim=(1, 2, 3)), b.target.sum(dim=(1, 2))) for b in held]
        torch.cuda.synchronize()
        return [tuple(t.cpu() for t in p) for p in first], [tuple(t.cpu() for t in p) for p in again]

    calm_first, _ = run()
    _slow_producers(monkeypatch)
    slow_first, slow_again = run()
    assert len(calm_first) == len(slow_first) == n
    for (a, b), (c, d), (e, f) in zip(calm_first, slow_first, slow_again, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d), "a batch was read before it was written"
        assert torch.equal(c, e) and torch.equal(d, f), "a held batch's buffer was reused"


def test_cpu_loaders_on_cuda_agree_with_cpu_delivery(datasets, cuda):
    """The same plan delivered to cuda and to the CPU: identical targets and images (the normalization
    runs on another device, so up to float rounding)."""
    for backend, extra in (HANDOFFS["dali-cpu"], HANDOFFS["torch"]):
        cfg = gpu_cfg(datasets["npy"], backend, *extra)
        on_gpu, on_cpu = all_batches(cfg, "train", cuda), all_batches(cfg, "train", CPU)
        for g, c in zip(on_gpu, on_cpu, strict=True):
            assert torch.equal(g.target, c.target) and torch.equal(g.index, c.index)
            assert float((g.image - c.image).abs().max()) < 1e-4


def test_doctor_probe_decodes_on_the_gpu_not_in_a_cpu_fallback():
    """The probe's GPU graphs ran, and in a fresh process (nothing else loaded it) DALI's nvJPEG was loaded
    to run them: a `mixed` decoder that could not find libnvjpeg falls back to the CPU and still runs. The
    probe names that nvJPEG's version and the hardware decoder (A100/H100/H200: NVJPG engines), and a DALI
    GPU loader's description and row say the same after its first batch."""
    got = run_child("""
        import tempfile
        from pathlib import Path
        import torch
        from cityseg_fast.bench.loader_bench import decode_metrics
        from cityseg_fast.data.dali.loader import DaliLoader
        from cityseg_fast.data.dali.probe import _tiny_samples, probe
        from cityseg_fast.data.plan import LoaderSpec
        info = probe()
        samples = _tiny_samples(Path(tempfile.mkdtemp()))
        spec = LoaderSpec(train=True, batch_size=2, crop=(32, 64), scale_range=(0.5, 1.5), flip_prob=0.5,
                          mean=(0.5,) * 3, std=(0.5,) * 3, eval_size=None, eval_label_resize=False, rank=0,
                          world_size=1, seed=0, device=torch.device("cuda", 0))
        loader = DaliLoader(samples, spec, dali_device="gpu", num_threads=1, prefetch_queue_depth=1,
                            hw_decoder_load=0.5)
        before = loader.description
        next(iter(loader))
        print(json.dumps({"info": {k: v for k, v in info.items() if k != "error"}, "error": info["error"],
                          "nvjpeg": nvjpeg_mapped(), "gpu": torch.cuda.get_device_name(0),
                          "before": before, "after": loader.description, "row": decode_metrics(loader)}))
        loader.close()
    """)
    info = got["info"]
    assert info["gpu_decode"] is True and info["gpu_graphs"] == {"train": True, "eval": True}, got
    assert got["nvjpeg"], "DALI's mixed decoder ran without nvJPEG loaded: a CPU fallback"
    version = info["nvjpeg_version"]
    assert version and all(p.isdigit() for p in version.split(".")), got
    assert info["hw_decoder"] == bool(info["hw_decoder_engines"] or info["hw_decoder_engines"] is None), got
    if any(name in got["gpu"] for name in ("A100", "H100", "H200")):  # GPUs with NVJPG engines
        assert info["hw_decoder"] is True and info["hw_decoder_engines"] >= 1, got
    assert "nvjpeg" not in got["before"] and f"nvjpeg {version}" in got["after"], got
    assert got["row"]["nvjpeg_version"] == version and got["row"]["hw_decoder"] == info["hw_decoder"], got


def test_dali_gpu_memory_baseline_is_not_inherited_by_the_next_loader(datasets):
    """Two DALI GPU loaders measured in one process: DALI keeps its pool after the first, so without a
    release before the second the second's own GPU memory would read as (about) nothing."""
    from cityseg_fast.bench.loader_bench import measure_loader

    cfg = gpu_cfg(datasets["npy"], "dali", "loader.device=gpu", "loader.num_threads=2")
    first, second = measure_loader(cfg, iters=5, warmup=2), measure_loader(cfg, iters=5, warmup=2)
    assert first["loader_gpu_mem_mib"] > 0, first
    assert second["loader_gpu_mem_mib"] > 0.5 * first["loader_gpu_mem_mib"], (first, second)
