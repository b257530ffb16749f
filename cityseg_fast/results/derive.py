"""Derived metrics, computed when rows are merged: e2e efficiency and scaling efficiency, one rule each.

    rows = merge(read_rows(paths))      # latest result per point, each with row.derived

The rule: a row names its companions when it is written (row_for: the loader-alone and model-alone
points of an e2e point, the world-size-1 point of a multi-GPU one), so matching is exact (same point
id), never "the latest row with similar keys". The report and the sweep read `row.derived` and
compute nothing themselves. Rows recorded under an unresolved variable (`schema.unresolved`) are left out
of both: they are no measurement of the point they name.

    e2e_limit = min(loader, model)            the model on a GPU: the stages overlap
              = 1 / (1/loader + 1/model)      both on the CPU: they take turns on the same cores
    e2e_efficiency = e2e / e2e_limit
    e2e_cores_to_feed = loader CPU ms per image x model img/s / 1000   CPU cores the loader would need to
                                                                    keep up with the model alone
    scaling_efficiency = throughput(N) / (N x throughput(1))       with scaling_base_images_per_s = throughput(1)
                                                                    and scaling_ideal_images_per_s = N x that

The min rule assumes the loader and the model do not share the GPU. A loader that decodes or augments on
the GPU (DALI `mixed`, the torch backend's nvJPEG loader) runs on the same SMs and memory bandwidth as the
model, so each alone is faster than beside the other: the limit is then an upper bound that e2e cannot
reach even with perfect overlap, and the efficiency understates the overlap (the report says so).

An e2e row also carries its loader row's CPU ms per image and GPU memory (loader_gpu_mem_mib, on a GPU)
as e2e_loader_cpu_ms_per_image and e2e_loader_gpu_mem_mib, so the bottleneck table reads one row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from cityseg_fast.results.scenarios import CPU_MS_PER_IMAGE, DEVICE, IMAGES_PER_S, LOADER_GPU_MEM_MIB
from cityseg_fast.results.schema import Row, unresolved

# The derived metrics' names (Row.derived): this module makes them, the report and the sweep read them.
E2E_LOADER_IMAGES_PER_S = "e2e_loader_images_per_s"
E2E_MODEL_IMAGES_PER_S = "e2e_model_images_per_s"
E2E_LIMIT_IMAGES_PER_S = "e2e_limit_images_per_s"
E2E_LIMIT_KIND = "e2e_limit_kind"  # "min" | "shared_cpu" (e2e_limit)
E2E_EFFICIENCY = "e2e_efficiency"
E2E_LOADER_POINT_ID = "e2e_loader_point_id"
E2E_MODEL_POINT_ID = "e2e_model_point_id"
E2E_LOADER_CPU_MS_PER_IMAGE = "e2e_loader_cpu_ms_per_image"
E2E_CORES_TO_FEED = "e2e_cores_to_feed"
E2E_LOADER_GPU_MEM_MIB = "e2e_loader_gpu_mem_mib"
SCALING_EFFICIENCY = "scaling_efficiency"
SCALING_BASE_POINT_ID = "scaling_base_point_id"
SCALING_BASE_IMAGES_PER_S = "scaling_base_images_per_s"  # the same point at world size 1
SCALING_IDEAL_IMAGES_PER_S = "scaling_ideal_images_per_s"  # N x that: perfect scaling


def split_unresolved(rows: Iterable[Row]) -> tuple[list[Row], list[Row]]:
    """(real rows, rows recorded under an unresolved `${VAR}`), each in order."""
    real: list[Row] = []
    bad: list[Row] = []
    for row in rows:
        (bad if unresolved(row) else real).append(row)
    return real, bad


def latest_per_point(rows: Iterable[Row]) -> tuple[list[Row], int]:
    """One row per point_id: the last ok one if any, else the last one; in order of first appearance.
    Rows under an unresolved variable are left out. Returns (rows, how many older rows were superseded)."""
    order: dict[str, int] = {}
    chosen: dict[str, Row] = {}
    n = 0
    for row in split_unresolved(rows)[0]:
        n += 1
        pid = row.point_id
        order.setdefault(pid, len(order))
        prev = chosen.get(pid)
        if prev is None or row.ok or not prev.ok:
            chosen[pid] = row
    kept = sorted(chosen.values(), key=lambda r: order[r.point_id])
    return kept, n - len(kept)


def e2e_limit(loader_ips: float, model_ips: float, model_on_gpu: bool) -> tuple[float, str]:
    """The throughput end to end can reach from its two stages, and which rule gave it."""
    if model_on_gpu:
        return min(loader_ips, model_ips), "min"
    return 1.0 / (1.0 / loader_ips + 1.0 / model_ips), "shared_cpu"


def _ips(row: Row | None) -> float | None:
    v = None if row is None else row.number(IMAGES_PER_S)
    return v if v is not None and v > 0 else None


def loader_costs(loader: Row, model_ips: float) -> dict[str, Any]:
    """What feeding the model costs: the loader's CPU ms per image, the cores that makes at the model-only
    rate, and the loader's own GPU memory where it was measured."""
    out: dict[str, Any] = {}
    cpu_ms = loader.number(CPU_MS_PER_IMAGE)
    if cpu_ms is not None:
        out.update({E2E_LOADER_CPU_MS_PER_IMAGE: cpu_ms, E2E_CORES_TO_FEED: cpu_ms * model_ips / 1000.0})
    gpu_mib = loader.number(LOADER_GPU_MEM_MIB)
    if gpu_mib is not None:
        out[E2E_LOADER_GPU_MEM_MIB] = gpu_mib
    return out


def derived(row: Row, by_id: dict[str, Row]) -> dict[str, Any]:
    """The derived metrics of one row, from its companions among `by_id`; {} where they are missing."""
    comp = row.companions
    if not comp:
        return dict(row.derived)  # a schema-1 row: what its sweep stored
    out: dict[str, Any] = {}
    me = _ips(row)
    if me is None:
        return out
    loader, model = by_id.get(comp.get("loader", "")), by_id.get(comp.get("model", ""))
    lo, mo = _ips(loader), _ips(model)
    if row.scenario == "e2e" and lo and mo:
        limit, kind = e2e_limit(lo, mo, row.metrics.get(DEVICE) == "cuda")
        out.update({
            E2E_LOADER_IMAGES_PER_S: lo,
            E2E_MODEL_IMAGES_PER_S: mo,
            E2E_LIMIT_IMAGES_PER_S: limit,
            E2E_LIMIT_KIND: kind,
            E2E_EFFICIENCY: me / limit,
            E2E_LOADER_POINT_ID: loader.point_id,
            E2E_MODEL_POINT_ID: model.point_id,
            **loader_costs(loader, mo),
        })  # fmt: skip
    base = by_id.get(comp.get("base", ""))
    n = row.point.get("world_size", 1)
    if _ips(base) and n > 1:
        ideal = n * _ips(base)
        out.update({SCALING_EFFICIENCY: me / ideal, SCALING_BASE_POINT_ID: base.point_id,
                    SCALING_BASE_IMAGES_PER_S: _ips(base), SCALING_IDEAL_IMAGES_PER_S: ideal})  # fmt: skip
    return out


def merge(rows: Iterable[Row]) -> list[Row]:
    """The latest row of each point, each a new Row with its derived metrics (see the module docstring)."""
    kept, _ = latest_per_point(rows)
    by_id = {r.point_id: r for r in kept}
    return [dataclasses.replace(r, derived=derived(r, by_id)) for r in kept]
