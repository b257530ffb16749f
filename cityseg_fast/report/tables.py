"""Markdown tables of a report: environment, per-scenario speed/memory, best configs, bottlenecks, accuracy.

Every function takes loaded runs (`runs.Run`) and returns Markdown text (or "" when it has nothing to
show). Numbers are rounded to what the measurement supports (3 significant figures), memory is in
MiB/GiB, fractions are percentages, and a failed point shows its status and error message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from cityseg_fast.report.runs import (
    Run,
    flat_point,
    loader_label,
    metric,
    peak_memory,
    point_label,
    res_pixels,
    split_keys,
    tagged_rows,
)

DASH = "–"
SCENARIO_TITLES = {
    "model": "Model only (train step on a synthetic on-device batch)",
    "infer": "Inference",
    "e2e": "End to end (real loader + the same train step)",
    "loader": "Loaders alone",
    "accuracy": "Accuracy runs",
}

# ---------------------------------------------------------------- number formatting


def fmt_num(v: float | None, sig: int = 3) -> str:
    """3 significant figures, thousands separated: 1,234 / 56.7 / 0.912."""
    if v is None:
        return DASH
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) >= 10 ** (sig - 1):
        return f"{v:,.0f}"
    digits = sig - 1 - int(f"{abs(v):e}".split("e")[1])
    return f"{v:.{max(digits, 0)}f}"


def fmt_mib(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def fmt_pct(v: float | None, digits: int = 1) -> str:
    return DASH if v is None else f"{100 * v:.{digits}f}%"


def fmt_s(v: float | None) -> str:
    if v is None:
        return DASH
    if v >= 120:
        return f"{v / 60:.1f} min"
    return f"{fmt_num(v)} s"


def miou_pct(v: float | None) -> float | None:
    """mIoU as a percentage whether the row stored a fraction (0..1) or a percentage already."""
    if v is None:
        return None
    return v if v > 1.0 else 100.0 * v


def status_cell(row: dict[str, Any], width: int = 90) -> str:
    if row["status"] == "ok":
        return "ok"
    msg = " ".join(str(row.get("error") or "").split())
    if len(msg) > width:
        msg = msg[: width - 1] + "…"
    tag = "OOM" if row["status"] == "oom" else "error"
    return f"**{tag}**: {msg}" if msg else f"**{tag}**"


def _cell(v: Any) -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def md_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> str:
    """A GitHub Markdown table; cells are escaped ('|'); `right` marks right-aligned (numeric) columns."""
    right = list(right) if right is not None else [False] * len(headers)

    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sort_value(k: str, v: Any) -> tuple:
    if k == "resolution":
        return (0, res_pixels(v), str(v))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v, "")
    return (1, 0, str(v))


def sort_rows(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    def key(r: dict[str, Any]) -> tuple:
        p = flat_point(r)
        return (r.get("_run", ""),) + tuple(_sort_value(k, p.get(k)) for k in keys)

    return sorted(rows, key=key)


def constants_line(constant: dict[str, Any]) -> str:
    if not constant:
        return ""
    items = ", ".join(f"{k}={_cell(v)}" for k, v in constant.items())
    return f"Same in every row: {items}.\n\n"


# ---------------------------------------------------------------- environment


def _env_fields(env: dict[str, Any]) -> list[tuple[str, str]]:
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


def env_section(runs: Sequence[Run]) -> str:
    """One column per distinct environment (usually one); plus when each run was measured."""
    envs: list[dict[str, Any]] = []
    owners: list[list[str]] = []
    counts: list[int] = []
    for run in runs:
        for r in run.rows:
            if r["env"] not in envs:
                envs.append(r["env"])
                owners.append([])
                counts.append(0)
            i = envs.index(r["env"])
            counts[i] += 1
            if run.name not in owners[i]:
                owners[i].append(run.name)
    out = []
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
        times = sorted(r["time"] for r in run.rows)
        span = times[0] if times[0] == times[-1] else f"{times[0]} … {times[-1]}"
        dates.append([run.name, span])
    out.append("\n\n" + md_table(["run", "measured (UTC)"], dates))
    return "\n".join(out) + "\n"


def runs_section(runs: Sequence[Run]) -> str:
    body = []
    for run in runs:
        counts = {s: sum(r["status"] == s for r in run.rows) for s in ("ok", "oom", "error")}
        scen = sorted({r["scenario"] for r in run.rows})
        notes = []
        if run.skipped:
            notes.append(run.skipped_note())
        if run.superseded:
            notes.append(f"{run.superseded} older result(s) of re-measured points ignored")
        body.append(
            [
                run.name,
                str(run.path),
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

Col = tuple[str, Callable[[dict[str, Any]], str]]


def _m(key: str, fmt: Callable[[float | None], str] = fmt_num) -> Callable[[dict[str, Any]], str]:
    return lambda r: fmt(metric(r, key))


def _spread(r: dict[str, Any]) -> str:
    iqr = metric(r, "latency_ms_iqr")
    med = metric(r, "latency_ms_median") or metric(r, "latency_ms_p50")
    if iqr is None or not med:
        return DASH
    warn = " ⚠" if r["metrics"].get("variance_warning") else ""
    return f"{100 * iqr / med:.1f}%{warn}"


SPEED_COLS: list[tuple[str, str | None, Callable[[dict[str, Any]], str]]] = [
    ("img/s", "images_per_s", _m("images_per_s")),
    ("p50 (ms)", "latency_ms_p50", _m("latency_ms_p50")),
    ("p90 (ms)", "latency_ms_p90", _m("latency_ms_p90")),
    ("p99 (ms)", "latency_ms_p99", _m("latency_ms_p99")),
    ("spread (IQR/median)", "latency_ms_iqr", _spread),
    (
        "fwd / bwd / opt (ms)",
        "fwd_ms",
        lambda r: " / ".join(fmt_num(metric(r, k)) for k in ("fwd_ms", "bwd_ms", "opt_ms")),
    ),
    ("CPU util", "cpu_util", _m("cpu_util", fmt_pct)),
    # CPU time per image: steadier than images/s on a shared machine (other load takes cores, not cycles).
    ("CPU ms/img", "cpu_ms_per_image", _m("cpu_ms_per_image")),
    ("compile", "compile_s", _m("compile_s", fmt_s)),
    ("recompiles", "recompiles", _m("recompiles", lambda v: DASH if v is None else f"{v:.0f}")),
]
MEM_COLS: list[tuple[str, str | None, Callable[[dict[str, Any]], str]]] = [
    ("torch peak alloc", "mem_torch_peak_allocated_mib", _m("mem_torch_peak_allocated_mib", fmt_mib)),
    ("torch peak reserved", "mem_torch_peak_reserved_mib", _m("mem_torch_peak_reserved_mib", fmt_mib)),
    ("GPU used (NVML)", "mem_nvml_used_mib", _m("mem_nvml_used_mib", fmt_mib)),
    ("host peak RSS", "mem_host_peak_rss_mib", _m("mem_host_peak_rss_mib", fmt_mib)),
    (
        "GFLOP/img (fwd)",
        "flops_per_image",
        _m("flops_per_image", lambda v: fmt_num(None if v is None else v / 1e9)),
    ),
    ("TFLOP/s", "achieved_tflops", _m("achieved_tflops")),
    ("MFU", "mfu", _m("mfu", fmt_pct)),
    (
        "GPU util",
        "gpu_util",
        _m("gpu_util", lambda v: DASH if v is None else fmt_pct(v if v <= 1 else v / 100)),
    ),
    ("GPU power (W)", "gpu_power_w", _m("gpu_power_w")),
]


def _present(rows: Sequence[dict[str, Any]], cols):
    return [c for c in cols if c[1] is None or any(metric(r, c[1]) is not None for r in rows)]


def _point_cells(r: dict[str, Any], keys: Sequence[str], with_run: bool) -> list[str]:
    p = flat_point(r)
    return ([r["_run"]] if with_run else []) + [_cell(p.get(k)) for k in keys]


def scenario_section(runs: Sequence[Run], scenario: str) -> str:
    """Speed table (with status) and, where measured, a memory/compute table for one scenario."""
    rows = tagged_rows(runs, scenario)
    if not rows:
        return ""
    with_run = len(runs) > 1
    varying, constant = split_keys(rows)
    if scenario == "loader":
        varying = [k for k in varying if k not in ("loader", "loader_device", "decode_only")]
        constant = {k: v for k, v in constant.items() if k not in ("loader", "loader_device", "decode_only")}
    rows = sort_rows(rows, varying)
    head = (["run"] if with_run else []) + (["loader"] if scenario == "loader" else []) + varying
    out = [constants_line(constant)]

    def lead(r: dict[str, Any]) -> list[str]:
        cells = _point_cells(r, varying, with_run)
        if scenario == "loader":
            cells.insert(1 if with_run else 0, loader_label(flat_point(r)))
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
        ok = [r for r in rows if r["status"] == "ok"]
        body = [lead(r) + [c[2](r) for c in mem] for r in ok]
        out.append("\n\nMemory and compute (ok points):\n\n")
        out.append(md_table(head + [c[0] for c in mem], body, [False] * len(head) + [True] * len(mem)))
        if "mfu" in [c[1] for c in mem] or any("mfu" in r["metrics"] for r in ok):
            out.append(
                "\n\nMFU = achieved FLOP/s ÷ the device's dense peak for the dtype; – where no honest peak is known (CPU)."
            )
    return "".join(out) + "\n"


# ---------------------------------------------------------------- best configuration per resolution


def best_section(runs: Sequence[Run]) -> str:
    body = []
    for scenario in ("model", "e2e", "infer", "loader"):
        rows = [r for r in tagged_rows(runs, scenario) if metric(r, "images_per_s") is not None]
        if scenario == "loader":
            # The synthetic loader is the I/O-free upper bound and decode-only skips work: neither is a choice.
            rows = [
                r
                for r in rows
                if r["point"].get("loader") != "synthetic" and not r["point"].get("decode_only")
            ]
        if not rows:
            continue
        varying, _ = split_keys(rows)
        label_keys = ["model"] + [k for k in varying if k not in ("resolution", "model")]
        by_res: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_res.setdefault(flat_point(r).get("resolution") or DASH, []).append(r)
        for res in sorted(by_res, key=res_pixels):
            group = by_res[res]
            best = max(group, key=lambda r: metric(r, "images_per_s"))
            worst = min(group, key=lambda r: metric(r, "images_per_s"))
            p = flat_point(best)
            rest = point_label(
                p, [k for k in label_keys if k not in ("loader", "loader_device", "decode_only")]
            )
            if scenario == "loader":
                label = f"{loader_label(p)} {rest}"
            elif scenario == "e2e" and "loader" in p:
                label = f"{loader_label(p)} → {rest or p.get('model', '')}"
            else:
                label = rest
            if len(runs) > 1:
                label = f"[{best['_run']}] {label}"
            spread = metric(best, "images_per_s") / metric(worst, "images_per_s")
            mem, _ = peak_memory(best)
            body.append(
                [
                    scenario,
                    res,
                    label.strip() or "(only configuration)",
                    fmt_num(metric(best, "images_per_s")),
                    fmt_num(metric(best, "latency_ms_p50")),
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


# ---------------------------------------------------------------- bottleneck: loader vs model vs e2e

# Point keys that must agree for a model / loader row to describe the same work as an e2e row
# (the sweep's MODEL_MATCH / LOADER_MATCH; keys a row does not define are not compared).
_MODEL_KEYS = (
    "model",
    "base_width",
    "upsample",
    "aux_loss",
    "resolution",
    "batch_size",
    "dtype",
    "channels_last",
    "compile",
    "world_size",
)
_LOADER_KEYS = (
    "loader",
    "loader_device",
    "resolution",
    "batch_size",
    "image_format",
    "quality",
    "label_format",
    "resampler",
    "num_threads",
    "hw_decoder_load",
    "prefetch_queue_depth",
    "num_workers",
)


def e2e_limit(loader_ips: float, model_ips: float, model_on_gpu: bool) -> tuple[float, str]:
    """The throughput end to end can reach: the slower stage when the model runs on a GPU (the stages
    overlap); 1/(1/l + 1/m) when loader and model take turns on the same CPU cores."""
    if model_on_gpu:
        return min(loader_ips, model_ips), "min"
    return 1.0 / (1.0 / loader_ips + 1.0 / model_ips), "shared_cpu"


def _match(
    point: dict[str, Any], candidates: list[dict[str, Any]], keys: Sequence[str]
) -> dict[str, Any] | None:
    """The fastest ok candidate agreeing with `point` on every key both define."""
    best = None
    for c in candidates:
        cp = flat_point(c)
        if cp.get("decode_only"):
            continue
        if all(cp[k] == point[k] for k in keys if k in cp and k in point):
            if best is None or metric(c, "images_per_s") > metric(best, "images_per_s"):
                best = c
    return best


def bottleneck_rows(run: Run) -> list[dict[str, Any]]:
    """One record per ok e2e point: loader-only and model-only throughputs, the limit, efficiency, verdict.

    e2e_efficiency is the row's own (the sweep derives it) or, where absent, computed the same way:
    e2e images/s ÷ e2e_limit(loader, model).
    """
    ok = [r for r in run.rows if metric(r, "images_per_s") is not None]
    loaders = [r for r in ok if r["scenario"] == "loader"]
    models = [r for r in ok if r["scenario"] == "model"]
    out = []
    for e in (r for r in ok if r["scenario"] == "e2e"):
        p = flat_point(e)
        lrow, mrow = _match(p, loaders, _LOADER_KEYS), _match(p, models, _MODEL_KEYS)
        e2e = metric(e, "images_per_s")
        loader_ips = metric(lrow, "images_per_s") if lrow else None
        model_ips = metric(mrow, "images_per_s") if mrow else None
        limit, kind = metric(e, "e2e_limit_images_per_s"), e["metrics"].get("e2e_limit_kind")
        if limit is None and loader_ips and model_ips:
            limit, kind = e2e_limit(loader_ips, model_ips, e["metrics"].get("device") == "cuda")
        eff, computed = metric(e, "e2e_efficiency"), False
        if eff is None and limit:
            eff, computed = e2e / limit, True
        verdict = DASH
        if loader_ips is not None and model_ips is not None:
            verdict = "loader" if loader_ips < model_ips else "model"
            if eff is not None and eff < 0.9:
                verdict += f" + overlap loss ({eff:.0%} of the limit)"
            elif eff is not None and eff > 1.1:
                # Cannot happen with steady measurements: say so rather than present it as a result.
                verdict += " (⚠ e2e above its limit: the runs were too noisy to compare)"
        out.append(
            {
                "row": e,
                "point": p,
                "loader": loader_ips,
                "model": model_ips,
                "e2e": e2e,
                "limit": limit,
                "limit_kind": kind,
                "efficiency": eff,
                "computed": computed,
                "verdict": verdict,
            }
        )
    return out


def bottleneck_section(runs: Sequence[Run]) -> str:
    body = []
    multi = len(runs) > 1
    for run in runs:
        recs = bottleneck_rows(run)
        if not recs:
            continue
        varying, _ = split_keys([r["row"] for r in recs])
        keys = [k for k in varying if k not in ("loader", "loader_device")] or [
            "model",
            "resolution",
            "batch_size",
            "dtype",
        ]
        for rec in recs:
            label = f"{loader_label(rec['point'])} → {point_label(rec['point'], keys)}".strip()
            kind = {"min": "min", "shared_cpu": "shared"}.get(rec["limit_kind"] or "", "")
            body.append(
                ([run.name] if multi else [])
                + [
                    label,
                    fmt_num(rec["loader"]),
                    fmt_num(rec["model"]),
                    fmt_num(rec["limit"]) + (f" ({kind})" if kind and rec["limit"] is not None else ""),
                    fmt_num(rec["e2e"]),
                    fmt_pct(rec["efficiency"], 0) + (" *" if rec["computed"] else ""),
                    rec["verdict"],
                ]
            )
    if not body:
        return ""
    head = (["run"] if multi else []) + [
        "end-to-end point",
        "loader only (img/s)",
        "model only (img/s)",
        "limit (img/s)",
        "end to end (img/s)",
        "e2e efficiency",
        "bottleneck",
    ]
    right = ([False] if multi else []) + [False, True, True, True, True, True, False]
    note = (
        "\n\nlimit = the throughput end to end could reach from the loader alone and the model alone at the same "
        "point: the slower of the two when the model runs on a GPU (min: the stages overlap), 1/(1/loader + "
        "1/model) when both take turns on the same CPU cores (shared). e2e efficiency = end to end ÷ limit "
        "(100% = nothing lost to the combination; * = computed here, the row did not record it). The bottleneck "
        "is the slower stage; 'overlap loss' marks end to end below 90% of the limit.\n"
    )
    return md_table(head, body, right) + note


# ---------------------------------------------------------------- accuracy


def accuracy_section(runs: Sequence[Run]) -> str:
    rows = tagged_rows(runs, "accuracy")
    if not rows:
        return ""
    with_run = len(runs) > 1
    varying, constant = split_keys(rows)
    rows = sort_rows(rows, varying)
    cols = [
        ("mIoU", lambda r: DASH if metric(r, "miou") is None else f"{miou_pct(metric(r, 'miou')):.1f}%"),
        ("pixel acc", lambda r: DASH if metric(r, "acc") is None else f"{miou_pct(metric(r, 'acc')):.1f}%"),
        ("train img/s", _m("images_per_s")),
        ("train wall", _m("train_wall_s", fmt_s)),
    ]
    cols = [c for c in cols if c[0] == "mIoU" or any(c[1](r) != DASH for r in rows)]
    head = (["run"] if with_run else []) + varying + [c[0] for c in cols] + ["status"]
    body = [_point_cells(r, varying, with_run) + [c[1](r) for c in cols] + [status_cell(r)] for r in rows]
    out = [
        constants_line(constant),
        md_table(head, body, [False] * (len(head) - len(cols) - 1) + [True] * len(cols) + [False]),
    ]
    with_classes = [
        r for r in rows if r["status"] == "ok" and isinstance(r["metrics"].get("per_class_iou"), list)
    ]
    if with_classes:
        out.append("\n\nPer-class IoU (%; – = the class is in neither the predictions nor the labels):\n\n")
        out.append(per_class_table(with_classes, varying, with_run))
    return "".join(out) + "\n"


def per_class_table(rows: Sequence[dict[str, Any]], keys: Sequence[str], with_run: bool) -> str:
    from cityseg_fast.data.labels import CLASS_NAMES

    labels = []
    for r in rows:
        label = point_label(flat_point(r), keys) or "run"
        labels.append(f"{r['_run']}: {label}" if with_run else label)
    n = max(len(r["metrics"]["per_class_iou"]) for r in rows)
    names = list(CLASS_NAMES) if n == len(CLASS_NAMES) else [f"class {i}" for i in range(n)]
    body = []
    for i, name in enumerate(names):
        cells = []
        for r in rows:
            ious = r["metrics"]["per_class_iou"]
            v = ious[i] if i < len(ious) else None
            cells.append(DASH if v is None or v != v else f"{miou_pct(v) if v > 1 else 100 * v:.1f}")
        body.append([name] + cells)
    return md_table(["class"] + labels, body, [False] + [True] * len(rows))


# ---------------------------------------------------------------- CSV


def flat_records(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, records) for results.csv: run, scenario, status, error, point keys, metric keys."""
    base = ["run", "scenario", "status", "error", "point_id", "time", "config_hash"]
    pkeys: list[str] = []
    mkeys: list[str] = []
    records = []
    for row in tagged_rows(runs):
        p = {k: v for k, v in row["point"].items()}
        rec = {"run": row["_run"], **{k: row.get(k) for k in base[1:]}}
        for k, v in p.items():
            if k not in pkeys:
                pkeys.append(k)
            rec[k] = v
        for k, v in row["metrics"].items():
            col = k if k not in p and k not in base else f"metric.{k}"
            if col not in mkeys:
                mkeys.append(col)
            rec[col] = v
        records.append(rec)
    for rec in records:
        for k, v in rec.items():
            if isinstance(v, (list, dict)):
                rec[k] = json.dumps(v)
    return base + pkeys + mkeys, records
