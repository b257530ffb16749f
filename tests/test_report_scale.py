"""A report of many rows summarises: 500 points made the way benchmarks/report_scale.py makes 10,000 (distinct
copies of the CPU demo's loader, model and e2e rows, some failed) give short tables of the fastest points with a
note on the rest, failures grouped by message, results.csv with every row, and no PNG over 1 MB. No timing."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from cityseg_fast.report.build import build_report
from cityseg_fast.report.format import TOP_N
from cityseg_fast.report.plots import PLOT_FILES

REPO = Path(__file__).resolve().parents[1]
ROWS = 500


def _make_rows():
    spec = importlib.util.spec_from_file_location("report_scale", REPO / "benchmarks" / "report_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_rows


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    results = _make_rows()(ROWS, tmp_path_factory.mktemp("rows"))
    lines = results.read_text().splitlines()
    for i in range(0, len(lines), 25):  # 20 failures, two messages
        row = json.loads(lines[i])
        error = "timeout: point ran longer than 600 s" if i % 50 else "CUDA out of memory. Tried to allocate 2 GiB"
        row.update(status="error" if i % 50 else "oom", error=error, metrics={})
        lines[i] = json.dumps(row)
    results.write_text("\n".join(lines) + "\n")
    return build_report([results.parent], tmp_path_factory.mktemp("report"))


def _table_under(md: str, title: str) -> list[list[str]]:
    """The cells of the first table under `title` (header first, the rule left out)."""
    lines = []
    for line in md.split(title, 1)[1].splitlines()[1:]:
        if line.startswith("#") or (lines and not line.startswith("|")):
            break
        lines += [line] if line.startswith("|") else []
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines if not line.startswith("|--")]


def test_long_tables_show_the_fastest_points_and_say_where_the_rest_is(big):
    md = big.read_text()
    for title in ("### Loaders alone", "### Model only", "### End to end"):
        head, *body = _table_under(md, title)
        assert len(body) == TOP_N, title  # the fastest points, not hundreds
        ips = [float(row[head.index("img/s")].replace(",", "")) for row in body]
        assert ips == sorted(ips, reverse=True), title  # best first
    assert md.count(f"the {TOP_N} with the highest img/s") >= 3
    assert "Every point is in `results.csv`" in md
    assert re.search(r"_\d[\d,]* end-to-end points: [\d,]+ model-bound", md)  # the bottleneck's verdicts, counted
    assert len(_table_under(md, "## Bottleneck")) == 1 + TOP_N
    assert len(md.encode()) < 120_000  # a page, not 2.4 MB


def test_failures_are_grouped_by_message(big):
    md = big.read_text()
    section = md.split("## Failures", 1)[1].split("\n## ", 1)[0]
    assert "20 point(s) failed, by message" in section
    assert "timeout: point ran longer than 600 s" in section and "**OOM**" in section
    assert section.count("\n| ") <= 2 + 6  # one line per (scenario, status, message), not per point


def test_results_csv_keeps_every_row(big):
    with open(big.parent / "results.csv", newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == ROWS


def test_no_plot_grows_with_the_rows(big):
    drawn = [big.parent / name for name in PLOT_FILES if (big.parent / name).exists()]
    assert {p.name for p in drawn} >= {"loaders.png", "e2e_efficiency.png", "throughput_vs_batch.png"}
    for path in drawn:
        assert path.stat().st_size < 1_000_000, path.name
        with Image.open(path) as im:
            assert im.size[0] <= 3000 and im.size[1] <= 2500, (path.name, im.size)
