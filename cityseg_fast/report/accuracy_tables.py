"""The report's accuracy tables: mIoU and pixel accuracy per accuracy run, and IoU per class with short column
headers (a letter and the model) and a legend that names each column's whole configuration."""

from __future__ import annotations

from collections.abc import Sequence

from cityseg_fast.labels import CLASS_NAMES
from cityseg_fast.report.format import (
    DASH,
    best_rows,
    constants_line,
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
    point_label,
    split_keys,
    tagged_rows,
)
from cityseg_fast.report.tables import metric_cell, point_cells
from cityseg_fast.results import SCENARIOS
from cityseg_fast.results.scenarios import (
    ACC,
    IMAGES_PER_S,
    MIOU,
    PER_CLASS_IOU,
    TRAIN_WALL_S,
)


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
        ("train img/s", metric_cell(IMAGES_PER_S)),
        ("train wall", metric_cell(TRAIN_WALL_S, fmt_s)),
    ]
    cols = [c for c in cols if c[0] == "mIoU" or any(c[1](r) != DASH for r in rows)]
    head = (["run"] if with_run else []) + varying + [c[0] for c in cols] + ["status"]
    body = [point_cells(r, varying, with_run) + [c[1](r) for c in cols] + [status_cell(r)] for r in rows]
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
