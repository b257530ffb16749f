"""Markdown tables of a report: environment, per-scenario speed/memory, best configs, bottlenecks, accuracy.

Every function takes loaded runs (`runs.Run`) and returns Markdown text (or "" when it has nothing to
show). Numbers are rounded to what the measurement supports (3 significant figures), memory is in
MiB/GiB, fractions are percentages, and a failed point shows its status and error message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cityseg_fast.labels import CLASS_NAMES
from cityseg_fast.report.format import (
    DASH,
    TOP_N,
    _cell,
    best_rows,
    constants_line,
    fmt_mib,
    fmt_num,
    fmt_pct,
    fmt_s,
    md_table,
    miou_pct,
    sort_rows,
    status_cell,
)
from cityseg_fast.report.runs import (
    Run,
    RunRow,
    flat_point,
    loader_label,
    peak_memory,
    point_label,
    res_pixels,
    row_decoder,
    split_keys,
    tagged_rows,
)
from cityseg_fast.results import SCENARIOS, Row
from cityseg_fast.results.rounds import IMAGES_PER_S_ROUNDS, ROUNDS
from cityseg_fast.results.scenarios import (
    ACC,
    ACHIEVED_TFLOPS,
    BWD_MS,
    COMPILE_S,
    CPU_MS_BY_STAGE,
    CPU_MS_PER_IMAGE,
    CPU_MS_PER_IMAGE_DECODE,
    CPU_UTIL,
    FLOPS_PER_IMAGE,
    FWD_MS,
    GPU_POWER_W,
    GPU_UTIL,
    IMAGES_PER_S,
    LATENCY_MS_IQR,
    LATENCY_MS_MEDIAN,
    LATENCY_MS_P50,
    LATENCY_MS_P90,
    LATENCY_MS_P99,
    MEM_HOST_PEAK_RSS_MIB,
    MEM_NVML_USED_MIB,
    MEM_TORCH_PEAK_ALLOCATED_MIB,
    MEM_TORCH_PEAK_RESERVED_MIB,
    MFU,
    MIOU,
    OPT_MS,
    PER_CLASS_IOU,
    RECOMPILES,
    TRAIN_WALL_S,
    VARIANCE_WARNING,
)

# ---------------------------------------------------------------- environment


def _env_fields(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    def g(k: str) -> str:
        v = env.get(k)
        return DASH if v in (None, "") else str(v)

    gpu = DASH
    if env.get("gpu"):
        gpu = f"{env['gpu']}" + (f" ×{env['gpu_count']}" if (env.get("gpu_count") or 1) > 1 else "")
    elif "gpu" in env:
        gpu = "none"
    return [
        ("host", g("host")),
        ("platform", g("platform")),
        ("CPU", f"{g('cpu')} ({g('cpu_cores')} cores usable)"),
        ("GPU", gpu),
        ("driver", g("driver")),
        ("CUDA (torch build) / cuDNN", f"{g('cuda_runtime')} / {g('cudnn')}"),
        ("Python", g("python")),
        ("torch / torchvision", f"{g('torch')} / {g('torchvision')}"),
        ("DALI", g("dali")),
        ("cityseg_fast / git commit", f"{g('cityseg_fast')} / {g('git_commit')}"),
    ]


MAX_ENVS = 4  # environment columns


def env_section(runs: Sequence[Run]) -> str:
    """One column per distinct environment (usually one); plus when each run was measured."""
    envs: list[Mapping[str, Any]] = []
    owners: list[list[str]] = []
    counts: list[int] = []
    index: dict[str, int] = {}  # an environment's text -> its column: one look-up per row, however many there are
    for run in runs:
        for r in run.rows:
            key = repr(sorted(r.env.items()))
            if key not in index:
                index[key] = len(envs)
                envs.append(r.env)
                owners.append([])
                counts.append(0)
            i = index[key]
            counts[i] += 1
            if run.name not in owners[i]:
                owners[i].append(run.name)
    out = []
    if len(envs) > MAX_ENVS:  # keep the environments most rows were measured in
        keep = sorted(range(len(envs)), key=lambda i: -counts[i])[:MAX_ENVS]
        dropped = sum(counts) - sum(counts[i] for i in keep)
        envs, owners, counts = [envs[i] for i in keep], [owners[i] for i in keep], [counts[i] for i in keep]
        out.append(f"_The {MAX_ENVS} environments most rows were measured in; {dropped:,} rows ran in others "
                   "(each row's is in its `env`)._\n\n")  # fmt: skip
    if len(envs) == 1:
        out.append(md_table(["", "value"], _env_fields(envs[0])))
    else:
        cols = [_env_fields(e) for e in envs]
        # A run can span several environments (e.g. a commit made mid-run): say how many rows each covers.
        headers = [""] + [f"{', '.join(o)} ({n} rows)" for o, n in zip(owners, counts, strict=True)]
        body = [[cols[0][i][0]] + [c[i][1] for c in cols] for i in range(len(cols[0]))]
        out.append(md_table(headers, body))
    dates = []
    for run in runs:
        times = sorted(r.time for r in run.rows)
        span = times[0] if times[0] == times[-1] else f"{times[0]} … {times[-1]}"
        dates.append([run.name, span])
    out.append("\n\n" + md_table(["run", "measured (UTC)"], dates))
    return "\n".join(out) + "\n"


def failures_section(runs: Sequence[Run]) -> str:
    """Failed points grouped by scenario, status and message, most frequent first (TOP_N groups; every one is
    in results.csv); '' when every point is ok."""
    groups: dict[tuple[str, str, str, str], list[RunRow]] = {}
    for r in tagged_rows(runs):
        if not r.ok:
            groups.setdefault((r.run, r.scenario, r.status, " ".join(str(r.error or "").split())), []).append(r)
    if not groups:
        return ""
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    with_run = len(runs) > 1
    keys = {s: split_keys(tagged_rows(runs, s))[0] for s in {k[1] for k in groups}}  # what tells its points apart
    body = []
    for (run, scenario, _, _), rows in ordered[:TOP_N]:
        if len(rows) == 1:
            which = point_label(flat_point(rows[0]), keys[scenario]) or scenario
        else:
            varying, _ = split_keys(rows)
            which = f"{len(rows)} points" + (f" (varying: {', '.join(varying)})" if varying else "")
        body.append(([run] if with_run else []) + [scenario, len(rows), which, status_cell(rows[0])])
    head = (["run"] if with_run else []) + ["scenario", "points", "which", "status"]
    more = len(ordered) - TOP_N
    tail = f"\n\n_{more} more kinds of failure: results.csv (columns status, error) holds every one._" if more > 0 else ""
    total = sum(len(g) for g in groups.values())
    return (f"{total:,} point(s) failed, by message:\n\n"
            + md_table(head, body, [False] * (len(head) - 3) + [True, False, False]) + tail + "\n")  # fmt: skip


def runs_section(runs: Sequence[Run]) -> str:
    body = []
    for run in runs:
        counts = {s: sum(r.status == s for r in run.rows) for s in ("ok", "oom", "error")}
        scen = sorted({r.scenario for r in run.rows})
        notes = run.notes()
        body.append(
            [
                run.name,
                ", ".join(str(src.path) for src in run.sources) or str(run.path),
                len(run.rows),
                counts["ok"],
                counts["oom"],
                counts["error"],
                ", ".join(scen),
                "; ".join(notes) or DASH,
            ]
        )
    return (
        md_table(
            ["run", "results", "points", "ok", "oom", "error", "scenarios", "notes"],
            body,
            [False, False, True, True, True, True, False, False],
        )
        + "\n"
    )


# ---------------------------------------------------------------- per-scenario tables

def _m(key: str, fmt: Callable[[float | None], str] = fmt_num) -> Callable[[Row], str]:
    return lambda r: fmt(r.number(key))


def _spread(r: Row) -> str:
    iqr = r.number(LATENCY_MS_IQR)
    med = r.number(LATENCY_MS_MEDIAN) or r.number(LATENCY_MS_P50)
    if iqr is None or not med:
        return DASH
    warn = " ⚠" if r.metrics.get(VARIANCE_WARNING) else ""
    return f"{100 * iqr / med:.1f}%{warn}"


def _rounds(r: Row) -> str:
    """'3: 126–133': a repeated point's ok rounds and the range of their images/s (img/s is their median)."""
    n = r.number(ROUNDS)
    ips = [v for v in r.metrics.get(IMAGES_PER_S_ROUNDS) or [] if isinstance(v, (int, float))]
    if n is None:
        return DASH
    return f"{n:.0f}: {fmt_num(min(ips))}–{fmt_num(max(ips))}" if len(ips) > 1 else f"{n:.0f}"


