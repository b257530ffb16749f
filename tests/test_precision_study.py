"""Precision and inference resolution in studies: both expand in the shipped study configs; the dry run
prices bf16 by the measured ratio (native) or the emulation cost; the report's precision table, Welch
verdicts, neutrality sentence and inference-resolution table and figure from planted rows; the fp16
scaler's fields in metrics.jsonl of a tiny fp16 run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from engine_fixtures import tiny_overrides, trained_run
from PIL import Image

from cityseg_fast.bench.accuracy import curves, read_events, scaler_summary
from cityseg_fast.bench.study_runs import load_study, plan, speed_notes, total_s
from cityseg_fast.bench.sweep import run_sweep
from cityseg_fast.bench.sweep_spec import load_spec
from cityseg_fast.cli import main
from cityseg_fast.config import load_config
from cityseg_fast.config import replace as replace_cfg
from cityseg_fast.engine.train import train
from cityseg_fast.errors import UserError
from cityseg_fast.report.study_design import design, resolution_settings
from cityseg_fast.report.study_report import build_study_report
from cityseg_fast.results import append_row, point_for, point_id, read_rows, row_for, rows_for
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
                           "data.crop=[16,32]", "data.eval_size=[16,32]", "data.eval_label_resize=true", "loader.batch_size=2",
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


# ---------------------------------------------------------------- eval --scales, and a sweep's rows per scale


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.mark.usefixtures("one_thread")
def test_eval_scales_gives_one_row_per_scale_and_scale_1_is_plain_eval(run, capsys):
    data, out = run
    ck = str(sorted(out.glob("ckpt_*.pt"))[-1])
    assert main(["eval", "--checkpoint", ck, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", ck, "--scales", "0.5,0.75,1.0", "--json", "bench.iters=2", "bench.warmup=1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["eval_scale"], r["eval_size"]) for r in rows] == [(0.5, [32, 64]), (0.75, [48, 96]), (1.0, [64, 128])]
    assert rows[-1]["miou"] == plain["miou"] and rows[-1]["per_class_iou"] == plain["per_class_iou"]
    assert all(r["images"] == plain["images"] and r["pixels"] == plain["pixels"] for r in rows)  # full-size labels
    assert all(r["infer_images_per_s"] > 0 and r["infer_latency_ms_p50"] > 0 for r in rows)
    assert rows[0]["miou"] != plain["miou"]  # another input, another prediction
    assert main(["eval", "--checkpoint", ck, "--scales", "0.5,1", "bench.iters=1", "bench.warmup=0"]) == 0
    table = capsys.readouterr().out
    assert "32x64" in table and "64x128" in table and "inference img/s" in table


@pytest.mark.parametrize("scales, message", [
    ("0,1", "--scales '0,1': every value must be > 0"),
    ("-0.5", "--scales '-0.5': every value must be > 0"),
    ("half,1", "--scales 'half,1': expected numbers separated by commas"),
    ("inf", "--scales 'inf': expected numbers"),
    ("1,1.0", "--scales '1,1.0': a scale is repeated"),
])  # fmt: skip
def test_bad_scales_are_one_line_exit_2(tmp_path, capsys, scales, message):
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--scales", scales]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("value, message", [
    ("[0.5,0]", "config key 'bench.eval_scales': every value must be > 0, got [0.5, 0.0]"),
    ("[1,1.0]", "config key 'bench.eval_scales': a value is repeated in [1.0, 1.0]"),
    ("[x]", "config key 'bench.eval_scales[0]': expected a number, got 'x'"),
])  # fmt: skip
def test_bad_eval_scales_in_a_config_are_one_line(value, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config([], [f"bench.eval_scales={value}"])
    assert load_config([], ["bench.eval_scales=0.5,1"]).bench.eval_scales == (0.5, 1.0)


def test_a_sweep_records_one_row_per_scale_from_one_training_run_and_resumes(run, tmp_path):
    data, _ = run
    spec = {"name": "scales", "timeout_s": 300, "runs": [{"scenarios": ["accuracy"]}],
            "overrides": {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in tiny_overrides(data, tmp_path, 4))}
            | {"train.out_dir": str(tmp_path / "train"), "bench.eval_scales": [0.5, 1.0], "bench.iters": 1,
               "bench.warmup": 0}}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert run_sweep(load_spec(tmp_path / "spec.yaml"), out, live=False)["ok"] == 1
    rows = list(read_rows(out / "results.jsonl"))
    train_row, *scaled = rows
    assert [r.point.get(EVAL_SCALE) for r in rows] == [None, 0.5, 1.0] and all(r.ok for r in rows)
    assert train_row.point["eval_scales"] == [0.5, 1.0] and "point_wall_s" in train_row.sweep
    assert all(r.companions == {"train": train_row.point_id} for r in scaled)
    assert scaled[1].metrics[MIOU] == train_row.metrics[MIOU]  # scale 1: the run's own evaluation
    assert run_sweep(load_spec(tmp_path / "spec.yaml"), out, live=False)["skipped"] == 1  # one run: done
    assert len(list(read_rows(out / "results.jsonl"))) == 3


# ---------------------------------------------------------------- the demo


def test_demo_runs_bf16_beside_fp32_only_where_bf16_is_native(tmp_path):
    from cityseg_fast.commands import demo

    path = ROOT / "configs" / "sweeps" / "demo_cpu.yaml"
    for quick in (False, True):
        counts = {}
        for bf16 in ("native", "emulated"):
            _, sweep = demo.demo_plan(path, quick, tmp_path / "prepared", bf16)
            (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
            points = load_spec(tmp_path / "sweep.yaml", tmp_path).points
            counts[bf16] = points
        native = {(p.scenario, p.cfg.precision.dtype) for p in counts["native"]}
        assert {("model", "bf16"), ("e2e", "bf16")} <= native and all(p.cfg.precision.dtype == "fp32" for p in counts["emulated"])
        fp32_ids = {p.id for p in counts["emulated"]}
        for p in (p for p in counts["native"] if p.cfg.precision.dtype == "bf16"):  # each has its fp32 twin
            twin = replace_cfg(p.cfg, precision={"dtype": "fp32"})
            assert point_id(p.scenario, point_for(p.scenario, twin)) in fp32_ids, (quick, p.scenario)


def test_mixed_precision_section_pairs_points_that_differ_in_precision_alone(tmp_path):
    from cityseg_fast.report.mixed_precision import emulated_note, mixed_precision_section
    from cityseg_fast.report.runs import load_runs

    def row(scenario, dtype, ips, infer=None, **extra):
        cfg = load_config([], [f"precision.dtype={dtype}", "loader.batch_size=4", *extra.get("over", [])])
        metrics = {"images_per_s": ips, "device": "cpu", **({"infer_images_per_s": infer} if infer else {})}
        return row_for(scenario, cfg, metrics, env={"bf16": {"cpu": extra.get("bf16", "native")}})

    for r in (row("model", "fp32", 10.0, 40.0), row("model", "bf16", 16.5, 90.0), row("e2e", "fp32", 8.0),
              row("e2e", "bf16", 12.0), row("model", "bf16", 99.0, over=["loader.batch_size=8"])):  # fmt: skip
        append_row(tmp_path / "results.jsonl", r)
    text = mixed_precision_section(load_runs([tmp_path]))
    lines = [line for line in text.splitlines() if line.startswith("| model") or line.startswith("| e2e")]
    assert len(lines) == 2  # the batch-8 bf16 point has no fp32 twin: no pair
    assert "| 1.65x | 2.25x |" in lines[0] and "| 1.50x | – |" in lines[1]
    assert emulated_note(load_runs([tmp_path])) == ""
    other = tmp_path / "emulated"
    append_row(other / "results.jsonl", row("model", "fp32", 10.0, bf16="emulated"))
    runs = load_runs([other])
    assert mixed_precision_section(runs) == "" and "this CPU emulates bf16" in emulated_note(runs)
