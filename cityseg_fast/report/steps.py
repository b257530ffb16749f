"""The 'Inside a step' section: where a train step's time goes, from the rows alone.

- the forward / backward / optimizer split that `bench.split_phases` measures on model rows (fwd_ms,
  bwd_ms, opt_ms), beside the whole step's median;
- for each point profiled with `bench.profile=true`, its top ops (self device time on a GPU, self CPU
  time on the CPU, per step) and where its Chrome trace is (bench/profile.py writes both).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cityseg_fast.report.format import DASH, LONG, TOP_N, fmt_num, fmt_pct, md_table
from cityseg_fast.report.runs import Run, flat_point, loader_label, point_label, split_keys
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import (
    BWD_MS,
    FWD_MS,
    LATENCY_MS_P50,
    OPT_MS,
    PROFILE_SORT,
    PROFILE_STEPS,
    PROFILE_TOP_OPS,
    PROFILE_TRACE,
)

PHASES = (FWD_MS, BWD_MS, OPT_MS)
MAX_PROFILES = 5  # top-ops tables shown


def _labels(rows: Sequence[Row]) -> list[str]:
    """Each row's point as a short label: scenario, loader (e2e), and the keys that vary among them."""
    varying, _ = split_keys(rows)
    keys = [k for k in varying if k not in ("loader", "loader_device")] or ["model", "resolution", "batch_size"]
    out = []
    for r in rows:
        p = flat_point(r)
        feed = f"{loader_label(p)} → " if r.scenario == "e2e" else ""
        out.append(f"{r.scenario}: {feed}{point_label(p, keys)}".strip())
    return out


def phase_table(rows: Sequence[Row]) -> str:
    rows = [r for r in rows if all(r.number(k) is not None for k in PHASES)]
    if not rows:
        return ""
    more = f"\n_{len(rows) - TOP_N:,} more points were split: results.csv (fwd_ms, bwd_ms, opt_ms)._\n" if len(rows) > LONG else ""
    rows = rows[:TOP_N] if more else rows
    body = []
    for label, r in zip(_labels(rows), rows, strict=True):
        ms = [r.number(k) for k in PHASES]
        total = sum(ms)
        shares = " / ".join(fmt_pct(v / total, 0) for v in ms) if total > 0 else DASH
        body.append([label, *(fmt_num(v) for v in ms), fmt_num(total), fmt_num(r.number(LATENCY_MS_P50)), shares])
    head = ["point", "forward (ms)", "backward (ms)", "optimizer (ms)", "sum", "train step p50 (ms)", "split"]
    note = (
        "\n\nbench.split_phases times forward (with the loss), backward and the optimizer step in a loop of "
        "their own after the throughput loop, each bracketed by events (medians); the train step p50 is the "
        "measured step (it also zeroes gradients and steps the lr schedule).\n"
    )
    return md_table(head, body, [False] + [True] * 5 + [False]) + note + more


def _trace_cell(run: Run, trace: Any) -> str:
    if not isinstance(trace, str):
        return DASH
    try:
        rel = os.path.relpath(trace, run.path.parent)
    except ValueError:  # another drive
        return f"`{trace}`"
    return f"`{rel}`" if not rel.startswith("..") else f"`{trace}`"


def top_ops_tables(run: Run, rows: Sequence[Row]) -> str:
    rows = [r for r in rows if isinstance(r.metrics.get(PROFILE_TOP_OPS), list)]
    parts = []
    if len(rows) > MAX_PROFILES:  # ten ops each: a few points say what a profile says; each row keeps its own
        parts.append(f"_{len(rows):,} points were profiled; the first {MAX_PROFILES} are shown (each row's "
                     "profile_top_ops and trace are in results.csv)._\n")  # fmt: skip
        rows = rows[:MAX_PROFILES]
    for label, r in zip(_labels(rows), rows, strict=True):
        m = r.metrics
        by = "self device time" if m.get(PROFILE_SORT) == "self_device_time" else "self CPU time"
        ops = [o for o in m[PROFILE_TOP_OPS] if isinstance(o, dict)]
        body = [
            [i, f"`{o.get('op')}`", fmt_num(o.get("calls_per_step")), fmt_num(o.get("self_ms_per_step")),
             fmt_pct(o.get("share"))]
            for i, o in enumerate(ops, 1)
        ]  # fmt: skip
        head = ["#", "op", "calls / step", f"{by} / step (ms)", "share"]
        parts.append(
            f"#### {label}\n\nTop {len(ops)} ops by {by} over {m.get(PROFILE_STEPS, '?')} steady steps; "
            f"trace: {_trace_cell(run, m.get(PROFILE_TRACE))} (chrome://tracing or ui.perfetto.dev).\n\n"
            + md_table(head, body, [True, False, True, True, True])
            + "\n"
        )
    return "\n".join(parts)


def step_section(runs: Sequence[Run]) -> str:
    """Markdown: the phase split table, then each profiled point's top ops ('' when the rows have neither)."""
    parts = []
    for run in runs:
        rows = [r for r in run.rows if r.ok and r.scenario in ("model", "e2e")]
        phases, ops = phase_table(rows), top_ops_tables(run, rows)
        if phases or ops:
            head = f"### {run.name}\n\n" if len(runs) > 1 else ""
            parts.append(head + (phases + "\n" if phases else "") + ops)
    return "\n".join(parts)