SPEED_COLS: list[tuple[str, str | None, Callable[[Row], str]]] = [
    ("img/s", IMAGES_PER_S, _m(IMAGES_PER_S)),
    ("rounds: img/s range", ROUNDS, _rounds),  # a repeated point (sweep `repeats`): img/s is the median
    ("p50 (ms)", LATENCY_MS_P50, _m(LATENCY_MS_P50)),
    ("p90 (ms)", LATENCY_MS_P90, _m(LATENCY_MS_P90)),
    ("p99 (ms)", LATENCY_MS_P99, _m(LATENCY_MS_P99)),
    ("spread (IQR/median)", LATENCY_MS_IQR, _spread),
    (
        "fwd / bwd / opt (ms)",
        FWD_MS,
        lambda r: " / ".join(fmt_num(r.number(k)) for k in (FWD_MS, BWD_MS, OPT_MS)),
    ),
    ("CPU util", CPU_UTIL, _m(CPU_UTIL, fmt_pct)),
    # CPU time per image: steadier than images/s on a shared machine (other load takes cores, not cycles).
    ("CPU ms/img", CPU_MS_PER_IMAGE, _m(CPU_MS_PER_IMAGE)),
    (  # where the loader times its stages (the torch loaders): the same CPU time, by stage
        "decode / transform / hand-off (CPU ms/img)",
        CPU_MS_PER_IMAGE_DECODE,
        lambda r: " / ".join(fmt_num(r.number(k)) for k in CPU_MS_BY_STAGE),
    ),
    ("compile", COMPILE_S, _m(COMPILE_S, fmt_s)),
    ("recompiles", RECOMPILES, _m(RECOMPILES, lambda v: DASH if v is None else f"{v:.0f}")),
]
MEM_COLS: list[tuple[str, str | None, Callable[[Row], str]]] = [
    ("torch peak alloc", MEM_TORCH_PEAK_ALLOCATED_MIB, _m(MEM_TORCH_PEAK_ALLOCATED_MIB, fmt_mib)),
    ("torch peak reserved", MEM_TORCH_PEAK_RESERVED_MIB, _m(MEM_TORCH_PEAK_RESERVED_MIB, fmt_mib)),
    ("GPU used (NVML)", MEM_NVML_USED_MIB, _m(MEM_NVML_USED_MIB, fmt_mib)),
    ("host peak RSS", MEM_HOST_PEAK_RSS_MIB, _m(MEM_HOST_PEAK_RSS_MIB, fmt_mib)),
    (
        "GFLOP/img (fwd)",
        FLOPS_PER_IMAGE,
        _m(FLOPS_PER_IMAGE, lambda v: fmt_num(None if v is None else v / 1e9)),
    ),
    ("TFLOP/s", ACHIEVED_TFLOPS, _m(ACHIEVED_TFLOPS)),
    ("MFU", MFU, _m(MFU, fmt_pct)),
    (
        "GPU util",
        GPU_UTIL,
        _m(GPU_UTIL, lambda v: DASH if v is None else fmt_pct(v if v <= 1 else v / 100)),
    ),
    ("GPU power (W)", GPU_POWER_W, _m(GPU_POWER_W)),
]


