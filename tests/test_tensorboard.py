"""TensorBoard (engine/tensorboard.py): the scalars an event becomes, a run's event file read back with
tensorboard's own reader (the same numbers as metrics.jsonl), and one line when the package is missing."""

from __future__ import annotations

import json
import math
import sys

import pytest
from engine_fixtures import tiny_overrides, write_tiny_cityscapes
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cityseg_fast.cli import main
from cityseg_fast.engine.tensorboard import TB_DIR, require, scalars
from cityseg_fast.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_event_becomes_scalars():
    line = {"iter": 20, "epoch": 1, "timestamp": 1.0, "loss": 0.5, "lr": 0.01, "stall_fraction": None,
            "rank_data_wait_s": [0.01, None, 0.2], "straggler": None, "straggler_ratio": 1.5}  # fmt: skip
    assert scalars("train", line) == {"train/loss": 0.5, "train/lr": 0.01, "train/straggler_ratio": 1.5,
                                      "train/rank_data_wait_s/rank0": 0.01, "train/rank_data_wait_s/rank2": 0.2}
    ev = scalars("eval", {"iter": 20, "miou": 0.4, "acc": 0.9, "per_class_iou": [0.5] * 18 + [None]})
    assert ev["eval/miou"] == 0.4 and ev["eval/iou/road"] == 0.5 and "eval/iou/bicycle" not in ev
    assert scalars("start", {"iter": 0, "world_size": 1}) == {}


def test_a_run_writes_the_metrics_lines_scalars_under_out_tb(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 8, "val": 2})
    out = tmp_path / "run"
    assert main(["train", *tiny_overrides(data, out, iters=10), "train.tensorboard=true"]) == 0
    acc = EventAccumulator(str(out / TB_DIR))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "train/time", "train/data_time",
            "train/stall_fraction", "train/mem_host_rss_mib", "eval/miou", "eval/acc", "eval/iou/road"} <= tags
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["event"] == "train"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [x["iter"] for x in train] == [5, 10]
    for e, x in zip(loss, train, strict=True):  # the same numbers (TensorBoard stores float32)
        assert math.isclose(e.value, x["loss"], rel_tol=1e-6)
    (ev,) = [x for x in lines if x["event"] == "eval"]
    assert math.isclose(acc.Scalars("eval/miou")[-1].value, ev["miou"], rel_tol=1e-6)


def test_without_the_package_it_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    with pytest.raises(UserError, match=r"train\.tensorboard.*pip install"):
        require()
