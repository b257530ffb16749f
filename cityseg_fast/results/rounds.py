"""Repeated measurements: the rounds of a point folded into one row, the median of each metric and the spread.

    rows = merge(collapse_rounds(latest_per_point(rows)[0]))   # what report/runs.py does

A sweep with `repeats: N` (bench/sweep_spec.py), like any benchmark that passes `point={"round": r}` to
`row_for`, records each measurement of a point as its own row whose point has a `round` key. Folded here:
one row per point without the `round` key (so its id is the id the point has unrepeated, the one its
companions name), each numeric metric the median over the ok rounds (a list of numbers, such as
per_class_iou, element by element), every other value from the last ok round, and three more metrics:

    rounds                 how many rounds were ok (the median is over these)
    rounds_total           how many rounds were recorded (ok or not)
    images_per_s_rounds    images/s of each ok round, in round order: the spread the report shows

Derived metrics (e2e efficiency) are then computed from the folded rows, i.e. from the medians. A point
with no ok round keeps its last failure. Rows without a `round` key pass through unchanged.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable
from typing import Any

from cityseg_fast.results.scenarios import IMAGES_PER_S
from cityseg_fast.results.schema import Row, point_id

ROUND = "round"  # the point key of a repeated measurement
ROUNDS = "rounds"  # metrics of a folded row: ok rounds, all rounds, images/s of each ok round
ROUNDS_TOTAL = "rounds_total"
IMAGES_PER_S_ROUNDS = IMAGES_PER_S + "_rounds"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _median(values: list[Any]) -> Any:
    """The median of the numbers among `values` (None when there are none); lists of numbers of one
    length element by element; anything else: the last value."""
    nums = [v for v in values if _number(v)]
    if nums:
        return statistics.median(nums)
    lists = [v for v in values if isinstance(v, list)]
    if lists and len(lists) == len(values) and len({len(v) for v in lists}) == 1:
        return [_median([v[i] for v in lists]) for i in range(len(lists[0]))]
    return values[-1] if values else None


def _unrepeated(point: Any) -> dict[str, Any]:
    return {k: v for k, v in point.items() if k != ROUND}


def _fold(group: list[Row]) -> Row:
    """One row for the rounds of one point (see the module docstring)."""
    ok = sorted((r for r in group if r.ok), key=lambda r: r.point[ROUND])
    last = (ok or group)[-1]
    if ok:
        keys = dict.fromkeys(k for r in ok for k in r.metrics)
        values = {k: [r.metrics[k] for r in ok if r.metrics.get(k) is not None] for k in keys}
        metrics = {k: _median(v) for k, v in values.items()}
        metrics[IMAGES_PER_S_ROUNDS] = [r.metrics.get(IMAGES_PER_S) for r in ok]
    else:
        metrics = dict(last.metrics)
    metrics.update({ROUNDS: len(ok), ROUNDS_TOTAL: len(group)})
    point = _unrepeated(last.point)
    return dataclasses.replace(
        last, point=point, point_id=point_id(last.scenario, point), metrics=metrics,
        time=max(r.time for r in group),
    )  # fmt: skip


def collapse_rounds(rows: Iterable[Row]) -> list[Row]:
    """`rows` with the rounds of each repeated point folded into one row, in order of first appearance."""
    out: list[Row | list[Row]] = []
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if ROUND not in row.point:
            out.append(row)
            continue
        key = point_id(row.scenario, _unrepeated(row.point))
        if key not in groups:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(row)
    return [_fold(x) if isinstance(x, list) else x for x in out]
