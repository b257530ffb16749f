"""`cityseg study`: the dry run lists every run with its seed and estimate; a killed study resumes without
repeating a finished run, duplicating or losing a row; conclusions call a planted difference a difference
and noise no measurable difference; every figure is a valid PNG; Welch's t-test against known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from engine_fixtures import kill_after_first_row, run_cli
from PIL import Image

from cityseg_fast.bench.study_runs import load_study, plan
from cityseg_fast.cli import main
from cityseg_fast.config import Config, load_config, to_dict
from cityseg_fast.errors import UserError
from cityseg_fast.report.stats import summarize, t_two_sided_p, welch
from cityseg_fast.report.study_design import design, family
from cityseg_fast.report.study_plots import PLOT_FILES
from cityseg_fast.report.study_report import build_study_report
from cityseg_fast.report.study_text import NOT_RECIPE, RECIPE_KEYS, recipe
from cityseg_fast.results import append_row, read_rows, row_for

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
# The tiniest real study: a 4-wide U-Net on 64x128 synthetic frames, 32x64 crops, 4 iterations per run.
TINY = {
    "name": "tiny",
    "study": {
        "seeds": [0, 1],
        "data": {"synth": {"train": 4, "val": 2, "size": [64, 128]},
                 "prepare": {"q95": {"image_format": "jpeg"}}},
        "estimate": {"gflop_per_s": 20, "overhead_s": 4},
    },
    "overrides": {
        "data.root": "${STUDY_DATA}/q95", "data.crop": [32, 64], "data.scale_range": [0.5, 1.0],
        "model.name": "unet_s16", "model.base_width": 4, "loader.backend": "torch", "loader.num_workers": 0,
        "loader.batch_size": 2, "loader.eval_batch_size": 2, "train.iters": 4, "train.eval_interval": 2,
        "train.log_interval": 2, "train.ckpt_interval": 4, "train.optimizer": "adamw", "train.lr": 0.005,
    },
    "timeout_s": 240,
    "runs": [{"scenarios": ["accuracy"]}],
}  # fmt: skip


def _config(tmp: Path, **changes) -> Path:
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def test_dry_run_lists_every_run_with_its_seed_and_estimate(tmp_path, capsys):
    cfg = _config(tmp_path, runs=[{"scenarios": ["accuracy"], "grid": {"train.lr": [0.001, 0.005]}},
                                  {"scenarios": ["baseline"]}])  # fmt: skip
    study = load_study(cfg, tmp_path / "out")
    runs = plan(study)
    acc = [r for r in runs if r.scenario == "accuracy"]
    assert [(r.seed, r.label) for r in acc] == [
        (s, label) for s in (0, 1) for label in ("(reference)", "lr=0.005")
    ]  # 2 points x 2 seeds, seed-major; each named by what it changes of the first
    assert [r.seed for r in acc] == [0, 0, 1, 1] and len(runs) == 5  # + one baseline (it has no seed)
    assert all(r.estimate_s >= 4 and not r.done and not r.calibrated for r in runs)  # 4 s overhead + FLOPs
    assert all(r.estimate_s > 4 for r in acc)
    seeds = {(sp.cfg.train.seed, sp.cfg.loader.seed, sp.cfg.train.resume) for sp in study.spec.points}
    assert seeds == {(0, 0, "never"), (1, 1, "never")}  # the seed sets both; every run starts afresh
    assert main(["study", str(cfg), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().err
    assert printed.count("to run") == 5 and "estimated" in printed
    assert not (tmp_path / "out" / "results.jsonl").exists()  # a dry run runs nothing


def test_study_config_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="needs a `study:` block"):
        load_study(_config(tmp_path, study=None), tmp_path / "o")
    with pytest.raises(UserError, match="study.seeds"):
        load_study(_config(tmp_path, study={**TINY["study"], "seeds": [0, 0]}), tmp_path / "o")
    seeded = [{"scenarios": ["accuracy"], "grid": {"train.seed": [3]}}]
    with pytest.raises(UserError, match=r"runs\[0\] sets train.seed; a study's seeds come from study.seeds"):
        load_study(_config(tmp_path, runs=seeded), tmp_path / "o")
    with pytest.raises(UserError, match="overrides sets loader.seed"):
        load_study(_config(tmp_path, overrides={**TINY["overrides"], "loader.seed": 1}), tmp_path / "o")


def test_killed_study_resumes_without_repeating_a_run_or_losing_a_row(tmp_path):
    cfg, out = _config(tmp_path), tmp_path / "out"
    results = out / "results.jsonl"
    args = ("study", str(cfg), "--out", str(out))
    kill_after_first_row(results, *args)  # mid-run (the second seed's)
    first = list(read_rows(results))
    assert len(first) == 1, "the study should have been killed while training its second run"
    finished = Path(first[0].metrics["out_dir"])
    log_before = (finished / "metrics.jsonl").read_bytes()
    done = run_cli(*args, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(read_rows(results))
    assert len(rows) == 2 and all(r.status == "ok" for r in rows) and rows[0] == first[0]
    assert sorted(r.point["seed"] for r in rows) == [0, 1] and len({r.point_id for r in rows}) == 2
    assert (finished / "metrics.jsonl").read_bytes() == log_before  # the finished run was not trained again
    second = Path(rows[1].metrics["out_dir"]) / "metrics.jsonl"
    assert '"resume"' not in second.read_text()  # the killed run trained again from iteration 0
    md = (out / "report" / "STUDY.md").read_text()
    assert "2 finished training runs of 1 settings" in md and "## Conclusions" in md
    assert (out / "report" / "study_predictions.png").read_bytes()[:8] == PNG


# ---------------------------------------------------------------- planted rows


def _frames(run_dir: Path) -> list[dict]:
    """Three tiny example frames (input, label, prediction PNGs) as a run writes them."""
    (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(3):
        names = {key: f"predictions/f{k}_{key}.png" for key in ("input", "label", "pred")}
        Image.fromarray(np.full((16, 32, 3), 40 * k, np.uint8)).save(run_dir / names["input"])
        for key in ("label", "pred"):
            Image.fromarray(np.full((16, 32), k, np.uint8), "P").save(run_dir / names[key])
        out.append({"stem": f"f{k}", "size": [16, 32], **names})
    return out


def _row(tmp: Path, overrides: list[str], seed: int, miou: float, ips: float) -> dict:
    cfg = load_config([], ["data.crop=[32,64]", "loader.batch_size=2", "train.iters=20", *overrides,
                           f"train.seed={seed}", f"loader.seed={seed}"])  # fmt: skip
    run_dir = tmp / "runs" / f"{cfg.model.name}-{cfg.train.lr}-{seed}"
    metrics = {
        "miou": miou, "acc": 0.5 + miou, "per_class_iou": [miou + 0.01 * (i % 3) for i in range(19)],
        "images_per_s": ips, "train_wall_s": 100.0 / ips, "mem_host_peak_rss_mib": 900.0, "device": "cpu",
        "params": 1e6, "flops_per_image": 2e9, "train_flops_per_image": 6e9, "out_dir": str(run_dir),
        "train_images": 40, "val_images": 10, "val_predictions": _frames(run_dir),
        "curves": {"train": {"iter": [10, 20], "loss": [2.0, 1.5], "wall_s": [5.0, 10.0]},
                   "eval": {"iter": [10, 20], "miou": [miou / 2, miou], "wall_s": [6.0, 11.0]}},
    }  # fmt: skip
    return row_for("accuracy", cfg, metrics, env={"cpu": "test CPU", "cpu_cores": 2, "torch": "x"})


def _planted(tmp: Path) -> Path:
    """A reference U-Net; an FCN far below it (a real difference); an lr within noise of it; a baseline."""
    settings = [
        (["model.name=unet_s16"], (0.300, 0.310, 0.320), (20.0, 21.0, 19.0)),
        (["model.name=fcn_resnet50"], (0.200, 0.210, 0.205), (5.0, 5.2, 4.9)),
        (["model.name=unet_s16", "train.lr=0.02"], (0.305, 0.330, 0.300), (20.5, 19.5, 20.0)),
        (["model.name=fcn_resnet50", "train.lr=0.02"], (0.150, 0.155, 0.160), (5.1, 5.0, 5.0)),
    ]
    for over, mious, ipss in settings:
        for seed, (m, ips) in enumerate(zip(mious, ipss, strict=True)):
            append_row(tmp / "results.jsonl", _row(tmp, over, seed, m, ips))
    base = row_for(
        "baseline", load_config([], []), {"miou": 0.1, "per_class_iou": [0.1] * 19, "acc": 0.3}, env={}
    )
    append_row(tmp / "results.jsonl", base)
    return tmp


def test_conclusions_call_a_real_difference_one_and_noise_none(tmp_path):
    d = design(list(read_rows(_planted(tmp_path) / "results.jsonl")))
    assert (
        d.reference is not None
        and d.reference.point["model"] == "unet_s16"
        and d.reference.point["lr"] == 0.01
    )
    assert [a.name for a in d.axes] == ["architecture", "lr"]
    md = build_study_report(tmp_path, tmp_path / "report", title="planted").read_text()
    conclusions = md.split("## Conclusions", 1)[1]
    fcn = next(line for line in conclusions.splitlines() if line.startswith("- fcn_resnet50 reaches"))
    assert "20.5 ± 0.5 mIoU, 0.66x unet_s16 (31.0 ± 1.0" in fcn and ": a difference (Welch's t" in fcn
    assert "training throughput 0.25x (5.03 vs 20.0 img/s)" in fcn
    lr = next(line for line in conclusions.splitlines() if line.startswith("- unet_s16 at lr 0.02 reaches"))
    assert "no measurable difference (Welch's t" in lr and "a difference" not in lr
    fcn_lr = next(line for line in conclusions.splitlines() if line.startswith("- fcn_resnet50 at lr 0.02"))
    assert "against 20.5 ± 0.5 for fcn_resnet50 at lr 0.01" not in fcn_lr  # a difference: the ratio form
    assert "0.76x fcn_resnet50 at lr 0.01 (20.5 ± 0.5; -5.0 points): a difference" in fcn_lr
    assert "4 of 4 settings beat the per-pixel colour baseline (10.0 mIoU)" in conclusions
    assert "**Learning rate** (each against the same architecture at lr 0.01)" in conclusions
    for heading in ("## Methodology", "### Models", "### Recipe", "### Seeds and statistics", "## Results",
                    "### Architecture", "### Learning rate", "Hardware and software"):  # fmt: skip
        assert heading in md, heading
    assert "| unet_s16 | 3 | 31.0 ± 1.0 |" in md  # the axis table: mean ± std over the seeds
    for name in PLOT_FILES:  # every figure drawn (an FCN and a U-Net, curves, predictions) and a valid PNG
        assert f"]({name})" in md, name
        with Image.open(tmp_path / "report" / name) as img:
            img.verify()
        assert (tmp_path / "report" / name).read_bytes()[:8] == PNG


def test_the_recipe_names_every_config_key_but_a_short_exclusion():
    """A key added to a config section shows up in STUDY.md's recipe unless NOT_RECIPE says why not."""
    keys = {f"{s}.{k}" for s, section in to_dict(Config()).items() for k in section}
    named = set(RECIPE_KEYS)
    assert named <= keys and not named & NOT_RECIPE
    assert keys - named == {k for k in keys if k in NOT_RECIPE or k.split(".")[0] in NOT_RECIPE}
    assert RECIPE_KEYS[0] == "model.name" and {"train.lr", "data.crop", "loader.batch_size"} <= named
    rows = [row_for("accuracy", load_config([], ["train.lr=0.02", "data.crop=[32,64]"]), {"miou": 0.1}, env={}),
            row_for("accuracy", load_config([], ["data.crop=[32,64]"]), {"miou": 0.1}, env={})]  # fmt: skip
    text = recipe(rows)
    assert "`data.crop` 32x64" in text and "`train.lr` ∈ {0.01, 0.02}" in text and "data.root" not in text


