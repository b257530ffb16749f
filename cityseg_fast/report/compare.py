"""Run comparison: ratios per matching point (same point_id), regressions and improvements beyond noise.

The first run is the baseline; every other run is compared with it point by point. The compared
metric is images_per_s (higher is better), or miou for accuracy rows.

Noise: a throughput change counts only when it leaves the noise band
    band = max(MIN_BAND, IQR/median of the baseline row + IQR/median of the other row)
taken from the rows' own latency samples (latency_ms_iqr / latency_ms_median, or latency_ms_p50);
where either row did not record them, band = DEFAULT_BAND (5%). mIoU changes count beyond
MIOU_BAND (1 mIoU point): accuracy rows carry no spread of their own.
A point that was ok in the baseline and oom/error now is a regression, and the reverse an improvement.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cityseg_fast.diskio import atomic_path
from cityseg_fast.report.format import DASH, LONG, TOP_N, fmt_num, md_table, miou_pct
from cityseg_fast.report.runs import Run, flat_point, point_label, split_keys
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import (
    IMAGES_PER_S,
    LATENCY_MS_IQR,
    LATENCY_MS_MEDIAN,
    LATENCY_MS_P50,
    MIOU,
)

DEFAULT_BAND = 0.05
MIN_BAND = 0.02
MIOU_BAND = 1.0  # mIoU points (percent)

REGRESSION, IMPROVEMENT, SAME = "regression", "improvement", "within noise"


@dataclass
class Change:
    point_id: str
    scenario: str
    label: str
    baseline: str  # run names
    other: str
    metric: str
    base_value: float | None
    value: float | None
    ratio: float | None  # other / baseline (for miou: difference in points)
    band: float
    band_source: str  # "IQR" | "default" | "mIoU"
    verdict: str
    note: str = ""


def relative_spread(row: Row) -> float | None:
    """IQR / median of the row's latency samples, or None if it did not record them."""
    iqr = row.number(LATENCY_MS_IQR)
    med = row.number(LATENCY_MS_MEDIAN) or row.number(LATENCY_MS_P50)
    if iqr is None or not med:
        return None
    return iqr / med


def noise_band(a: Row, b: Row) -> tuple[float, str]:
    sa, sb = relative_spread(a), relative_spread(b)
    if sa is None or sb is None:
        return DEFAULT_BAND, "default"
    return max(MIN_BAND, sa + sb), "IQR"


def compare_pair(
    base: Row, other: Row, label: str, base_run: str, other_run: str
) -> Change:
    acc = base.scenario == "accuracy"
    key = MIOU if acc else IMAGES_PER_S
    mk = dict(
        point_id=base.point_id,
        scenario=base.scenario,
        label=label,
        baseline=base_run,
        other=other_run,
        metric=key,
    )
    a_ok, b_ok = base.ok, other.ok
    if not (a_ok and b_ok):
        if a_ok:
            verdict, note = REGRESSION, f"now {other.status}: {other.error or ''}".strip()
        elif b_ok:
            verdict, note = IMPROVEMENT, f"was {base.status}, now ok"
        else:
            verdict, note = SAME, f"failing in both ({base.status} → {other.status})"
        return Change(
            **mk,
            base_value=base.number(key),
            value=other.number(key),
            ratio=None,
            band=0.0,
            band_source=DASH,
            verdict=verdict,
            note=note,
        )
    va, vb = base.number(key), other.number(key)
    if va is None or vb is None:
        return Change(
            **mk,
            base_value=va,
            value=vb,
            ratio=None,
            band=0.0,
            band_source=DASH,
            verdict=SAME,
            note=f"{key} missing",
        )
    if acc:
        diff = miou_pct(vb) - miou_pct(va)
        verdict = REGRESSION if diff < -MIOU_BAND else IMPROVEMENT if diff > MIOU_BAND else SAME
        return Change(
            **mk, base_value=va, value=vb, ratio=diff, band=MIOU_BAND, band_source="mIoU", verdict=verdict
        )
    band, src = noise_band(base, other)
    ratio = vb / va if va else None
    if ratio is None:
        verdict = SAME
    else:
        verdict = REGRESSION if ratio < 1 - band else IMPROVEMENT if ratio > 1 + band else SAME
    return Change(**mk, base_value=va, value=vb, ratio=ratio, band=band, band_source=src, verdict=verdict)


def compare_runs(runs: Sequence[Run]) -> tuple[list[Change], dict[str, dict[str, int]]]:
    """Changes of runs[1:] against runs[0] on shared point_ids, and per run {only_in_baseline, only_here}."""
    if len(runs) < 2:
        return [], {}
    base = runs[0]
    base_rows = {r.point_id: r for r in base.rows}
    changes: list[Change] = []
    unmatched: dict[str, dict[str, int]] = {}
    for run in runs[1:]:
        rows = {r.point_id: r for r in run.rows}
        shared = [pid for pid in base_rows if pid in rows]
        unmatched[run.name] = {
            "only_in_baseline": len(base_rows) - len(shared),
            "only_here": len(rows) - len(shared),
        }
        by_scenario: dict[str, list[str]] = {}
        for pid in shared:
            by_scenario.setdefault(base_rows[pid].scenario, []).append(pid)
        for scenario, pids in by_scenario.items():
            varying, _ = split_keys([base_rows[p] for p in pids])
            for pid in pids:
                p = flat_point(base_rows[pid])
                label = point_label(p, varying or list(p)) or scenario
                changes.append(compare_pair(base_rows[pid], rows[pid], label, base.name, run.name))
    return changes, unmatched


