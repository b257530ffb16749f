"""SESSION.md for benchmarks/gpu_session.py: the steps as they ran, the session's goals as measured, the
DALI decoder tuning grid. Read from OUT/results.jsonl and OUT/session.json only (goals are measured,
never asserted: a missing number says "not measured yet")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cityseg_fast.results import Row

DASH = "—"


def _rows(out: Path) -> list[Row]:
    from cityseg_fast.results import merge, read_rows

    return [r for r in merge(read_rows(out / "results.jsonl")) if r.ok]


def _ips(r: Row | None) -> float | None:
    return None if r is None else r.metrics.get("images_per_s")


def _best(rows: list[Row], **want: Any) -> Row | None:
    """The fastest row whose point has every key of `want` (None: the key must be absent)."""
    hits = [
        r for r in rows
        if all(r.point.get(k) == v for k, v in want.items())
        and _ips(r) is not None
    ]  # fmt: skip
    return max(hits, key=_ips) if hits else None


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return DASH if v is None else format(v, spec)


def _setting(r: Row | None, keys: tuple[str, ...]) -> str:
    if r is None:
        return ""
    return ", ".join(f"{k}={r.point[k]}" for k in keys if k in r.point)


def _loader_rows(rows: list[Row], **want: Any) -> tuple[Row | None, Row | None]:
    """(train row, decode-only row) of the fastest setting of one loader at the headline crop."""
    loader = [r for r in rows if r.scenario == "loader"]
    res = [512, 1024]
    return _best(loader, resolution=res, decode_only=None, **want), _best(loader, resolution=res, decode_only=True, **want)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def goals(rows: list[Row]) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, verdict) for the goals of issue 21 (measured, never asserted)."""
    res = [512, 1024]
    dali, dali_dec = _loader_rows(rows, loader="dali", loader_device="gpu")
    nvj, nvj_dec = _loader_rows(rows, loader="torch", loader_device="gpu")
    e2e = [r for r in rows if r.scenario == "e2e"]
    e_dali = _best(e2e, loader="dali", loader_device="gpu", resolution=res)
    e_torch = _best(e2e, loader="torch", loader_device=None, resolution=res)
    model = [r for r in rows if r.scenario == "model"]
    head = _best(model, model="fcn_resnet50", dtype="bf16", channels_last=True, compile="default", resolution=res)
    knobs = ("batch_size", "hw_decoder_load", "num_threads")
    out = [("DALI GPU train loader, 1024x2048 JPEG -> 512x1024 crops", "> 1500 img/s (aim 2500)",
            f"{_fmt(_ips(dali))} img/s ({_setting(dali, knobs)})" if dali else DASH,
            _verdict(_ips(dali), lambda v: v > 1500))]  # fmt: skip
    own = _ratio(_ips(dali), _ips(dali_dec))
    out.append(("DALI GPU train vs its own decode-only", ">= 0.85",
                f"{_fmt(own, '.2f')} ({_fmt(_ips(dali))} vs {_fmt(_ips(dali_dec))} img/s)" if own else DASH,
                _verdict(own, lambda v: v >= 0.85)))  # fmt: skip
    for what, a, b in (("train", dali, nvj), ("decode-only", dali_dec, nvj_dec)):
        r = _ratio(_ips(a), _ips(b))
        out.append((f"DALI GPU vs torch nvJPEG (torchvision.io on the GPU), {what}", "measured, side by side",
                    f"{_fmt(r, '.2f')}x ({_fmt(_ips(a))} vs {_fmt(_ips(b))} img/s)" if r else DASH,
                    "measured" if r else "not measured yet"))  # fmt: skip
    eff = e_dali.derived.get("e2e_efficiency") if e_dali else None
    out.append(("e2e with DALI on the GPU vs min(loader, model) (they share the GPU: see REPORT.md)", ">= 95 %",
                f"{_fmt(None if eff is None else 100 * eff)} % ({_fmt(_ips(e_dali))} img/s)" if e_dali else DASH,
                _verdict(eff, lambda v: v >= 0.95)))  # fmt: skip
    ratio = _ratio(_ips(e_dali), _ips(e_torch))
    out.append(("DALI GPU e2e vs torch DataLoader e2e, same cores", "measured (was >= 4x)",
                f"{_fmt(ratio, '.2f')}x ({_fmt(_ips(e_dali))} vs {_fmt(_ips(e_torch))} img/s)" if ratio else DASH,
                _verdict(ratio, lambda v: v >= 4)))  # fmt: skip
    mfu = head.metrics.get("mfu") if head else None
    out.append(("FCN-R50 bf16 compiled channels_last train step MFU", "measured (aim 40 %)",
                f"{_fmt(None if mfu is None else 100 * mfu, '.1f')} % ({_fmt(_ips(head))} img/s)" if head else DASH,
                _verdict(mfu, lambda v: v >= 0.40)))  # fmt: skip
    return out


