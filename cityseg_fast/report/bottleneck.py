"""The bottleneck table: loader alone vs model alone vs end to end, the measured stall, and the verdict.

Every number comes from the merged rows: each e2e row's own metrics (its measured data wait and stall
fraction, engine/stall.py) and its `derived` metrics (results.derive: the loader and model rows it names,
the limit, the efficiency, the cores the loader needs to feed the model). Nothing is matched or computed here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cityseg_fast.report.format import DASH, LONG, TOP_N, fmt_mib, fmt_num, fmt_pct, md_table, sort_rows
from cityseg_fast.report.runs import (
    Run,
    flat_point,
    loader_label,
    point_keys,
    point_label,
    row_decoder,
    split_keys,
)
from cityseg_fast.results import Row
from cityseg_fast.results.derive import (
    E2E_CORES_TO_FEED,
    E2E_EFFICIENCY,
    E2E_LIMIT_IMAGES_PER_S,
    E2E_LIMIT_KIND,
    E2E_LOADER_CPU_MS_PER_IMAGE,
    E2E_LOADER_GPU_MEM_MIB,
    E2E_LOADER_IMAGES_PER_S,
    E2E_MODEL_IMAGES_PER_S,
)
from cityseg_fast.results.scenarios import (
    DATA_WAIT_MS_P50,
    DATA_WAIT_MS_P99,
    DEVICE,
    IMAGES_PER_S,
    STALL_FRACTION,
)

STALL_BOUND = 0.10  # the train step waited for data more than this share of the time: loader-bound


def derived(row: Row, key: str) -> float | None:
    """A derived metric of a merged row (cityseg_fast.results.derive), or None."""
    v = row.derived.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def verdict(stall: float | None, on_gpu: bool, loader: float | None, model: float | None, eff: float | None) -> str:
    """What limits the point: from the measured stall when the row has one ('loader-bound: the GPU waited
    37% of the time'), else from the two stages alone; then how much the combination lost."""
    by_ratio = None if loader is None or model is None else ("loader" if loader < model else "model")
    if stall is None:
        text = by_ratio or DASH
    else:
        bound = "loader" if stall >= STALL_BOUND else "model"
        who = "the GPU" if on_gpu else "the train step"
        text = f"{bound}-bound: {who} waited {stall:.0%} of the time"
        if by_ratio is not None and by_ratio != bound:
            text += f" (alone, the {by_ratio} is the slower stage)"
    if by_ratio is not None and eff is not None and eff < 0.9:
        text += f" + overlap loss ({eff:.0%} of the limit)"
    elif by_ratio is not None and eff is not None and eff > 1.1:
        # Cannot happen with steady measurements: say so rather than present it as a result.
        text += " (⚠ e2e above its limit: the runs were too noisy to compare)"
    return text


def bottleneck_rows(run: Run) -> list[dict[str, Any]]:
    """One record per ok e2e point: its loader-alone and model-alone throughputs, the limit, the
    efficiency, its measured stall, the loader's cost, and a verdict, as the rows hold them."""
    out = []
    rows = [r for r in run.rows if r.scenario == "e2e" and r.number(IMAGES_PER_S) is not None]
    for e in sort_rows(rows, point_keys(rows)):  # by point, not by when it ran: shards merge in any order
        loader_ips, model_ips = derived(e, E2E_LOADER_IMAGES_PER_S), derived(e, E2E_MODEL_IMAGES_PER_S)
        eff, stall = derived(e, E2E_EFFICIENCY), e.number(STALL_FRACTION)
        on_gpu = e.metrics.get(DEVICE) == "cuda"
        out.append(
            {
                "row": e,
                "point": flat_point(e),
                "loader": loader_ips,
                "model": model_ips,
                "e2e": e.number(IMAGES_PER_S),
                "limit": derived(e, E2E_LIMIT_IMAGES_PER_S),
                "limit_kind": e.derived.get(E2E_LIMIT_KIND),
                "efficiency": eff,
                "wait_p50": e.number(DATA_WAIT_MS_P50),
                "wait_p99": e.number(DATA_WAIT_MS_P99),
                "stall": stall,
                "cpu_ms": derived(e, E2E_LOADER_CPU_MS_PER_IMAGE),
                "cores": derived(e, E2E_CORES_TO_FEED),
                "gpu_mem": derived(e, E2E_LOADER_GPU_MEM_MIB),
                "verdict": verdict(stall, on_gpu, loader_ips, model_ips, eff),
            }
        )
    return out


def _limit_cell(rec: dict[str, Any]) -> str:
    kind = {"min": "min", "shared_cpu": "shared"}.get(rec["limit_kind"] or "", "")
    return fmt_num(rec["limit"]) + (f" ({kind})" if kind and rec["limit"] is not None else "")


def _wait_cell(rec: dict[str, Any]) -> str:
    return f"{fmt_num(rec['wait_p50'])} / {fmt_num(rec['wait_p99'])}"


# (header, record key that must be measured somewhere for the column to show, cell); None: always shown
COLUMNS: list[tuple[str, str | None, Callable[[dict[str, Any]], str]]] = [
    ("loader only (img/s)", None, lambda r: fmt_num(r["loader"])),
    ("model only (img/s)", None, lambda r: fmt_num(r["model"])),
    ("limit (img/s)", None, _limit_cell),
    ("end to end (img/s)", None, lambda r: fmt_num(r["e2e"])),
    ("e2e efficiency", None, lambda r: fmt_pct(r["efficiency"], 0)),
    ("data wait p50 / p99 (ms)", "wait_p50", _wait_cell),
    ("stall", "stall", lambda r: fmt_pct(r["stall"], 0)),
    ("loader CPU ms/img", "cpu_ms", lambda r: fmt_num(r["cpu_ms"])),
    ("cores to feed", "cores", lambda r: fmt_num(r["cores"])),
    ("loader GPU mem", "gpu_mem", lambda r: fmt_mib(r["gpu_mem"])),
]

NOTE = (
    "\n\nlimit = the throughput end to end could reach from the loader alone and the model alone at the same "
    "point: the slower of the two when the model runs on a GPU (min: the stages overlap), 1/(1/loader + "
    "1/model) when both take turns on the same CPU cores (shared). The min assumes the loader and the model "
    "do not share the GPU: a loader that decodes or resizes on the GPU (DALI mixed, nvJPEG) takes SMs and "
    "memory bandwidth from the model, so its limit is optimistic and such a row's efficiency understates "
    "the overlap. The loader column names the decoder each row ran. e2e efficiency = end to end ÷ limit "
    "(100% = nothing lost to the combination). The bottleneck is the slower stage; 'overlap loss' marks end "
    "to end below 90% of the limit.\n"
)
STALL_NOTE = (
    "\ndata wait = how long each end-to-end step waited for its batch (on a GPU: the device's idle time between "
    "one step's end and the next one's start, from CUDA events; on the CPU: the time blocked in next() on the "
    f"loader); stall = total wait ÷ wall time. Where it is measured the verdict comes from it (≥ "
    f"{STALL_BOUND:.0%}: loader-bound). cores to feed = the loader's CPU ms per image (loader alone) × the model-"
    "only img/s ÷ 1000: the CPU cores the loader needs to keep up with the model. loader GPU mem = NVML used − "
    "torch reserved while the loader alone runs, less the same before it started.\n"
)


def _label(rec: dict[str, Any], keys: Sequence[str]) -> str:
    return f"{loader_label(rec['point'], row_decoder(rec['row']))} → {point_label(rec['point'], keys)}".strip()


def bottleneck_section(runs: Sequence[Run]) -> str:
    multi = len(runs) > 1
    labelled: list[tuple[str, str, dict[str, Any]]] = []
    for run in runs:
        recs = bottleneck_rows(run)
        if not recs:
            continue
        varying, _ = split_keys([r["row"] for r in recs])
        keys = [k for k in varying if k not in ("loader", "loader_device", "decoder")] or [
            "model", "resolution", "batch_size", "dtype"]  # fmt: skip
        labelled += [(run.name, _label(rec, keys), rec) for rec in recs]
    if not labelled:
        return ""
    summary = ""
    if len(labelled) > LONG:  # a long table: how the verdicts fall, then the fastest points
        summary = _verdict_counts([rec for _, _, rec in labelled])
        labelled = sorted(labelled, key=lambda x: -(x[2]["e2e"] or 0))[:TOP_N]
    cols = [c for c in COLUMNS if c[1] is None or any(rec[c[1]] is not None for _, _, rec in labelled)]
    body = [
        ([name] if multi else []) + [label] + [c[2](rec) for c in cols] + [rec["verdict"]]
        for name, label, rec in labelled
    ]
    head = (["run"] if multi else []) + ["end-to-end point"] + [c[0] for c in cols] + ["bottleneck"]
    right = ([False] if multi else []) + [False] + [True] * len(cols) + [False]
    stalls = any(c[1] is not None for c in cols)
    return summary + md_table(head, body, right) + NOTE + (STALL_NOTE if stalls else "")


def _verdict_counts(recs: Sequence[dict[str, Any]]) -> str:
    """'1,234 end-to-end points: 1,000 loader-bound, 234 model-bound. The 20 fastest: ...' (a long table's head)."""
    counts: dict[str, int] = {}
    for rec in recs:
        kind = rec["verdict"].split(":")[0].split(" (")[0].split(" +")[0]
        counts[kind] = counts.get(kind, 0) + 1
    parts = ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"_{len(recs):,} end-to-end points: {parts}. The {TOP_N} fastest end to end are shown; every point is "
            "in `results.csv`._\n\n")  # fmt: skip
