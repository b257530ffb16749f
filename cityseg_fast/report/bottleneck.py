"""The bottleneck table: loader alone vs model alone vs end to end, and the verdict, per e2e point.

Every number comes from the merged rows: each e2e row's `derived` metrics (results.derive: the loader
and model rows it names, the limit, the efficiency). Nothing is matched or computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cityseg_fast.report.format import DASH, fmt_num, fmt_pct, md_table, sort_rows
from cityseg_fast.report.runs import (
    Run,
    flat_point,
    loader_label,
    metric,
    point_keys,
    point_label,
    split_keys,
)


def derived(row: dict[str, Any], key: str) -> float | None:
    """A derived metric of a merged row (cityseg_fast.results.derive), or None."""
    v = (row.get("derived") or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def bottleneck_rows(run: Run) -> list[dict[str, Any]]:
    """One record per ok e2e point: its loader-alone and model-alone throughputs, the limit, the
    efficiency and a verdict, all as results.merge derived them (from the rows the e2e row names)."""
    out = []
    rows = [r for r in run.rows if r["scenario"] == "e2e" and metric(r, "images_per_s") is not None]
    for e in sort_rows(rows, point_keys(rows)):  # by point, not by when it ran: shards merge in any order
        loader_ips, model_ips = derived(e, "e2e_loader_images_per_s"), derived(e, "e2e_model_images_per_s")
        eff = derived(e, "e2e_efficiency")
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
                "point": flat_point(e),
                "loader": loader_ips,
                "model": model_ips,
                "e2e": metric(e, "images_per_s"),
                "limit": derived(e, "e2e_limit_images_per_s"),
                "limit_kind": (e.get("derived") or {}).get("e2e_limit_kind"),
                "efficiency": eff,
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
                    fmt_pct(rec["efficiency"], 0),
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
        "(100% = nothing lost to the combination). The bottleneck "
        "is the slower stage; 'overlap loss' marks end to end below 90% of the limit.\n"
    )
    return md_table(head, body, right) + note