def test_welch_matches_known_t_quantiles():
    assert t_two_sided_p(2.776445, 4) == pytest.approx(0.05, abs=1e-6)  # t(0.975, 4)
    assert t_two_sided_p(12.7062, 1) == pytest.approx(0.05, abs=1e-5)
    assert t_two_sided_p(1.0, 10) == pytest.approx(0.340893, abs=1e-5)
    w = welch([0.30, 0.31, 0.32], [0.25, 0.26, 0.27])
    assert w.significant and w.df == pytest.approx(4.0) and w.t == pytest.approx(6.1237, abs=1e-3)
    assert not welch([0.30, 0.35, 0.32], [0.31, 0.29, 0.33]).significant
    assert welch([0.3], [0.2, 0.25]) is None and summarize([0.3]).std == 0.0


def test_shipped_studies_expand_to_what_the_issue_asks(monkeypatch, tmp_path):
    monkeypatch.setenv("NGPU", "8")
    for name, world in (("cpu_synth", 1), ("cityscapes_gpu", 8)):
        study = load_study(ROOT / "configs" / "studies" / f"{name}.yaml", tmp_path / name)
        acc = [sp for sp in study.spec.points if sp.scenario == "accuracy"]
        assert study.seeds == [0, 1, 2] and {sp.world_size for sp in acc} == {world}
        rows = [row_for("accuracy", sp.cfg, {"miou": 0.1}, env={}, world_size=sp.world_size) for sp in acc]
        d = design(rows)
        assert len(d.settings) * 3 == len(acc), name  # every setting once per seed
        assert {"FCN", "U-Net"} <= {family(s.point) for s in d.axes[0].settings}, name
        axes = {a.name for a in d.axes}
        assert {"architecture", "lr", "batch_size", "resolution", "image_format"} <= axes, (name, axes)


def test_curves_read_either_log_clock_and_lay_a_resumed_run_end_to_end():
    from cityseg_fast.bench.accuracy import curves

    old = [{"event": "start", "time": 100.0}, {"event": "train", "iter": 10, "loss": 2.0, "wall_s": 5.0},
           {"event": "eval", "iter": 10, "miou": 0.1, "time": 107.0}]  # fmt: skip
    resumed = [{"event": "resume", "timestamp": 500.0}, {"event": "train", "iter": 20, "loss": 1.0, "wall_s": 4.0},
               {"event": "eval", "iter": 20, "miou": 0.2, "timestamp": 506.0}]  # fmt: skip
    c = curves(old + resumed)
    assert c["train"] == {"iter": [10, 20], "loss": [2.0, 1.0], "wall_s": [5.0, 11.0]}
    assert c["eval"] == {"iter": [10, 20], "miou": [0.1, 0.2], "wall_s": [7.0, 13.0]}  # downtime not counted
