"""Per-rank timing (engine/ranks.py): the figures across ranks and the straggler rule, then two gloo processes
with rank 1's loader slowed by a known sleep per batch: training names rank 1, its data wait exceeds rank 0's
by about the sleep and rank 0 waits about as long in the gradient all-reduce; an e2e row at world size 2 too."""

from __future__ import annotations

import json

import pytest
from engine_fixtures import REPO, TORCHRUN, _run, tiny_overrides, write_tiny_cityscapes
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cityseg_fast.engine.events import progress_text
from cityseg_fast.engine.ranks import RankTimes, rank_fields, straggler_text
from cityseg_fast.results import scenarios

pytestmark = pytest.mark.usefixtures("one_thread")
SLEEP_S = 0.2  # well above the step-to-step jitter of a tiny model on a loaded 2-core machine
SLOW_RANK = [str(REPO / "benchmarks" / "slow_rank.py"), "--rank", "1", "--sleep", str(SLEEP_S), "--"]


def test_figures_across_ranks_and_the_straggler_rule():
    ranks = [RankTimes(0.01, 0.10, 0.09), RankTimes(0.10, 0.10, 0.0), RankTimes(0.01, 0.11, 0.08)]
    f = rank_fields(ranks, threshold=1.2)
    assert f[scenarios.RANK_WORK_S_MIN] == pytest.approx(0.11) and f[scenarios.RANK_WORK_S_MAX] == pytest.approx(0.2)
    assert f[scenarios.RANK_WORK_S_MEDIAN] == pytest.approx(0.12)
    assert f[scenarios.RANK_ALLREDUCE_WAIT_S] == [0.09, 0.0, 0.08]  # each rank's own, by rank
    assert f[scenarios.SLOWEST_RANK] == 1 and f[scenarios.STRAGGLER_RATIO] == pytest.approx(0.2 / 0.12)
    assert f[scenarios.STRAGGLER] == 1
    assert rank_fields(ranks, threshold=2.0)[scenarios.STRAGGLER] is None  # 1.67x is within 2x: nobody named
    assert rank_fields(ranks[:1], threshold=1.2) == {}  # one rank: nothing to compare
    some = rank_fields([ranks[0], None, ranks[1]], threshold=1.2)  # rank 1 read no step this interval
    assert some[scenarios.RANK_DATA_WAIT_S] == [0.01, None, 0.10] and some[scenarios.SLOWEST_RANK] == 2
    assert set(f) >= {scenarios.RANK_DATA_WAIT_S_MIN, scenarios.RANK_DATA_WAIT_S_MAX, scenarios.RANK_COMPUTE_S_MIN,
                      scenarios.RANK_COMPUTE_S_MAX, scenarios.RANK_ALLREDUCE_WAIT_S_MIN,
                      scenarios.RANK_ALLREDUCE_WAIT_S_MAX, scenarios.RANK_COMPUTE_S}  # fmt: skip


def test_the_progress_line_names_the_straggler():
    line = {"loss": 0.5, "lr": 0.01, "images_per_s": 100.0, "stall_fraction": 0.02}
    assert "straggler" not in progress_text(line)
    named = {**line, **rank_fields([RankTimes(0.0, 0.1, 0.1), RankTimes(0.1, 0.1, 0.0)], 1.2)}
    assert progress_text(named).endswith("straggler rank 1 (1.33x the median rank's work)")
    assert straggler_text({"straggler": None}) == ""


def _train_lines(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "train"]


def test_two_gloo_ranks_one_slowed_name_it_and_wait_for_it(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 8, "val": 2})
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=12, **{"loader.batch_size": 2, "train.log_interval": 4,
                                                  "train.tensorboard": "true"})
    cmd = [*TORCHRUN, "--nproc_per_node=2", "--standalone", *SLOW_RANK, "train", *over, "--json"]
    p = _run(cmd, timeout=300, check=True)
    summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["replicas_in_sync"] is True  # the timing hook left DDP's all-reduce as it was
    assert "straggler rank 1" in p.stderr  # the progress line
    for line in _train_lines(out)[1:]:  # past the first interval (start-up, DDP's first step)
        assert line["straggler"] == 1 and line["slowest_rank"] == 1 and line["straggler_ratio"] > 1.2
        data_wait, wait = line["rank_data_wait_s"], line["rank_allreduce_wait_s"]
        # rank 1 waits for its data about the sleep longer than rank 0 ...
        assert data_wait[1] - data_wait[0] == pytest.approx(SLEEP_S, rel=0.35)
        # ... and rank 0, which computes as fast, waits about that long for rank 1 in the all-reduce
        assert wait[0] - wait[1] == pytest.approx(SLEEP_S, rel=0.5)
        compute = line["rank_compute_s"]
        assert abs(compute[0] - compute[1]) < SLEEP_S / 2
        assert line["rank_work_s_max"] - line["rank_work_s_min"] == pytest.approx(SLEEP_S, rel=0.5)
    tb = EventAccumulator(str(out / "tb"))  # rank 0 alone writes TensorBoard, the straggler figures included
    tb.Reload()
    assert {"train/straggler_ratio", "train/rank_work_s_max", "train/rank_allreduce_wait_s/rank0",
            "train/rank_allreduce_wait_s/rank1"} <= set(tb.Tags()["scalars"])


def test_an_e2e_row_at_world_size_two_carries_the_rank_figures(tmp_path):
    tiny = ["model.name=unet_s16", "model.base_width=4", "data.crop=[32,64]", "loader.batch_size=2",
            "loader.backend=synthetic", "bench.warmup=2", "bench.iters=6"]  # fmt: skip
    cmd = [*TORCHRUN, "--nproc_per_node=2", "--standalone", *SLOW_RANK, "bench", "e2e", *tiny, "--json"]
    p = _run(cmd, timeout=300, check=True)
    row = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    m = row["metrics"]
    assert row["point"]["world_size"] == 2 and m[scenarios.STRAGGLER] == 1
    assert m[scenarios.RANK_DATA_WAIT_S][1] - m[scenarios.RANK_DATA_WAIT_S][0] == pytest.approx(SLEEP_S, rel=0.35)
    assert m[scenarios.RANK_ALLREDUCE_WAIT_S_MAX] == m[scenarios.RANK_ALLREDUCE_WAIT_S][0]  # rank 0 waits

