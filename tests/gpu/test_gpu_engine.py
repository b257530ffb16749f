"""The engine on a GPU: no host sync inside train steps and evaluation, the bench subprocess rows (memory,
NVML, MFU, recompiles) for bf16 / fp16 with and without compile, max-autotune after setup_precision,
and a compiled bf16 FCN-R50 training run with eval and checkpoint, resumed; fp16 with a finite scale."""

from __future__ import annotations

import json

import pytest
import torch
from engine_fixtures import run_cli, write_tiny_cityscapes
from gpu_fixtures import gpu_cfg, run_child

from cityseg_fast.config import load_config

pytestmark = pytest.mark.gpu
SMALL = ["model.name=unet_s16", "model.base_width=16", "data.crop=[128,256]", "loader.batch_size=4"]


def test_bf16_train_steps_never_sync(cuda):
    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.engine.step import build_train_state, train_step

    cfg = load_config([], [*SMALL, "precision.dtype=bf16", "loader.backend=synthetic"])
    state = build_train_state(cfg, cuda)
    batch = next(iter(build_loader(cfg, "train", device=cuda)))
    train_step(state, batch)  # lazy initialisation (cuBLAS handles, autotuning) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            loss = train_step(state, batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("backend,extra", [("synthetic", []), ("dali", ["loader.device=gpu"])])
def test_evaluation_loop_never_syncs(datasets, cuda, backend, extra):
    """The eval loop (prediction, padding mask, confusion matrix) without a single host sync; the
    result is read once afterwards. DALI's GPU loader hands its outputs over without one too."""
    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.engine.evaluate import ConfusionMatrix, accumulate
    from cityseg_fast.models import model_from_config

    cfg = gpu_cfg(datasets["png"], backend, *extra, "model.name=unet_s16", "model.base_width=8")
    model = model_from_config(cfg).to(cuda).to(memory_format=torch.channels_last).eval()
    loader = build_loader(cfg, "val", device=cuda)
    cm = ConfusionMatrix(19, cuda)
    accumulate(model, loader, cfg, cm)  # warm-up epoch: cuDNN and DALI initialise
    torch.cuda.synchronize()
    cm.reset()
    torch.cuda.set_sync_debug_mode("error")
    try:
        images = accumulate(model, loader, cfg, cm)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        loader.close()
    assert int(images) == 4 and int(cm.mat.sum()) > 0


def _bench(scenario: str, *overrides: str) -> dict:
    p = run_cli("bench", scenario, "--json", *overrides, timeout=420)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("compile_mode", ["off", pytest.param("default", marks=pytest.mark.slow)])
def test_bench_model_rows_on_a_gpu(dtype, compile_mode):
    row = _bench("model", *SMALL, f"precision.dtype={dtype}", f"precision.compile={compile_mode}",
                 "bench.iters=20", "bench.warmup=5", "bench.sample_interval_s=0.02")  # fmt: skip
    assert row["status"] == "ok", row["error"]
    m = row["metrics"]
    assert m["device"] == "cuda" and m["images_per_s"] > 0
    assert m["mem_torch_peak_allocated_mib"] > 0 and m["mem_torch_peak_reserved_mib"] > 0
    assert m["nvml_samples"] > 0 and m["mem_nvml_used_mib"] > 0
    assert m["mfu"] is not None and 0 < m["mfu"] < 1
    if compile_mode != "off":  # with compile off nothing compiles: a recompile count says nothing there
        assert m["steady_recompiles"] == 0
        assert m["compile_s"] is not None and m["compile_s"] > 0


