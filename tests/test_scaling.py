"""Scaling in the report from real gloo runs: the model scenario at world size 1 (one process) and 2 (torchrun),
then `cityseg report`: one scaling row with img/s at 2 beside 2 x img/s at 1, the efficiency results.derive
gives, the per-rank figures, and the plot."""

from __future__ import annotations

import json

import pytest
from engine_fixtures import TORCHRUN, _run, run_cli
from PIL import Image

from cityseg_fast.report.build import build_report
from cityseg_fast.report.scaling import panel_labels
from cityseg_fast.results import merge, read_rows
from cityseg_fast.results.derive import SCALING_EFFICIENCY

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model.name=unet_s16", "model.base_width=4", "data.crop=[32,64]", "loader.batch_size=2",
        "bench.warmup=2", "bench.iters=6"]  # fmt: skip


def test_rows_at_world_size_one_and_two_make_a_scaling_row(tmp_path):
    results = tmp_path / "run" / "results.jsonl"
    run_cli("bench", "model", *TINY, "--append", str(results), timeout=300)
    _run([*TORCHRUN, "--nproc_per_node=2", "--standalone", "-m", "cityseg_fast", "bench", "model", *TINY,
          "--append", str(results)], timeout=300, check=True)  # fmt: skip
    one, two = sorted(merge(read_rows(results)), key=lambda r: r.point["world_size"])
    assert (one.point["world_size"], two.point["world_size"]) == (1, 2)
    eff = two.derived[SCALING_EFFICIENCY]
    assert eff == pytest.approx(two.number("images_per_s") / (2 * one.number("images_per_s")))
    assert len(two.metrics["rank_compute_s"]) == 2 and two.metrics["slowest_rank"] in (0, 1)

    md = build_report([results.parent], tmp_path / "report").read_text()
    section = md.split("## Scaling across ranks", 1)[1].split("\n## ", 1)[0]
    (line,) = [ln for ln in section.splitlines() if ln.startswith("| model |")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["model", "unet_s16 fp32", "2"]
    assert cells[6] == f"{100 * eff:.0f}%"  # the efficiency results.derive gives, nothing recomputed
    assert cells[7].startswith("rank ") and "–" in cells[8] and "–" in cells[9]  # the per-rank figures
    with Image.open(tmp_path / "report" / "scaling.png") as im:
        im.verify()
    assert json.loads(results.read_text().splitlines()[-1])["point"]["world_size"] == 2


def test_a_scaling_panels_legend_writes_the_shared_configuration_once():
    plain = "unet_s16 fp32 torch image_format=jpeg num_workers=1"
    slowed = plain + " rank_sleep_ms=250 slowed_rank=1"
    assert panel_labels([plain, slowed]) == (
        ["unet_s16 fp32", "unet_s16 fp32 rank_sleep_ms=250 slowed_rank=1"],
        "torch image_format=jpeg num_workers=1",
    )
    assert panel_labels(["unet_s16 fp32", "fcn8s_vgg16 fp32"]) == (["unet_s16 fp32", "fcn8s_vgg16 fp32"], "")
    assert panel_labels([slowed]) == ([slowed], "")  # one line: nothing to factor out