def _present(rows: Sequence[Row], cols):
    return [c for c in cols if c[1] is None or any(r.number(c[1]) is not None for r in rows)]


def _point_cells(r: RunRow, keys: Sequence[str], with_run: bool) -> list[str]:
    p = flat_point(r)
    return ([r.run] if with_run else []) + [_cell(p.get(k)) for k in keys]


def scenario_section(runs: Sequence[Run], scenario: str) -> str:
    """Speed table (with status) and, where measured, a memory/compute table for one scenario."""
    rows = tagged_rows(runs, scenario)
    if not rows:
        return ""
    with_run = len(runs) > 1
    varying, constant = split_keys(rows)
    if scenario == "loader":  # the loader column names these (and the decoder each row ran)
        varying = [k for k in varying if k not in ("loader", "loader_device", "decode_only", "decoder")]
        constant = {k: v for k, v in constant.items() if k not in ("loader", "loader_device", "decode_only", "decoder")}
    shown, note = best_rows(rows)  # a long table: the fastest points, best first, the rest in results.csv
    if not note:  # by point, not by when it ran (shards merge in any order); a loader table's loader columns last
        shown = sort_rows(rows, varying + (["loader", "loader_device", "decode_only"] if scenario == "loader" else []))
    rows = shown
    head = (["run"] if with_run else []) + (["loader"] if scenario == "loader" else []) + varying
    out = [constants_line(constant), note]

    def lead(r: RunRow) -> list[str]:
        cells = _point_cells(r, varying, with_run)
        if scenario == "loader":
            cells.insert(1 if with_run else 0, loader_label(flat_point(r), row_decoder(r)))
        return cells

    speed = _present(rows, SPEED_COLS)
    body = [lead(r) + [c[2](r) for c in speed] + [status_cell(r)] for r in rows]
    out.append(
        md_table(
            head + [c[0] for c in speed] + ["status"],
            body,
            [False] * len(head) + [True] * len(speed) + [False],
        )
    )
    mem = _present(rows, MEM_COLS)
    if mem:
        ok = [r for r in rows if r.ok]
        body = [lead(r) + [c[2](r) for c in mem] for r in ok]
        out.append("\n\nMemory and compute (ok points):\n\n")
        out.append(md_table(head + [c[0] for c in mem], body, [False] * len(head) + [True] * len(mem)))
        if MFU in [c[1] for c in mem] or any(MFU in r.metrics for r in ok):
            out.append(
                "\n\nMFU = achieved FLOP/s ÷ the device's dense peak for the dtype; – where no honest peak is known (CPU)."
            )
    return "".join(out) + "\n"