def test_bench_e2e_and_infer_rows_on_a_gpu(datasets):
    """The e2e row of DALI on the GPU, measured in a fresh process that then shows DALI's nvJPEG loaded
    (the point's loader_device only echoes the config: a mixed decoder fallen back to the CPU says 'gpu'
    too); the infer row through the CLI."""
    common = [*SMALL, "precision.dtype=bf16", "bench.iters=10", "bench.warmup=3", "bench.sample_interval_s=0.02"]
    over = [*common, f"data.root={datasets['npy']}", "loader.backend=dali", "loader.device=gpu"]
    got = run_child(f"""
        from cityseg_fast.bench.runners import run_scenario
        from cityseg_fast.config import load_config
        m = run_scenario("e2e", load_config([], {over!r}))
        print(json.dumps({{"images_per_s": m["images_per_s"], "nvml_samples": m["nvml_samples"],
                          "nvjpeg": nvjpeg_mapped(), "nvjpeg_version": m["nvjpeg_version"],
                          "description": m["loader_description"]}}))
    """)
    assert got["images_per_s"] > 0 and got["nvml_samples"] > 0
    assert got["nvjpeg"], "the e2e point's DALI mixed decoder ran without nvJPEG: a CPU fallback"
    assert got["nvjpeg_version"] and f"nvjpeg {got['nvjpeg_version']}" in got["description"], got
    infer = _bench("infer", *common)
    assert infer["status"] == "ok", infer["error"]
    assert infer["metrics"]["latency_ms_p50"] > 0 and 0 < infer["metrics"]["mfu"] < 1


@pytest.mark.slow
def test_max_autotune_after_setup_precision_does_not_raise(cuda):
    """Inductor reads the legacy TF32 getters while it tunes matmuls; setting only the new API made
    them raise ("mix of legacy and new TF32 APIs")."""
    from cityseg_fast.config import PrecisionConfig
    from cityseg_fast.engine.precision import autocast, prepare_model, setup_precision

    setup_precision("bf16", cudnn_benchmark=True)
    torch._dynamo.reset()
    model = prepare_model(torch.nn.Linear(256, 256), PrecisionConfig(compile="max-autotune"), cuda)
    with autocast("bf16", "cuda"):
        out = model(torch.randn(64, 256, device=cuda))
    assert out.shape == (64, 256)
    setup_precision("fp32")


def _train_args(data, out, *extra: str) -> list[str]:
    return [
        "train", f"data.root={data}", f"train.out_dir={out}", "model.name=fcn_resnet50", "model.aux_loss=true",
        "data.crop=[128,256]", "loader.backend=dali", "loader.batch_size=4", "loader.eval_batch_size=2",
        "train.log_interval=5", "train.eval_interval=20", "train.ckpt_interval=10", "train.lr=0.01", *extra,
    ]  # fmt: skip


def _events(out, kind: str) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == kind]


@pytest.mark.slow
def test_compiled_bf16_fcn_r50_trains_evaluates_checkpoints_and_resumes(tmp_path):
    data, out = write_tiny_cityscapes(tmp_path / "data", size=(128, 256)), tmp_path / "run"
    args = _train_args(data, out, "precision.dtype=bf16", "precision.compile=default")
    run_cli(*args, "train.iters=20", timeout=600)
    (ev,) = _events(out, "eval")
    assert ev["iter"] == 20 and 0 <= ev["miou"] <= 1 and ev["images"] == 4
    assert (out / "ckpt_00000020.pt").is_file()
    run_cli(*args, "train.iters=30", timeout=600)  # resumes at 20 from the checkpoint
    assert [r["iter"] for r in _events(out, "resume")] == [20]
    assert [r["iter"] for r in _events(out, "train")][-1] == 30
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _events(out, "train"))
    assert (out / "ckpt_00000030.pt").is_file()


@pytest.mark.slow
def test_fp16_training_keeps_a_finite_loss_scale(tmp_path):
    data, out = write_tiny_cityscapes(tmp_path / "data", size=(128, 256)), tmp_path / "run"
    run_cli(*_train_args(data, out, "precision.dtype=fp16", "train.iters=20"), timeout=600)
    ck = torch.load(out / "ckpt_00000020.pt", weights_only=True)
    scale = float(ck["scaler"]["scale"])
    assert 0 < scale < float("inf")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _events(out, "train"))
