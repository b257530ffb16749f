"""The scenario table and its runners, for real on tiny points: every scenario's rows validate and carry
the metrics the report reads; points keep only what changes the measurement; runners and table agree."""

from __future__ import annotations

import json

import pytest
from loader_fixtures import write_prepared

from cityseg_fast.bench.runners import RUNNERS, run_scenario
from cityseg_fast.config import load_config
from cityseg_fast.results import SCENARIOS, point_for, row_for

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model.name=unet_s16", "model.base_width=4", "data.crop=[32,64]", "loader.batch_size=2",
        "bench.iters=2", "bench.warmup=1", "loader.num_workers=1", "loader.num_threads=1"]  # fmt: skip
EXTRA = {  # what each scenario needs on top of TINY
    "loader": ["loader.backend=torch"],
    "e2e": ["loader.backend=dali"],
    "accuracy": ["loader.backend=torch", "train.iters=2", "train.log_interval=1", "train.eval_interval=2",
                 "train.ckpt_interval=2", "loader.eval_batch_size=2"],  # fmt: skip
    "model": ["bench.split_phases=true"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("scen"), {"train": 4, "val": 2})


def test_every_scenario_has_one_runner():
    assert list(RUNNERS) == list(SCENARIOS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenarios_rows_carry_the_metrics_the_report_reads(name, data, tmp_path):
    s = SCENARIOS[name]
    cfg = load_config([], [*TINY, *EXTRA.get(name, []), f"train.out_dir={tmp_path / 'run'}"]
                      + ([f"data.root={data}"] if s.reads_data else []))  # fmt: skip
    metrics = run_scenario(name, cfg)
    row = row_for(name, cfg, metrics)
    json.dumps(row.to_json(), allow_nan=False)  # strict JSON
    missing = [k for k in s.metrics if k not in row.metrics]
    assert not missing, f"{name} rows lack {missing}"
    assert row.point == point_for(name, cfg) and row.status == "ok"
    if name in ("model", "infer", "e2e", "loader"):
        m = row.metrics
        assert m["images_per_s"] > 0 and m["latency_ms_p50"] <= m["latency_ms_p90"] <= m["latency_ms_p99"]
    if name == "loader":  # the DataLoader worker (and its forkserver) count in host memory
        m = row.metrics
        assert m["loader_processes"] >= 1 and m["mem_host_workers_peak_rss_mib"] > 0
        assert m["mem_host_peak_rss_mib"] > m["mem_host_workers_peak_rss_mib"]
        assert m["mem_host_pss_mib"] is None or m["mem_host_pss_mib"] > 0
    if name == "e2e":  # how long each step waited for its batch
        assert 0 <= row.metrics["stall_fraction"] <= 1
    if name == "model":  # inference and the forward / backward / optimizer split come with it
        assert row.metrics["infer_images_per_s"] > 0 and row.metrics["fwd_ms"] > 0
        assert row.metrics["mfu"] is None  # no honest CPU peak
    if s.kind == "accuracy":
        assert 0 <= row.metrics["miou"] <= 1 and len(row.metrics["per_class_iou"]) == 19
    if name == "accuracy":  # its curves (from metrics.jsonl), its size and its example predictions
        m = row.metrics
        assert m["curves"]["train"]["iter"] == [1, 2] and m["curves"]["eval"]["iter"] == [2]
        assert m["curves"]["eval"]["miou"] == [m["miou"]] and m["curves"]["eval"]["wall_s"][0] > 0
        assert m["params"] > 0 and m["train_flops_per_image"] > m["flops_per_image"] > 0
        assert len(m["val_predictions"]) == 2  # the split has two val frames
        for example in m["val_predictions"]:
            for key in ("input", "label", "pred"):
                assert (tmp_path / "run" / example[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_points_keep_only_what_changes_the_measurement():
    a = load_config([], TINY + ["loader.backend=torch"])
    b = load_config([], TINY + ["loader.backend=dali", "loader.device=cpu"])
    assert point_for("model", a) == point_for("model", b)
    assert point_for("e2e", a) != point_for("e2e", b)
    assert point_for("e2e", b)["loader_device"] == "cpu" and point_for("e2e", a)["loader_device"] is None
    assert point_for("infer", a)["resolution"] == [32, 64]
    acc = point_for("accuracy", load_config([], TINY + ["train.lr=0.05", "train.optimizer=adamw"]))
    assert acc["lr"] == 0.05 and acc["optimizer"] == "adamw"
    assert "loader_seed" not in acc  # named only when set: both seeds are part of an accuracy point
    reseeded = point_for("accuracy", load_config([], TINY + ["loader.seed=1"]))
    assert reseeded["loader_seed"] == 1 and reseeded["seed"] == 0
    fcn = ["model.name=fcn_resnet50", "model.aux_loss=true"]
    assert {"pretrained", "aux_weight"}.isdisjoint(point_for("accuracy", load_config([], fcn)))
    init = point_for("accuracy", load_config([], [*fcn, "model.pretrained=torchvision", "train.aux_weight=0.2"]))
    assert init["pretrained"] == "torchvision" and init["aux_weight"] == 0.2  # what the weights start from
    # loader settings are named only where they differ from the defaults
    assert "num_workers" not in point_for("loader", load_config([], ["loader.backend=torch"]))
    assert point_for("loader", load_config([], ["loader.backend=torch", "loader.num_workers=8"]))["num_workers"] == 8
    # each backend's own tuning knobs, named only where they change its work
    torch_pf = point_for("loader", load_config([], ["loader.backend=torch", "loader.prefetch_factor=4"]))
    assert torch_pf["prefetch_factor"] == 4 and "prefetch_queue_depth" not in torch_pf
    in_process = load_config([], ["loader.backend=torch", "loader.num_workers=0", "loader.prefetch_factor=4"])
    assert "prefetch_factor" not in point_for("loader", in_process)
    dali_cpu = load_config([], ["loader.backend=dali", "loader.device=cpu", "loader.hw_decoder_load=0.9",
                                "loader.prefetch_queue_depth=3", "loader.prefetch_factor=4"])  # fmt: skip
    p = point_for("loader", dali_cpu)
    assert p["prefetch_queue_depth"] == 3 and "hw_decoder_load" not in p and "prefetch_factor" not in p
    dali_gpu = load_config([], ["loader.backend=dali", "loader.device=gpu", "loader.hw_decoder_load=0.9"])
    assert point_for("loader", dali_gpu)["hw_decoder_load"] == 0.9  # GPU decoding: the hardware decoder's share
    with pytest.raises(ValueError):
        point_for("nope", a)


def test_failures_are_rows_classified_in_one_place():
    cfg = load_config([], TINY)
    oom = row_for("model", cfg, error=RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), env={})
    err = row_for("model", cfg, error=ValueError("bad\nthing"), env={})
    assert (oom.status, err.status) == ("oom", "error")
    assert err.error == "ValueError: bad thing" and oom.metrics == {}
    nan = row_for("model", cfg, {"images_per_s": float("nan"), "per": (1.0, float("inf"))}, env={})
    assert nan.metrics == {"images_per_s": None, "per": [1.0, None]}


def test_bench_json_prints_the_row_alone_on_stdout_even_for_a_training_point(data, tmp_path, capsys):
    from cityseg_fast.cli import main

    over = [*TINY, *EXTRA["accuracy"], f"train.out_dir={tmp_path / 'run'}", f"data.root={data}"]
    assert main(["bench", "accuracy", "--json", *over]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out  # the training's progress, eval lines and IoU table go to stderr
    assert json.loads(lines[0])["status"] == "ok" and "val mIoU" in err


def test_a_training_point_that_fails_mid_way_closes_its_loader(data, tmp_path, monkeypatch):
    import itertools

    from cityseg_fast.data.torch_loader import TorchLoader
    from cityseg_fast.engine.step import SegLoss

    closed = []
    close, forward, calls = TorchLoader.close, SegLoss.forward, itertools.count(1)

    def spy(self: TorchLoader) -> None:
        closed.append(self.spec.train)
        close(self)

    def fails_at_step_2(self, out, target):
        if next(calls) == 2:
            raise RuntimeError("the model failed at step 2")
        return forward(self, out, target)

    monkeypatch.setattr(TorchLoader, "close", spy)
    monkeypatch.setattr(SegLoss, "forward", fails_at_step_2)
    cfg = load_config([], [*TINY, "loader.backend=torch", "loader.num_workers=0", f"data.root={data}"])
    with pytest.raises(RuntimeError, match="failed at step 2"):
        run_scenario("e2e", cfg)
    assert closed == [True]  # the training loader, closed although the point failed