def loaders_table(rows: list[Row]) -> str:
    """The headline loaders side by side: train and decode-only img/s, and the CPU ms per image by stage
    where the loader times its stages (the torch loaders)."""
    from cityseg_fast.report.runs import loader_label, row_decoder
    from cityseg_fast.results.scenarios import CPU_MS_BY_STAGE

    lines = []
    for want in ({"loader": "dali", "loader_device": "gpu"}, {"loader": "torch", "loader_device": "gpu"},
                 {"loader": "torch", "loader_device": None}, {"loader": "dali", "loader_device": "cpu"}):  # fmt: skip
        train, dec = _loader_rows(rows, **want)
        if train is None and dec is None:
            continue
        r = train or dec
        m = r.metrics
        split = " / ".join(_fmt(m.get(k), ".1f") for k in CPU_MS_BY_STAGE)
        lines.append(f"| {loader_label(r.point, row_decoder(r))} | {_fmt(_ips(train))} | {_fmt(_ips(dec))} | "
                     f"{_fmt(_ratio(_ips(train), _ips(dec)), '.2f')} | {_fmt(m.get('cpu_ms_per_image'), '.1f')} | {split} |")  # fmt: skip
    if not lines:
        return ""
    head = ("| loader [decoder] | train img/s | decode-only img/s | train ÷ decode-only | CPU ms/img (train) | "
            "decode / transform / hand-off ms/img |\n|---|---|---|---|---|---|\n")  # fmt: skip
    return head + "\n".join(lines) + "\n"


def _verdict(v: float | None, ok) -> str:
    if v is None:
        return "not measured yet"
    return "met" if ok(v) else "**not met**"


def tuning_table(rows: list[Row], batch: int, decode_only: bool) -> str:
    """img/s over hw_decoder_load (rows) x num_threads (columns); the best cell in bold."""
    cells: dict[tuple[float, int], float] = {}
    for r in rows:
        p = r.point
        if (r.scenario, p.get("loader"), p.get("loader_device")) != ("loader", "dali", "gpu"):
            continue
        if p.get("batch_size") != batch or bool(p.get("decode_only")) != decode_only or "roi" in p:
            continue
        if p.get("label_format", "png") != "npy" and not decode_only:
            continue  # the grid runs on npy labels; the PNG-label point is in its own table
        cells[(p.get("hw_decoder_load", 0.65), p.get("num_threads", 0))] = _ips(r)
    if not cells:
        return ""
    best = max(cells.values())
    hws, threads = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
    head = "| hw_decoder_load | " + " | ".join(f"{t} threads" for t in threads) + " |\n"
    head += "|---|" + "---|" * len(threads) + "\n"
    body = ""
    for hw in hws:
        vals = [cells.get((hw, t)) for t in threads]
        body += f"| {hw} | " + " | ".join(
            DASH if v is None else (f"**{v:.0f}**" if v == best else f"{v:.0f}") for v in vals
        ) + " |\n"
    return head + body


def write_summary(out: Path, record: Any, steps: list, budgets: dict[str, float]) -> Path:
    rows = _rows(out)
    doctor = {}
    if (out / "doctor.json").is_file():
        doctor = json.loads((out / "doctor.json").read_text())
    gpus = doctor.get("gpus") or [{}]
    lines = [f"# GPU session: {out.name}\n"]
    lines.append(
        f"Machine: {gpus[0].get('name', 'no GPU')} (driver {gpus[0].get('driver', DASH)}), "
        f"{doctor.get('cpu_cores', DASH)} CPU cores ({doctor.get('cpu', DASH)}); torch {doctor.get('torch', DASH)}, "
        f"CUDA {doctor.get('cuda_runtime', DASH)}, DALI {doctor.get('dali', DASH)}; commit {doctor.get('git_commit', DASH)}. "
        f"Made by `benchmarks/gpu_session.py` ({len(record.runs)} run(s); a rerun resumes). "
        "The benchmark tables and plots are in [REPORT.md](REPORT.md); every number is a row of `results.jsonl`.\n"
    )
    lines.append("## Steps\n\n| step | budget s | status | wall s (last) | note |\n|---|---|---|---|---|")
    for s in steps:
        st = record.steps.get(s.name, {})
        note = str(st.get("note", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {s.name} | {budgets[s.name]:.0f} | {st.get('status', 'not run')} | {st.get('wall_s', DASH)} | {note} |")
    lines.append("\n## Goals (measured, not asserted)\n\n| goal | target | measured | |\n|---|---|---|---|")
    lines += [f"| {g} | {t} | {m} | {v} |" for g, t, m, v in goals(rows)]
    table = loaders_table(rows)
    if table:
        lines.append("\n## Loaders side by side (1024x2048 JPEG -> 512x1024)\n\n" + table)
    for decode_only in (False, True):
        for batch in (16, 8):
            table = tuning_table(rows, batch, decode_only)
            if table:
                what = "decode-only (full frames)" if decode_only else "train (npy labels)"
                lines.append(f"\n## DALI mixed decode, {what}, batch {batch}: img/s\n\n{table}")
    (out / "SESSION.md").write_text("\n".join(lines) + "\n")
    return out / "SESSION.md"
