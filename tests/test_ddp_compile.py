"""DDP first, then torch.compile (PyTorch's DDP + Dynamo notes: the DDPOptimizer splits the graph at DDP's
buckets so the all-reduce overlaps the backward), and a compiled point that compiles once per mode: two gloo
ranks train a tiny compiled model in sync; the model scenario reports its eval-mode compile apart."""

from __future__ import annotations

import json

import pytest
from engine_fixtures import REPO, TORCHRUN, _run

from cityseg_fast.bench.runners import run_scenario
from cityseg_fast.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_gloo_ranks_train_a_model_wrapped_in_ddp_then_compiled_in_sync(tmp_path):
    worker = REPO / "tests" / "ddp_compile_worker.py"
    _run([*TORCHRUN, "--nproc_per_node=2", "--standalone", str(worker), str(tmp_path)], timeout=400, check=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["train_is_compiled_ddp"], "train_step's module: torch.compile(DDP(model)), DDP first"
        assert r["eval_is_compiled_plain"], "evaluation's module: the same model, compiled without DDP"
        assert r["unwraps"] and r["keys_plain"] and r["loaded_equal"], r  # checkpoints see through both orders
        assert r["graphs_after_training"] >= 1, "the forward ran uncompiled inside DDP"
        # eval mode compiles its graph once; training again finds its own graph: one compile per mode
        assert r["graphs_after_eval_and_training"] == r["graphs_after_training"] + 1, r
        assert r["in_sync"] is True, "replicas differ: DDP did not average the compiled model's gradients"
        assert r["all_reduce_waits"] == 3, "the all-reduce clock did not see each step's buckets"


def test_a_compiled_model_point_compiles_once_per_mode_and_says_so(tmp_path):
    """The model scenario trains, then times eval-mode inference: the training graph compiles once (no
    recompile in the loop), the eval graph once more, reported as infer_compiles and infer_compile_s
    beside the training loop's compile_s, not as a recompile."""
    cfg = load_config([], [
        "model.name=unet", "model.base_width=2", "model.depth=2", "data.crop=[32,64]", "loader.batch_size=2",
        "precision.compile=default", "precision.dtype=fp32", "bench.iters=2", "bench.warmup=2",
        f"train.out_dir={tmp_path}",
    ])  # fmt: skip
    m = run_scenario("model", cfg)
    assert m["recompiles"] == 0 and m["steady_recompiles"] == 0
    assert m["compile_s"] > 0 and m["infer_compile_s"] > 0
    assert m["infer_compiles"] == 1, "eval mode compiled more than once (or not at all)"
