"""Mixed precision in a benchmark report: each speed point run in bf16, fp16 or tf32 beside the same point in
fp32, and the speed-up (the demo's "Mixed precision" section).

    mixed_precision_section(runs)     # '' when no point ran in fp32 and another precision
    emulated_note(runs)               # why a CPU run measured no bf16: its rows' environment says emulated

A pair is two ok rows of one run and one scenario whose points differ in `dtype` alone, so the speed-up is
the precision's and nothing else's. The model scenario also times eval-mode inference on its batch
(infer_images_per_s): its ratio is the inference speed-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cityseg_fast.config import format_hw
from cityseg_fast.report.format import DASH, fmt_num, fmt_ratio, md_table
from cityseg_fast.report.runs import Run
from cityseg_fast.results import Row
from cityseg_fast.results.scenarios import IMAGES_PER_S, INFER_IMAGES_PER_S

SCENARIOS = ("model", "infer", "e2e")  # the speed scenarios whose points name a precision


def _without_dtype(row: Row) -> str:
    return repr(sorted((k, v) for k, v in row.point.items() if k != "dtype"))


def pairs(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """(fp32 row, other-precision row) of the ok speed rows whose points differ in dtype alone."""
    fp32 = {(r.scenario, _without_dtype(r)): r for r in rows if r.ok and r.point.get("dtype") == "fp32"}
    out = []
    for r in rows:
        if r.ok and r.scenario in SCENARIOS and r.point.get("dtype", "fp32") != "fp32":
            base = fp32.get((r.scenario, _without_dtype(r)))
            if base is not None:
                out.append((base, r))
    return out


def _label(point: Mapping[str, Any]) -> str:
    """'unet_s16 64x128 bs4', and the loader where the point has one: 'unet_s16 64x128 bs4, dali (cpu)'."""
    text = f"{point.get('model')} {format_hw(point.get('resolution'))} bs{point.get('batch_size')}"
    loader = point.get("loader")
    return text + (f", {loader} ({point['loader_device']})" if loader and point.get("loader_device") else
                   f", {loader}" if loader else "")  # fmt: skip


def _speed_ups(base: Row, other: Row) -> tuple[str, str]:
    """(training, inference) speed-up of `other` over `base`: an infer row's images/s is inference already;
    a model row also timed eval-mode inference on its batch; an e2e row trains only."""
    if other.scenario == "infer":
        return DASH, fmt_ratio(other.number(IMAGES_PER_S), base.number(IMAGES_PER_S))
    train = fmt_ratio(other.number(IMAGES_PER_S), base.number(IMAGES_PER_S))
    return train, fmt_ratio(other.number(INFER_IMAGES_PER_S), base.number(INFER_IMAGES_PER_S))


def mixed_precision_section(runs: Sequence[Run]) -> str:
    """A table of every run's pairs: the point, fp32's and the other precision's images/s, the speed-ups."""
    body = []
    for run in runs:
        found = pairs(run.rows)
        for base, other in found:
            body.append([other.scenario, _label(base.point), str(other.point["dtype"]),
                         fmt_num(base.number(IMAGES_PER_S)), fmt_num(other.number(IMAGES_PER_S)),
                         *_speed_ups(base, other)])  # fmt: skip
    if not body:
        return ""
    head = ["scenario", "point", "precision", "fp32 img/s", "img/s", "training speed-up", "inference speed-up"]
    return ("Each point beside the same point in fp32 (the points differ in precision alone). Training: the "
            "train step's images/s; inference: eval-mode forward (the model scenario times it on its batch).\n\n"
            + md_table(head, body, [False, False, False, True, True, True, True]))  # fmt: skip


def emulated_note(runs: Sequence[Run]) -> str:
    """Why these rows measured fp32 only, where their environment says the CPU emulates bf16 ('' otherwise)."""
    for run in runs:
        for r in run.rows:
            if r.metrics.get("device") == "cpu" and (r.env.get("bf16") or {}).get("cpu") == "emulated":
                return ("fp32 only: this CPU emulates bf16 (`cityseg doctor`: no amx_bf16 / avx512_bf16 or bf16 "
                        "instructions), and emulated bf16 trains several times slower than fp32 (the cost "
                        "configs/studies/precision_cpu.yaml's header measured), so no point here runs bf16.")  # fmt: skip
    return ""
