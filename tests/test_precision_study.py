"""Precision and inference resolution in studies: both expand in the shipped study configs; the dry run
prices bf16 by the measured ratio (native) or the emulation cost; the report's precision table, Welch
verdicts, neutrality sentence and inference-resolution table and figure from planted rows; the fp16
scaler's fields in metrics.jsonl of a tiny fp16 run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cityseg_fast.bench.accuracy import curves, read_events, scaler_summary
from cityseg_fast.bench.study_runs import load_study, plan, speed_notes, total_s
from cityseg_fast.config import load_config
from cityseg_fast.engine.train import train
from cityseg_fast.errors import UserError
from cityseg_fast.report.study_design import design, resolution_settings
from cityseg_fast.report.study_report import build_study_report
from cityseg_fast.results import append_row, read_rows, rows_for
from cityseg_fast.results.scenarios import EVAL_SCALE, EVAL_SIZE, INFER_IMAGES_PER_S, MIOU, SCALES

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
SCALE_LIST = (0.5, 1.0)


# ---------------------------------------------------------------- the shipped configs


def test_precision_and_scales_expand_in_the_shipped_studies(monkeypatch, tmp_path):
    monkeypatch.setenv("NGPU", "8")
    cpu = load_study(ROOT / "configs" / "studies" / "precision_cpu.yaml", tmp_path / "cpu")
    acc = [sp for sp in cpu.spec.points if sp.scenario == "accuracy"]
    assert cpu.seeds == [0, 1, 2] and all(sp.cfg.bench.eval_scales == (0.5, 0.75, 1.0) for sp in acc)
    by_model = {(sp.cfg.model.name, sp.cfg.precision.dtype) for sp in acc}
    assert {("unet_s16", "fp32"), ("unet_s16", "bf16"), ("fcn8s_vgg16_bn", "fp32"), ("fcn8s_vgg16_bn", "bf16")} <= by_model
    speed = {(sp.cfg.precision.compile, sp.cfg.precision.channels_last) for sp in acc if sp.cfg.model.name == "unet_s16"}
    assert {("off", True), ("default", True), ("off", False)} <= speed  # the neutrality check
    rows = [r for sp in acc for r in _rows_of(sp)]
    d = design(rows)
    assert len(d.settings) * 3 == len(acc)  # every setting once per seed; the scale rows are no settings
    axes = {a.name: a for a in d.axes}
    assert {"architecture", "dtype", "compile", "channels_last"} <= set(axes)
    assert axes["dtype"].per_model and axes["dtype"].anchor.point["dtype"] == "fp32"
    assert len(resolution_settings(d)) == 4 and all(sorted(s.scales) == [0.5, 0.75, 1.0] for s in resolution_settings(d))

    gpu = load_study(ROOT / "configs" / "studies" / "cityscapes_gpu.yaml", tmp_path / "gpu")
    dtypes = {sp.cfg.precision.dtype for sp in gpu.spec.points if sp.scenario == "accuracy"}
    assert dtypes == {"fp32", "tf32", "bf16", "fp16"}
    assert any(sp.cfg.bench.eval_scales for sp in gpu.spec.points if sp.scenario == "accuracy")


def _rows_of(sp) -> list:
    """The rows one run of a study point records (a training row, then one per eval scale)."""
    scales = [{EVAL_SCALE: s, EVAL_SIZE: [64, 128], MIOU: 0.2, INFER_IMAGES_PER_S: 10.0} for s in sp.cfg.bench.eval_scales]
    return rows_for("accuracy", sp.cfg, {MIOU: 0.2, SCALES: scales}, env={}, world_size=sp.world_size)


def test_dry_run_prices_bf16_by_its_measured_ratio_or_its_emulation_cost(tmp_path):
    study = load_study(ROOT / "configs" / "studies" / "precision_cpu.yaml", tmp_path / "cpu")
    native, emulated = plan(study, "native"), plan(study, "emulated")
    est = study.estimate
    assert est.speed["bf16"] > 1 > est.emulated["bf16"] > 0  # measured on this CPU, and with its ISA capped

    def bf16_s(runs):
        return total_s([r for r in runs if r.dtype == "bf16"], todo_only=False)

    assert bf16_s(emulated) > 5 * bf16_s(native)  # emulated bf16 is many times slower than native
    assert total_s([r for r in native if r.dtype == "fp32"]) == total_s([r for r in emulated if r.dtype == "fp32"])
    [line] = speed_notes(study, emulated, "emulated", "no amx_bf16 / avx512_bf16 CPU flag")
    assert "emulates bf16 (no amx_bf16" in line and f"{est.emulated['bf16']:g}x" in line
    assert "bf16 native here" in speed_notes(study, native, "native", "CPU flag avx512_bf16")[0]


@pytest.mark.parametrize("estimate, message", [
    ({"speed": {"bf8": 2}}, "study.estimate takes gflop_per_s"),
    ({"emulated": {"bf16": 0}}, "study.estimate takes gflop_per_s"),
    ({"speed": [1, 2]}, "study.estimate takes gflop_per_s"),
])  # fmt: skip
def test_bad_speed_ratios_are_one_line(tmp_path, estimate, message):
    raw = yaml.safe_load((ROOT / "configs" / "studies" / "precision_cpu.yaml").read_text())
    raw["study"]["estimate"] = {**raw["study"]["estimate"], **estimate}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=message):
        load_study(path, tmp_path / "o")


# ---------------------------------------------------------------- the report, from planted rows


def _rows(tmp: Path, overrides: list[str], seed: int, miou: float, ips: float, **extra) -> list:
    """A run's rows as an accuracy point with bench.eval_scales records them: training row, then per scale
    (mIoU lower and inference faster at the smaller scale)."""
    cfg = load_config([], ["data.crop=[32,64]", "loader.batch_size=2", "train.iters=20", "model.name=unet_s16",
                           f"bench.eval_scales={list(SCALE_LIST)}", *overrides, f"train.seed={seed}",
                           f"loader.seed={seed}"])  # fmt: skip
    scales = [{EVAL_SCALE: s, EVAL_SIZE: [int(64 * s), int(128 * s)], MIOU: miou - 0.05 * (1 - s) * (1 + seed % 2),
               "acc": 0.8, INFER_IMAGES_PER_S: 4 * ips / s**2} for s in SCALE_LIST]  # fmt: skip
    metrics = {MIOU: miou, "acc": 0.5 + miou, "per_class_iou": [miou] * 19, "images_per_s": ips,
               "train_wall_s": 100.0 / ips, "mem_host_peak_rss_mib": 900.0 if "bf16" not in str(overrides) else 700.0,
               "device": "cpu", "out_dir": str(tmp / "runs" / f"{seed}"), SCALES: scales, **extra}  # fmt: skip
    return rows_for("accuracy", cfg, metrics, env={"cpu": "test CPU", "cpu_cores": 2, "torch": "x"})


PLANTED = [  # (overrides, mIoU per seed, img/s per seed, extra metrics)
    ([], (0.300, 0.310, 0.320), (20.0, 21.0, 19.0), {}),
    (["precision.dtype=bf16"], (0.305, 0.300, 0.318), (33.0, 34.0, 32.0), {}),  # noise: no difference
    (["model.name=fcn8s_vgg16_bn", "model.base_width=8"], (0.250, 0.255, 0.260), (12.0, 12.5, 11.5), {}),
    (["model.name=fcn8s_vgg16_bn", "model.base_width=8", "precision.dtype=bf16"], (0.200, 0.205, 0.210),
     (20.0, 19.0, 21.0), {}),  # a real loss, for the verdict to call
    (["precision.dtype=fp16"], (0.302, 0.309, 0.315), (2.0, 2.1, 1.9), {"loss_scale": 16384.0, "skipped_steps": 3,
     "curves": {"train": {"iter": [10, 20], "loss": [2.0, 1.5], "wall_s": [5.0, 10.0], "loss_scale": [32768.0, 16384.0]},
                "eval": {"iter": [20], "miou": [0.3], "wall_s": [11.0]}}}),
    (["precision.compile=default"], (0.302, 0.318, 0.309), (26.0, 25.0, 27.0), {}),
    (["precision.channels_last=false"], (0.299, 0.312, 0.318), (18.0, 18.5, 17.5), {}),
]  # fmt: skip


def _planted(tmp: Path) -> Path:
    for over, mious, ipss, extra in PLANTED:
        for seed, (m, ips) in enumerate(zip(mious, ipss, strict=True)):
            for row in _rows(tmp, over, seed, m, ips, **extra):
                append_row(tmp / "results.jsonl", row)
    return tmp


def test_precision_table_and_welch_verdicts_from_planted_rows(tmp_path):
    md = build_study_report(_planted(tmp_path), tmp_path / "report", title="planted").read_text()
    table = "\n".join(line for line in md.split("### Precision", 1)[1].split("###", 1)[0].splitlines()
                      if line.startswith("|"))  # fmt: skip
    assert "speed-up over fp32" in table and "last loss scale" in table and "skipped steps" in table
    row = {c.split("|")[2].strip(): c for c in table.splitlines()[2:] if c.split("|")[1].strip() == "unet_s16"}
    assert "| 31.0 ± 1.0 |" in row["fp32"] and "(fp32: the anchor)" in row["fp32"]
    assert "| 1.65x |" in row["bf16"] and "no measurable difference (p = " in row["bf16"]  # 33 / 20 img/s
    assert "| 16,384 |" in row["fp16"] and "| 3.0 |" in row["fp16"]  # the scaler's last scale, skipped steps
    fcn_bf16 = next(c for c in table.splitlines() if c.startswith("| fcn8s_vgg16_bn w8 | bf16 |"))
    assert "-5.0 points: a difference (p = " in fcn_bf16 and "| 1.67x |" in fcn_bf16  # against fcn8s in fp32
    conclusions = md.split("## Conclusions", 1)[1]
    assert "**Precision** (each against the same architecture at fp32)" in conclusions
    neutral = next(line for line in conclusions.splitlines() if "accuracy-neutral" in line)
    assert "compiled (default) against eager (p = " in neutral and "NCHW against channels_last (p = " in neutral
    for name in ("study_resolution.png", "study_loss_scale.png"):
        assert f"]({name})" in md
        with Image.open(tmp_path / "report" / name) as img:
            img.verify()


def test_a_speed_setting_that_changes_accuracy_is_called_a_difference(tmp_path):
    for seed, m in enumerate((0.30, 0.31, 0.32)):
        for row in _rows(tmp_path, [], seed, m, 20.0):
            append_row(tmp_path / "results.jsonl", row)
    for seed, m in enumerate((0.20, 0.21, 0.22)):  # compiled, and far worse: not neutral
        for row in _rows(tmp_path, ["precision.compile=default"], seed, m, 26.0):
            append_row(tmp_path / "results.jsonl", row)
    md = build_study_report(tmp_path, tmp_path / "report").read_text()
    line = next(x for x in md.split("## Conclusions", 1)[1].splitlines() if "speed setting" in x)
    assert "changed accuracy beyond the seed spread: compiled (default) against eager (-10.0 points" in line


def test_inference_resolution_table_one_row_per_scale_from_one_run(tmp_path):
    rows = list(read_rows(_planted(tmp_path) / "results.jsonl"))
    runs = [r for r in rows if EVAL_SCALE not in r.point]
    assert len(rows) == 3 * len(runs)  # each run: its row and one per scale, each its own point
    assert len({r.point_id for r in rows}) == len(rows)
    by_run = {r.point_id: r for r in runs}
    assert all(by_run[r.companions["train"]].point["seed"] == r.point["seed"] for r in rows if EVAL_SCALE in r.point)
    md = build_study_report(tmp_path, tmp_path / "report").read_text()
    section = md.split("### Inference resolution", 1)[1].split("###", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| unet_s16 | fp32 |")]
    assert [line.split("|")[3].strip() for line in lines] == ["0.5", "1"]
    assert "| 32x64 |" in lines[0] and "| 4.00x |" in lines[0] and "| (the anchor) |" in lines[1]
    conclusions = md.split("**Inference resolution**", 1)[1]
    assert "unet_s16, fp32, evaluated at 0.5 of the frame: 4.00x the inference speed" in conclusions


# ---------------------------------------------------------------- fp16: the scaler in metrics.jsonl


@pytest.mark.usefixtures("one_thread")
def test_fp16_run_logs_the_loss_scale_and_skipped_steps(tmp_path):
    """A tiny fp16 run with an absurd learning rate: the scaler skips steps and backs off, and every 'train'
    line of metrics.jsonl says so; what the accuracy row reads of them (its curves, its summary) is the same."""
    out = tmp_path / "run"
    cfg = load_config([], ["loader.backend=synthetic", "model.name=unet_s16", "model.base_width=4", "model.depth=2",
                           "data.crop=[16,32]", "data.eval_size=[16,32]", "loader.batch_size=2",
                           "loader.eval_batch_size=2", "train.iters=6", "train.log_interval=2", "train.eval_interval=6",
                           "train.ckpt_interval=6", "precision.dtype=fp16", f"train.out_dir={out}", "train.lr=1e4",
                           "train.optimizer=sgd", "train.max_nonfinite=100"])  # fmt: skip
    train(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [e for e in lines if e["event"] == "train"]
    assert [e["iter"] for e in logged] == [2, 4, 6]
    assert all(isinstance(e["loss_scale"], float) and isinstance(e["skipped_steps"], int) for e in logged)
    skipped = [e["skipped_steps"] for e in logged]
    assert skipped == sorted(skipped) and skipped[-1] >= 1  # counted so far, and an lr of 1e4 overflows
    assert logged[-1]["loss_scale"] < 65536.0  # GradScaler's initial scale, backed off
    events = read_events(out)
    assert scaler_summary(events) == {"loss_scale": logged[-1]["loss_scale"], "skipped_steps": skipped[-1]}
    assert curves(events)["train"]["loss_scale"] == [e["loss_scale"] for e in logged]
