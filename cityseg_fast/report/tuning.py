"""The loader-tuning section: each loader's settings side by side, the best one, and the default's distance.

Like DALI's hw_decoder_bench, from `loader` rows alone (configs/sweeps/loader_tuning_*.yaml measure them):
DALI's num_threads x hw_decoder_load (GPU decoding) x prefetch_queue_depth, the torch DataLoader's
num_workers x prefetch_factor. Rows are grouped by everything else in their point (backend and device,
resolution, batch, dataset, decode-only); what a setting is, and its defaults, come from the scenario
table (results.scenarios.tuning_of). Only groups with two or more settings measured are shown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cityseg_fast.report.format import DASH, LONG, TOP_N, constants_line, fmt_mib, fmt_num, md_table
from cityseg_fast.report.runs import (
    Run,
    loader_label,
    point_label,
    resolution,
    split_point_keys,
    tagged_rows,
)
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import (
    CPU_MS_PER_IMAGE,
    IMAGES_PER_S,
    LATENCY_MS_P50,
    LATENCY_MS_P99,
    LOADER_GPU_MEM_MIB,
    MEM_HOST_PEAK_RSS_MIB,
    tuning_of,
)

Group = dict[str, Any]


def _setting_label(setting: dict[str, Any]) -> str:
    def show(k: str, v: Any) -> str:
        return "auto" if k == "num_threads" and v == 0 else f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(k, v)}" for k, v in setting.items())


def tuning_groups(runs: Sequence[Run]) -> list[Group]:
    """Ok loader rows (not the synthetic one) grouped by their point without the tuning knobs; each group:
    rest (the shared point), rows [(setting, row)], best (the fastest row), default (the row at the
    defaults, or None when not measured)."""
    groups: dict[str, Group] = {}
    for r in tagged_rows(runs, "loader"):
        if r.number(IMAGES_PER_S) is None or r.point.get("loader") == "synthetic":
            continue
        setting, rest = tuning_of(r.point)
        if not setting:
            continue
        key = json.dumps([r.run, rest], sort_keys=True, default=str)
        g = groups.setdefault(key, {"run": r.run, "rest": rest, "rows": []})
        g["rows"].append((setting, r))
    out = []
    for g in groups.values():
        if len({_setting_label(s) for s, _ in g["rows"]}) < 2:
            continue
        g["rows"].sort(key=lambda sr: [sr[0][k] for k in sr[0]])
        g["best"] = max(g["rows"], key=lambda sr: sr[1].number(IMAGES_PER_S))[1]
        g["default"] = next((r for s, r in g["rows"] if not set(s) & set(r.point)), None)
        out.append(g)
    return out


def _vs(row: Row | None, best: Row) -> float | None:
    return None if row is None else row.number(IMAGES_PER_S) / best.number(IMAGES_PER_S)


def _group_title(g: Group, keys: Sequence[str], multi: bool) -> str:
    rest = {**g["rest"], "resolution": resolution(g["rest"])}
    label = f"{loader_label(rest)} {point_label(rest, keys)}".strip()
    return f"[{g['run']}] {label}" if multi else label


def _summary(groups: Sequence[Group], keys: Sequence[str], multi: bool) -> str:
    body = []
    for g in groups:
        best, default = g["best"], g["default"]
        ratio = _vs(default, best)
        if default is None:
            gap = "default not measured"
        elif default is best:
            gap = "the default is the best"
        else:
            gap = f"{ratio:.0%} of the best ({100 * (ratio - 1):+.0f}%)"
        body.append([
            _group_title(g, keys, multi),
            _setting_label(tuning_of(best.point)[0]),
            fmt_num(best.number(IMAGES_PER_S)),
            fmt_num(default.number(IMAGES_PER_S)) if default else DASH,
            gap,
            len(g["rows"]),
        ])  # fmt: skip
    head = ["loader", "best setting", "best img/s", "default img/s", "default vs best", "settings"]
    return md_table(head, body, [False, False, True, True, False, True])


COLUMNS = [  # (header, metric, format); a metric no row of the group has is left out
    ("img/s", IMAGES_PER_S, fmt_num),
    ("batch p50 (ms)", LATENCY_MS_P50, fmt_num),
    ("batch p99 (ms)", LATENCY_MS_P99, fmt_num),
    ("CPU ms/img", CPU_MS_PER_IMAGE, fmt_num),
    ("host mem", MEM_HOST_PEAK_RSS_MIB, fmt_mib),
    ("GPU mem", LOADER_GPU_MEM_MIB, fmt_mib),
]


def _group_table(g: Group) -> str:
    cols = [c for c in COLUMNS if any(r.number(c[1]) is not None for _, r in g["rows"])]
    body = []
    for setting, r in g["rows"]:
        label = _setting_label(setting) + (" (default)" if r is g["default"] else "") + (" ★" if r is g["best"] else "")
        body.append([label] + [fmt(r.number(key)) for _, key, fmt in cols] + [f"{_vs(r, g['best']):.0%}"])
    head = ["setting"] + [c[0] for c in cols] + ["vs best"]
    return md_table(head, body, [False] + [True] * (len(cols) + 1))


def tuning_section(runs: Sequence[Run]) -> str:
    """Markdown: a summary (best setting and the default's distance per loader), then each loader's table."""
    groups = tuning_groups(runs)
    if not groups:
        return ""
    note = ""
    if len(groups) > LONG:  # many loaders and shapes: those with the fastest best setting
        note = (f"_{len(groups):,} loader groups were tuned; the {TOP_N} with the fastest best setting are shown, "
                "every row is in `results.csv`._\n\n")  # fmt: skip
        groups = sorted(groups, key=lambda g: -g["best"].number(IMAGES_PER_S))[:TOP_N]
    multi = len(runs) > 1
    varying, constant = split_point_keys([g["rest"] for g in groups])
    keys = [k for k in varying if k not in ("loader", "loader_device", "decode_only")]
    parts = [
        "Each loader alone at each of its settings (`loader` rows; configs/sweeps/loader_tuning_cpu.yaml and "
        "loader_tuning_gpu.yaml measure them). ★ = the fastest setting; vs best = img/s ÷ the fastest's; "
        "the default is the setting a config that says nothing gets (num_threads=auto: the cores per rank). "
        "host mem counts the DataLoader's worker processes too; GPU mem is the loader's own (NVML − torch).\n\n",
        constants_line({k: v for k, v in constant.items() if k not in ("loader", "loader_device")}),
        note,
        _summary(groups, keys, multi),
        "\n",
    ]
    for g in groups:
        parts.append(f"\n#### {_group_title(g, keys, multi)}\n\n{_group_table(g)}\n")
    return "".join(parts)