def _value(c: Change, v: float | None) -> str:
    if v is None:
        return DASH
    return f"{miou_pct(v):.1f}%" if c.metric == MIOU else fmt_num(v)


def _change_cell(c: Change) -> str:
    if c.ratio is None:
        return DASH
    if c.metric == MIOU:
        return f"{c.ratio:+.1f} pt"
    return f"{c.ratio:.3f}× ({100 * (c.ratio - 1):+.1f}%)"


def _verdict_cell(c: Change) -> str:
    mark = {REGRESSION: "**▼ regression**", IMPROVEMENT: "**▲ improvement**", SAME: "within noise"}[c.verdict]
    return f"{mark} ({c.note})" if c.note else mark


def _size(c: Change) -> float:
    """How large a change is, for ordering the largest first (a status change counts as the largest)."""
    if c.ratio is None:
        return float("-inf")
    return -abs(c.ratio) if c.metric == MIOU else -abs(c.ratio - 1)


def _change_table(changes: Sequence[Change], base_name: str, other_name: str) -> str:
    body = [
        [
            c.scenario,
            c.label,
            c.metric,
            _value(c, c.base_value),
            _value(c, c.value),
            _change_cell(c),
            DASH
            if c.band_source == DASH
            else (f"±{c.band:g} pt" if c.metric == MIOU else f"±{c.band:.1%} ({c.band_source})"),
            _verdict_cell(c),
        ]
        for c in changes
    ]
    return md_table(
        ["scenario", "point", "metric", base_name, other_name, "change", "noise band", "verdict"],
        body,
        [False, False, False, True, True, True, True, False],
    )


def compare_section(runs: Sequence[Run]) -> str:
    changes, unmatched = compare_runs(runs)
    if len(runs) < 2:
        return ""
    out = [
        f"Baseline: **{runs[0].name}**. Ratios are other ÷ baseline on points with the same point_id; "
        f"img/s for benchmarks (higher is better), mIoU for accuracy runs. A change is marked only beyond the noise "
        f"band: IQR/median of both rows (at least {MIN_BAND:.0%}), {DEFAULT_BAND:.0%} where a row has no IQR, "
        f"±{MIOU_BAND:g} point for mIoU.\n"
    ]
    for run in runs[1:]:
        mine = [c for c in changes if c.other == run.name]
        n_reg = sum(c.verdict == REGRESSION for c in mine)
        n_imp = sum(c.verdict == IMPROVEMENT for c in mine)
        um = unmatched[run.name]
        out.append(
            f"\n### {run.name} vs {runs[0].name}\n\n{len(mine)} matching points: {n_reg} regression(s), "
            f"{n_imp} improvement(s), {len(mine) - n_reg - n_imp} within noise; "
            f"{um['only_in_baseline']} point(s) only in the baseline, {um['only_here']} only in {run.name}.\n\n"
        )
        if not mine:
            continue
        # Regressions first, then improvements: what a reviewer needs to see is at the top.
        order = {REGRESSION: 0, IMPROVEMENT: 1, SAME: 2}
        mine.sort(key=lambda c: (order[c.verdict], c.scenario, c.label))
        marked = [c for c in mine if c.verdict != SAME]
        quiet = [c for c in mine if c.verdict == SAME]
        if len(marked) > LONG:  # the largest changes; comparison.csv has every one
            out.append(f"_{len(marked):,} points changed beyond noise: the {TOP_N} largest changes are shown, every "
                       "point is in `comparison.csv`._\n\n")  # fmt: skip
            marked = sorted(marked, key=lambda c: (order[c.verdict], _size(c)))[:TOP_N]
        if marked:
            out.append(_change_table(marked, runs[0].name, run.name) + "\n")
        if quiet:
            # Unchanged points are the bulk of a comparison: folded, so regressions stay on screen.
            rest = f"\n\n_{len(quiet) - TOP_N:,} more: `comparison.csv`._" if len(quiet) > LONG else ""
            out.append(
                f"\n<details><summary>{len(quiet)} point(s) within noise</summary>\n\n"
                + _change_table(quiet[:TOP_N] if rest else quiet, runs[0].name, run.name)
                + rest
                + "\n\n</details>\n"
            )
    return "".join(out)


def write_comparison_csv(changes: Sequence[Change], path: Path) -> None:
    fields = list(Change.__dataclass_fields__)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for c in changes:
            w.writerow({k: getattr(c, k) for k in fields})
