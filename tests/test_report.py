"""`cityseg report`: every section from a fixture with ok/oom/error rows, valid PNGs, CSV, comparison, bad inputs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from cityseg_fast.cli import main
from cityseg_fast.config import format_hw, load_config, parse_hw
from cityseg_fast.errors import UserError
from cityseg_fast.report import compare
from cityseg_fast.report.build import build_report
from cityseg_fast.report.format import fmt_mib, fmt_num, fmt_pct
from cityseg_fast.report.plots import PLOT_FILES, pareto_front
from cityseg_fast.report.runs import load_run
from cityseg_fast.results import Row, append_row, read_rows, row_for

FIXTURE = Path(__file__).parent / "fixtures" / "results_fixture.jsonl"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run_dir(tmp: Path, name: str, rows: list[Row]) -> Path:
    d = tmp / name
    for row in rows:
        append_row(d / "results.jsonl", row)
    return d


@pytest.fixture(scope="module")
def fixture_rows() -> list[Row]:
    return list(read_rows(FIXTURE))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    shutil.copy(FIXTURE, run / "results.jsonl")
    out = tmp_path_factory.mktemp("report")
    return build_report([run], out)


def test_fixture_covers_every_scenario_and_status(fixture_rows):
    assert {r.scenario for r in fixture_rows} == {"loader", "model", "e2e", "infer", "accuracy", "baseline"}
    assert {r.status for r in fixture_rows} == {"ok", "oom", "error"}


def test_report_has_every_section(report):
    md = report.read_text()
    for heading in [
        "## Runs",
        "## Environment",
        "## Best configuration per resolution",
        "## Bottleneck: loader vs model vs end to end",
        "## Throughput, latency, memory and MFU per point",
        "### Model only",
        "### Inference",
        "### End to end",
        "### Loaders alone",
        "## Accuracy",
        "Per-class IoU",
        "## Plots",
    ]:
        assert heading in md, heading
    # Environment from the rows, failed points with their messages, human units.
    for text in ["NVIDIA H100 80GB HBM3", "580.65.06", "0123456789ab", "2.4.0"]:
        assert text in md
    assert "**OOM**: CUDA out of memory" in md
    assert "**error**: RuntimeError: cuDNN error" in md
    assert "**error**: FloatingPointError: loss is NaN" in md
    assert re.search(r"\| \d+\.\d\d GiB \|", md)
    assert "| sidewalk |" in md  # per-class rows named by cityscapesscripts' classes
    # The bottleneck table, derived by results.merge from the rows each e2e row names: torch is
    # loader-bound and loses 25% on top; DALI GPU and CPU are model-bound. Cores to feed the model's
    # 247 img/s: the loader's CPU ms per image x 247 / 1000 (132 ms -> 32.6 cores for torch).
    assert (
        "| torch → unet 512x1024 bs8 bf16 | 120 | 247 | 120 (min) | 90.0 | 75% | 132 | 32.6 | "
        "loader + overlap loss (75% of the limit) |" in md
    )
    assert "| dali (gpu) → unet 512x1024 bs8 bf16 | 1,450 | 247 | 247 (min) | 235 | 95% | 0.880 | 0.217 | model |" in md
    assert "| dali (cpu) → unet 512x1024 bs8 bf16 | 310 | 247 | 247 (min) | 240 | 97% | 50.1 | 12.4 | model |" in md
    assert "## Loader tuning" not in md and "## Inside a step" not in md  # nothing of either measured
    assert "| colour_baseline |" in md  # the colour baseline beside the trained models
    assert "Not drawn" not in md  # the fixture has data for every plot
    # Every image the Markdown links exists next to it.
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (report.parent / link).is_file(), link


def test_every_plot_is_a_valid_png(report):
    for name in PLOT_FILES:
        path = report.parent / name
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            assert 500 <= w <= 3000 and 250 <= h <= 2500, (name, im.size)
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 100, f"{name} looks blank"


def test_results_csv_flattens_every_row(report, fixture_rows):
    with open(report.parent / "results.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == len(fixture_rows)
    cols = set(records[0])
    assert {"run", "scenario", "status", "error", "model", "batch_size", "images_per_s", "miou"} <= cols
    assert {r["status"] for r in records} == {"ok", "oom", "error"}
    per_class = [r["per_class_iou"] for r in records if r["per_class_iou"]]
    assert per_class and len(json.loads(per_class[0])) == 19


def test_plots_without_data_are_skipped_and_said(tmp_path, fixture_rows):
    loaders_only = [r for r in fixture_rows if r.scenario == "loader"]
    out = tmp_path / "out"
    md = build_report([_run_dir(tmp_path, "loaders", loaders_only)], out).read_text()
    assert (out / "loaders.png").is_file()
    for name in [
        "throughput_vs_batch.png",
        "memory_vs_batch.png",
        "e2e_efficiency.png",
        "miou_vs_throughput.png",
    ]:
        assert not (out / name).exists()
        assert f"`{name}`" in md
    assert "Not drawn" in md
    assert "_no accuracy rows" in md and "_no end-to-end (e2e) rows" in md


def _planted(fixture_rows: list[Row]) -> tuple[list[Row], dict[str, str]]:
    """A copy of the fixture with known changes; returns the rows and {point_id: expected verdict}."""
    rows = list(fixture_rows)
    ok_model = [i for i, r in enumerate(rows) if r.scenario == "model" and r.ok]
    expect = {}

    def change(i, verdict, **fields):  # rows are read-only: a changed row is a new one
        rows[i] = replace(rows[i], **fields)
        expect[rows[i].point_id] = verdict

    def scale(i, factor, verdict, iqr_frac=None):
        m = dict(rows[i].metrics)
        m["images_per_s"] *= factor
        if iqr_frac is not None:
            m["latency_ms_iqr"] = iqr_frac * m["latency_ms_median"]
        change(i, verdict, metrics=m)

    scale(ok_model[0], 0.70, compare.REGRESSION)  # planted regression: -30%
    scale(ok_model[1], 0.98, compare.SAME)  # -2%: noise (band 2x2% IQR -> 4%)
    scale(ok_model[2], 1.30, compare.IMPROVEMENT)
    scale(ok_model[3], 0.92, compare.SAME, iqr_frac=0.10)  # -8% but the rows are 10% noisy
    no_iqr = ok_model[4]
    metrics = {k: v for k, v in rows[no_iqr].metrics.items() if k != "latency_ms_iqr"}
    rows[no_iqr] = replace(rows[no_iqr], metrics=metrics)
    scale(no_iqr, 0.93, compare.REGRESSION)  # -7% beyond the 5% default band (no IQR)
    change(ok_model[5], compare.REGRESSION, status="oom", error="CUDA out of memory", metrics={})  # newly oom
    acc = next(i for i, r in enumerate(rows) if r.scenario == "accuracy" and r.ok)
    metrics = {**rows[acc].metrics, "miou": rows[acc].metrics["miou"] - 0.05}  # -5 mIoU points
    change(acc, compare.REGRESSION, metrics=metrics)
    return rows, expect


def test_comparison_marks_planted_regression_not_noise(tmp_path, fixture_rows):
    rows, expect = _planted(fixture_rows)
    base = _run_dir(tmp_path, "before", fixture_rows)
    other = _run_dir(tmp_path, "after", rows)
    changes, unmatched = compare.compare_runs([load_run(base), load_run(other)])
    verdicts = {c.point_id: c.verdict for c in changes}
    for pid, verdict in expect.items():
        assert verdicts[pid] == verdict, (pid, verdict, [c for c in changes if c.point_id == pid])
    # Nothing else moved, so nothing else is marked.
    others = [c for c in changes if c.point_id not in expect and c.verdict != compare.SAME]
    assert others == []
    assert unmatched == {"after": {"only_in_baseline": 0, "only_here": 0}}

    out = tmp_path / "cmp"
    md = build_report([base, other], out).read_text()
    assert "## Comparison" in md and "### after vs before" in md
    assert "4 regression(s), 1 improvement(s)" in md
    assert "**▼ regression**" in md and "**▲ improvement**" in md
    # Regressions are listed first.
    table = md.split("### after vs before")[1]
    assert table.index("▼ regression") < table.index("▲ improvement") < table.index("| within noise |")
    with open(out / "comparison.csv", newline="") as f:
        assert sum(r["verdict"] == compare.REGRESSION for r in csv.DictReader(f)) == 4


def test_retried_point_keeps_its_ok_result(tmp_path):
    cfg = load_config([], ["model.name=unet", "data.crop=[64,128]", "loader.batch_size=2"])
    rows = [
        row_for("model", cfg, error="killed", env={}),
        row_for("model", cfg, {"images_per_s": 10.0}, env={}),
        row_for("model", load_config([], ["model.name=unet", "loader.batch_size=4"]), {"images_per_s": 12.0}, env={}),
    ]
    run = load_run(_run_dir(tmp_path, "r", rows))
    assert [r.status for r in run.rows] == ["ok", "ok"]
    assert run.superseded == 1


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "no such run directory"),
        (lambda d: d.mkdir(), "results.jsonl: not found"),
        (lambda d: (d.mkdir(), (d / "results.jsonl").write_text("")), "empty"),
        (lambda d: (d.mkdir(), (d / "results.jsonl").write_text("not json\n{}\n")), "none of its 2 lines"),
    ],
    ids=["missing-dir", "no-results", "empty-file", "garbage"],
)
def test_bad_inputs_are_one_line_user_errors(tmp_path, capsys, setup, message):
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(UserError, match=message):
        load_run(run)
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(run) in err
    assert len(err.strip().splitlines()) == 1


def test_cli_report_writes_where_it_says(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / "results.jsonl")
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "REPORT.md").is_file()
    assert str(run / "report" / "REPORT.md") in capsys.readouterr().out


def test_number_formatting():
    assert fmt_num(1234.5) == "1,234" or fmt_num(1234.5) == "1,235"
    assert fmt_num(56.74) == "56.7"
    assert fmt_num(0.91234) == "0.912"
    assert fmt_num(None) == "–"
    assert fmt_mib(512) == "512 MiB"
    assert fmt_mib(3072) == "3.00 GiB"
    assert fmt_pct(0.4123) == "41.2%"
    assert format_hw([512, 1024]) == format_hw((512, 1024)) == "512x1024" and parse_hw("512x1024") == (512, 1024)
    assert format_hw([0.5, 2.0]) == "[0.5, 2.0]" and format_hw("auto") == "auto"  # no size: as it is


def test_pareto_front_drops_dominated_points():
    pts = [
        {"label": "fast", "ips": 500, "miou": 40},
        {"label": "mid", "ips": 250, "miou": 50},
        {"label": "dominated", "ips": 200, "miou": 45},
        {"label": "slow", "ips": 100, "miou": 60},
    ]
    assert [p["label"] for p in pareto_front(pts)] == ["fast", "mid", "slow"]


def test_per_class_columns_are_short_and_the_legend_names_each_configuration(tmp_path):
    """Accuracy runs that differ in many keys: each column header is a letter and the model (not the whole
    configuration), and the legend under the table gives every letter its configuration."""
    iou = [0.5] * 19
    settings = [("unet_s16", ["train.lr=0.01", "train.iters=150"]), ("unet_s16", ["train.lr=0.001", "train.iters=300"]),
                ("fcn8s_vgg16_bn", ["model.base_width=4", "train.optimizer=sgd", "loader.batch_size=2"])]  # fmt: skip
    rows = [row_for("accuracy", load_config([], [f"model.name={m}", "data.crop=[64,128]", *o]),
                    {"miou": 0.2, "per_class_iou": iou, "images_per_s": 3.0}, env={}) for m, o in settings]  # fmt: skip
    rows.append(row_for("baseline", load_config([], []), {"miou": 0.1, "per_class_iou": iou}, env={}))
    md = build_report([_run_dir(tmp_path, "acc", rows)], tmp_path / "out").read_text()
    section = md.split("Per-class IoU", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| class |"))
    heads = [h.strip() for h in header.strip(" |").split("|")][1:]
    assert len(heads) == 4 and max(map(len, heads)) <= 24, heads
    legend = dict(re.findall(r"^- \*\*([A-Z]+)\*\*: (.+)$", section, re.M))
    assert list(legend) == [h.split()[0] for h in heads] == ["A", "B", "C", "D"]
    for head in heads:  # the legend's configuration is the column's: its model, then what varies
        letter, model = head.split(" ", 1)
        assert legend[letter].startswith(model.rstrip("…")), (head, legend[letter])
    wanted = [("colour_baseline",), ("unet_s16", "iters=150", "lr=0.01 "), ("unet_s16", "iters=300", "lr=0.001"),
              ("fcn8s_vgg16_bn", "bs2", "base_width=4", "optimizer=sgd")]  # fmt: skip
    for parts in wanted:  # every configuration named by exactly one letter
        assert sum(v.startswith(parts[0]) and all(p in v + " " for p in parts[1:]) for v in legend.values()) == 1
    assert "Dotted: what the per-pixel colour baseline reaches" in md  # the baseline drawn in the mIoU plot


def test_plot_labels_stay_inside_the_axes_and_do_not_overlap():
    """Two configurations near the right edge and close together (as the demo's were): their labels stay
    inside the plot and apart from each other."""
    from matplotlib.text import Text

    from cityseg_fast.report.plots import _plt, place_labels

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    items = [(7.8, 17.9, "fcn8s_vgg16_bn base_width=4 iters=256"), (7.5, 18.3, "unet_s16 iters=150 lr=0.005"),
             (4.7, 19.6, "unet_s16 base_width=8 iters=300")]  # fmt: skip
    ax.scatter([x for x, _, _ in items], [y for _, y, _ in items])
    ax.set_xlim(0, 8.2)
    ax.set_ylim(0, 24)
    fig.tight_layout()
    anns = place_labels(ax, items, size=8)
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    for a in anns:
        a.update_positions(renderer)
    boxes = [Text.get_window_extent(a, renderer) for a in anns]  # the text alone, not its leader line
    plt.close(fig)
    assert len(boxes) == 3
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])


def _with(row: Row, **metrics) -> Row:
    return replace(row, metrics={**row.metrics, **metrics})


def test_bottleneck_verdict_from_the_measured_stall(tmp_path, fixture_rows):
    """An e2e row with a measured stall names its verdict from it, beside the ratios and the loader's cost."""
    rows = [
        _with(r, stall_fraction=0.37, data_wait_ms_p50=12.0, data_wait_ms_p99=30.0)
        if r.scenario == "e2e" and r.point["loader"] == "torch"
        else _with(r, stall_fraction=0.02, data_wait_ms_p50=0.1, data_wait_ms_p99=0.4)
        if r.scenario == "e2e" and r.point.get("loader_device") == "cpu"
        else _with(r, loader_gpu_mem_mib=900.0)
        if r.scenario == "loader" and r.point.get("loader_device") == "gpu"
        else r
        for r in fixture_rows
    ]
    md = build_report([_run_dir(tmp_path, "stall", rows)], tmp_path / "out").read_text()
    table = md.split("## Bottleneck")[1].split("\n## ")[0]
    assert "| data wait p50 / p99 (ms) | stall | loader CPU ms/img | cores to feed | loader GPU mem |" in table
    assert (
        "| torch → unet 512x1024 bs8 bf16 | 120 | 247 | 120 (min) | 90.0 | 75% | 12.0 / 30.0 | 37% | 132 | 32.6 | – | "
        "loader-bound: the GPU waited 37% of the time + overlap loss (75% of the limit) |" in table
    )
    assert "| 0.100 / 0.400 | 2% | 50.1 | 12.4 | – | model-bound: the GPU waited 2% of the time |" in table
    assert "| – / – | – | 0.880 | 0.217 | 900 MiB | model |" in table  # no stall measured: the ratios say


def _loader_row(i: int, backend: str, ips: float, *settings: str) -> Row:
    base = [f"loader.backend={backend}", "loader.device=cpu", "data.crop=[64,128]", "loader.batch_size=4"]
    cfg = load_config([], [*base, *settings])
    metrics = {"images_per_s": ips, "latency_ms_p50": 4000 / ips, "latency_ms_p99": 5000 / ips,
               "cpu_ms_per_image": 2000 / ips, "mem_host_peak_rss_mib": 300.0 + 100 * i}  # fmt: skip
    return row_for("loader", cfg, metrics, env={})


def test_loader_tuning_section_marks_the_best_setting_and_the_default(tmp_path):
    rows = [
        _loader_row(0, "dali", 100.0),  # the default: num_threads=auto, prefetch_queue_depth=2
        _loader_row(1, "dali", 60.0, "loader.num_threads=1"),
        _loader_row(2, "dali", 125.0, "loader.num_threads=4", "loader.prefetch_queue_depth=3"),
        _loader_row(3, "dali", 110.0, "loader.num_threads=4"),
        _loader_row(4, "torch", 50.0, "loader.num_workers=1"),
        _loader_row(5, "torch", 80.0, "loader.prefetch_factor=4"),
        _loader_row(6, "torch", 30.0, "loader.num_workers=0"),
        _loader_row(7, "synthetic", 9000.0),  # the upper bound, not a loader to tune
    ]
    md = build_report([_run_dir(tmp_path, "tune", rows)], tmp_path / "out").read_text()
    section = md.split("## Loader tuning")[1].split("\n## ")[0]
    assert "| dali (cpu) | num_threads=4 prefetch_queue_depth=3 | 125 | 100 | 80% of the best (-20%) | 4 |" in section
    assert "| torch | num_workers=2 prefetch_factor=4 | 80.0 | – | default not measured | 3 |" in section
    assert "| num_threads=4 prefetch_queue_depth=3 ★ | 125 |" in section
    assert "| num_threads=auto prefetch_queue_depth=2 (default) | 100 |" in section
    assert "| num_workers=0 | 30.0 |" in section  # no workers: no prefetch factor to name
    assert "synthetic" not in section


def test_scaling_section_puts_world_size_n_beside_n_times_world_size_one(report):
    md = report.read_text()
    section = md.split("## Scaling across ranks", 1)[1].split("\n## ", 1)[0]
    # fcn_resnet50 at 4 ranks: 324 img/s against 4 x 104; its rank 3 computes 25% slower: named
    assert "| model | fcn_resnet50 bf16 | 4 | 324 | 104 | 416 | 78% | rank 3 ×1.25 |" in section
    (fcn,) = [line for line in section.splitlines() if "| fcn_resnet50 bf16 |" in line]
    assert fcn.endswith("| **rank 3** |")
    assert "| model | unet bf16 | 4 | 919 | 247 | 988 | 93% | rank 1 ×1.01 |" in section  # no straggler
    assert "![Scaling](scaling.png)" in md