# ---------------------------------------------------------------- best configuration per resolution


def best_section(runs: Sequence[Run]) -> str:
    body = []
    for scenario in ("model", "e2e", "infer", "loader"):
        rows = [r for r in tagged_rows(runs, scenario) if r.number(IMAGES_PER_S) is not None]
        if scenario == "loader":
            # The synthetic loader is the I/O-free upper bound and decode-only skips work: neither is a choice.
            rows = [
                r
                for r in rows
                if r.point.get("loader") != "synthetic" and not r.point.get("decode_only")
            ]
        if not rows:
            continue
        varying, _ = split_keys(rows)
        label_keys = ["model"] + [k for k in varying if k not in ("resolution", "model")]
        by_res: dict[str, list[RunRow]] = {}
        for r in rows:
            by_res.setdefault(flat_point(r).get("resolution") or DASH, []).append(r)
        for res in sorted(by_res, key=res_pixels):
            group = by_res[res]
            best = max(group, key=lambda r: r.number(IMAGES_PER_S))
            worst = min(group, key=lambda r: r.number(IMAGES_PER_S))
            p = flat_point(best)
            rest = point_label(
                p, [k for k in label_keys if k not in ("loader", "loader_device", "decode_only")]
            )
            if scenario == "loader":
                label = f"{loader_label(p, row_decoder(best))} {rest}"
            elif scenario == "e2e" and "loader" in p:
                label = f"{loader_label(p, row_decoder(best))} → {rest or p.get('model', '')}"
            else:
                label = rest
            if len(runs) > 1:
                label = f"[{best.run}] {label}"
            spread = best.number(IMAGES_PER_S) / worst.number(IMAGES_PER_S)
            mem, _ = peak_memory(best)
            body.append(
                [
                    scenario,
                    res,
                    label.strip() or "(only configuration)",
                    fmt_num(best.number(IMAGES_PER_S)),
                    fmt_num(best.number(LATENCY_MS_P50)),
                    fmt_mib(mem),
                    f"{fmt_num(spread)}× ({len(group)} ok)" if len(group) > 1 else "only one ok",
                ]
            )
    if not body:
        return ""
    return (
        md_table(
            [
                "scenario",
                "resolution",
                "best configuration",
                "img/s",
                "p50 (ms)",
                "peak mem",
                "best ÷ slowest",
            ],
            body,
            [False, False, False, True, True, True, True],
        )
        + "\n"
    )


# ---------------------------------------------------------------- accuracy


def accuracy_section(runs: Sequence[Run]) -> str:
    """mIoU, pixel accuracy, train img/s of every accuracy-kind row (training runs and the colour
    baseline side by side), then per-class IoU."""

    rows = [r for name, s in SCENARIOS.items() if s.kind == "accuracy" for r in tagged_rows(runs, name)]
    if not rows:
        return ""
    with_run = len(runs) > 1
    varying, constant = split_keys(rows)
    rows, note = best_rows(rows, MIOU, "mIoU")
    rows = rows if note else sort_rows(rows, varying)
    cols = [
        ("mIoU", lambda r: DASH if r.number(MIOU) is None else f"{miou_pct(r.number(MIOU)):.1f}%"),
        ("pixel acc", lambda r: DASH if r.number(ACC) is None else f"{miou_pct(r.number(ACC)):.1f}%"),
        ("train img/s", _m(IMAGES_PER_S)),
        ("train wall", _m(TRAIN_WALL_S, fmt_s)),
    ]
    cols = [c for c in cols if c[0] == "mIoU" or any(c[1](r) != DASH for r in rows)]
    head = (["run"] if with_run else []) + varying + [c[0] for c in cols] + ["status"]
    body = [_point_cells(r, varying, with_run) + [c[1](r) for c in cols] + [status_cell(r)] for r in rows]
    out = [
        constants_line(constant),
        note,
        md_table(head, body, [False] * (len(head) - len(cols) - 1) + [True] * len(cols) + [False]),
    ]
    with_classes = [
        r for r in rows if r.ok and isinstance(r.metrics.get(PER_CLASS_IOU), list)
    ]
    if with_classes:
        out.append("\n\nPer-class IoU (%; – = the class is in neither the predictions nor the labels):\n\n")
        out.append(per_class_table(with_classes, varying, with_run))
    return "".join(out) + "\n"


HEADER_MODEL_CHARS = 20  # a per-class column header: its letter and at most this much of the model name


def column_labels(
    rows: Sequence[RunRow], keys: Sequence[str], with_run: bool
) -> list[tuple[str, str]]:
    """(short header, full label) per row: 'A unet_s16' for a column whose full configuration (the `keys`
    that vary, and the run) goes in the legend under the table."""
    out = []
    for i, r in enumerate(rows):
        p = flat_point(r)
        full = point_label(p, keys) or "run"
        full = f"{r.run}: {full}" if with_run else full
        model = str(p.get("model") or "")
        model = model if len(model) <= HEADER_MODEL_CHARS else model[: HEADER_MODEL_CHARS - 1] + "…"
        out.append((f"{_letters(i)} {model}".strip(), full))
    return out


def _letters(i: int) -> str:
    """A, B, ..., Z, AA, AB, ...: the i-th column's name."""
    return ("" if i < 26 else _letters(i // 26 - 1)) + chr(ord("A") + i % 26)


def per_class_table(rows: Sequence[RunRow], keys: Sequence[str], with_run: bool) -> str:
    """IoU per class (rows) and configuration (columns headed by a letter and the model), then the legend
    that names each column's whole configuration."""
    labels = column_labels(rows, keys, with_run)
    n = max(len(r.metrics[PER_CLASS_IOU]) for r in rows)
    names = list(CLASS_NAMES) if n == len(CLASS_NAMES) else [f"class {i}" for i in range(n)]
    body = []
    for i, name in enumerate(names):
        cells = []
        for r in rows:
            ious = r.metrics[PER_CLASS_IOU]
            v = ious[i] if i < len(ious) else None
            cells.append(DASH if v is None or v != v else f"{miou_pct(v):.1f}")
        body.append([name] + cells)
    legend = "".join(f"\n- **{head.split()[0]}**: {full}" for head, full in labels)
    table = md_table(["class"] + [head for head, _ in labels], body, [False] + [True] * len(rows))
    return f"{table}\n\nColumns:\n{legend}"
