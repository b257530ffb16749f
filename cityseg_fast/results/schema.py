"""The result row's schema: the `Row` type, its checks, the upgrade of older rows, and a point's id.

A row (schema 2), as stored (`Row.to_json`) and read back (`Row.from_json`):
    {
      "schema": 2,
      "scenario": "loader" | "model" | "infer" | "e2e" | "accuracy" | "baseline",   (scenarios.py)
      "status": "ok" | "oom" | "error",
      "error": null | "one-line message",
      "point_id": "3f2a...",          # stable id of (scenario, point): a sweep skips ids already ok
      "point": {...},                 # what identifies the point, flat: model, resolution [H, W],
                                      # batch_size, dtype, channels_last, compile, loader, world_size, ...
      "metrics": {...},               # flat values named by scenarios.py's constants: images_per_s,
                                      # latency_ms_p50, miou (a fraction), per_class_iou, mem_*_mib, mfu ...
                                      # (NaN is stored as null)
      "companions": {"loader": id, "model": id, "base": id},   # rows the derived metrics divide by
      "sweep": {"point_wall_s": 41.2, "max_batch_search_from": 16},   # how a sweep ran it; {} outside one
      "config": {...}, "config_hash": "...",
      "env": {...},                   # environment.collect_env()
      "time": "2026-11-24T19:00:00+00:00"
    }

In memory a row is a frozen `Row`, checked when it is made (by record.row_for or read from a file) and
read-only after: its mappings are read-only views, and a row with something more (the derived metrics
merge attaches, the sweep's wall time) is a new Row, made with `dataclasses.replace` and checked again.
`derived` is computed when rows are merged (derive.py) and never stored.

Older rows are upgraded as they are read: schema-1 rows (crop -> resolution, mIoU in percent, the
efficiency their sweep stored) and schema-2 rows of sweeps that kept their wall time among the metrics.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cityseg_fast.results.scenarios import SCENARIOS

SCHEMA_VERSION = 2
STATUSES = ("ok", "oom", "error")

# The sweep's record of running a point (Row.sweep): the point's whole wall time, process start included,
# and, for a try of the max-batch search, the batch size the search started from.
POINT_WALL_S = "point_wall_s"
MAX_BATCH_SEARCH_FROM = "max_batch_search_from"
SWEEP_KEYS = (POINT_WALL_S, MAX_BATCH_SEARCH_FROM)

# Metrics a schema-1 sweep stored on its rows; schema 2 derives them when rows are merged (derive.py).
_V1_DERIVED = (
    "e2e_efficiency",
    "e2e_limit_images_per_s",
    "e2e_limit_kind",
    "e2e_loader_point_id",
    "e2e_model_point_id",
    "scaling_efficiency",
    "scaling_base_point_id",
)
_MAPPINGS = ("point", "metrics", "companions", "sweep", "config", "env", "derived")
_REQUIRED = ("schema", "scenario", "status", "point_id", "point", "metrics", "config", "config_hash", "env", "time")


def point_id(scenario: str, point: Mapping[str, Any]) -> str:
    """Stable id of a measured point: the scenario and its parameters, not the results."""
    blob = json.dumps({"scenario": scenario, **point}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# An environment variable left in a value ($NAME or ${NAME}): a sweep spec resolves every one before a
# point runs, but older sweeps recorded rows with the literal text (their variable was unset then).
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|([A-Za-z_]\w*))")


def variables_in(value: Any) -> list[str]:
    """Names of the variables left in the strings of `value` (nested mappings / lists), each once, in order."""
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list):
        return list(dict.fromkeys(n for v in value for n in variables_in(v)))
    if isinstance(value, str):
        return list(dict.fromkeys(a or b for a, b in VARIABLE.findall(value)))
    return []


def _plain(value: Any) -> Any:
    """A JSON-plain copy: read-only mapping views become dicts (json.dumps takes no mappingproxy)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Row:
    """One measured point (see the module docstring); checked when made, read-only after."""

    scenario: str
    status: str
    error: str | None
    point_id: str
    point: Mapping[str, Any]
    metrics: Mapping[str, Any]
    config: Mapping[str, Any]
    config_hash: str
    env: Mapping[str, Any]
    time: str
    companions: Mapping[str, str] = field(default_factory=dict)
    sweep: Mapping[str, Any] = field(default_factory=dict)  # SWEEP_KEYS; {} outside a sweep
    derived: Mapping[str, Any] = field(default_factory=dict)  # derive.merge's; never stored
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check(self)
        for name in _MAPPINGS:  # read-only views of private copies: nobody can change a checked row
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def number(self, key: str) -> float | None:
        """A numeric metric of an ok row (as a float), else None: what tables, plots and derived metrics use."""
        v = self.metrics.get(key) if self.ok else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def to_json(self) -> dict[str, Any]:
        """The stored form: a JSON-plain dict of every field but `derived` (computed again on read)."""
        return {
            "schema": self.schema, "scenario": self.scenario, "status": self.status, "error": self.error,
            "point_id": self.point_id, "point": _plain(self.point), "metrics": _plain(self.metrics),
            "companions": _plain(self.companions), "sweep": _plain(self.sweep), "config": _plain(self.config),
            "config_hash": self.config_hash, "env": _plain(self.env), "time": self.time,
        }  # fmt: skip

    @classmethod
    def from_json(cls, obj: Any) -> Row:
        """The row of a stored JSON object (older schemas upgraded); ValueError naming the first bad field."""
        obj = upgrade(obj)
        validate_row(obj)
        return cls(**{k: obj[k] for k in _REQUIRED}, error=obj.get("error"),
                   companions=obj.get("companions") or {}, sweep=obj.get("sweep") or {},
                   derived=obj.get("derived") or {})  # fmt: skip


_KINDS = {"schema": int, "scenario": str, "status": str, "point_id": str, "config_hash": str, "time": str,
          **dict.fromkeys(_MAPPINGS, Mapping)}  # fmt: skip
_PLAIN_MAPPINGS = (dict, MappingProxyType)  # what rows hold: checked by type first, the ABC check is slow


def _check(row: Row) -> None:
    """Raise ValueError naming the first field of `row` that breaks the schema."""
    for name, want in _KINDS.items():
        got = getattr(row, name)
        if not (type(got) in _PLAIN_MAPPINGS if want is Mapping else False) and not isinstance(got, want):
            raise ValueError(f"result row: field '{name}' must be {want.__name__}, got {type(got).__name__}")
    if row.schema != SCHEMA_VERSION:
        raise ValueError(f"result row: schema {row.schema} (this version reads {SCHEMA_VERSION})")
    if row.scenario not in SCENARIOS:
        raise ValueError(f"result row: unknown scenario '{row.scenario}'")
    if row.status not in STATUSES:
        raise ValueError(f"result row: unknown status '{row.status}'")
    if row.status != "ok" and not row.error:
        raise ValueError("result row: a non-ok row needs an error message")
    if row.error is not None and not isinstance(row.error, str):
        raise ValueError(f"result row: field 'error' must be a string or null, got {type(row.error).__name__}")
    for k, v in row.metrics.items():
        if v is not None and not isinstance(v, (int, float, str, bool, list, dict)):
            raise ValueError(f"result row: metric '{k}' has type {type(v).__name__}")


def validate_row(obj: Any) -> None:
    """Raise ValueError naming the first field of a stored row (a JSON object) that breaks the schema."""
    if not isinstance(obj, dict):
        raise ValueError(f"result row: a JSON object expected, got {type(obj).__name__}")
    for key in _REQUIRED:
        if key not in obj:
            raise ValueError(f"result row: missing field '{key}'")
    for key in ("companions", "sweep"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise ValueError(f"result row: field '{key}' must be dict, got {type(obj[key]).__name__}")
    if not isinstance(obj["schema"], int) or obj["schema"] != SCHEMA_VERSION:
        raise ValueError(f"result row: schema {obj['schema']!r} (this version reads {SCHEMA_VERSION})")
    for key in ("point", "metrics", "config", "env"):
        if not isinstance(obj[key], dict):
            raise ValueError(f"result row: field '{key}' must be dict, got {type(obj[key]).__name__}")


def upgrade(obj: Any) -> Any:
    """A stored row in the current form: schema 1 upgraded (`_upgrade_v1`), and the sweep's keys a sweep
    once stored among the metrics moved to `sweep`. Anything else is returned as it is."""
    if not isinstance(obj, dict):
        return obj
    obj = _upgrade_v1(obj)
    metrics = obj.get("metrics")
    if "sweep" not in obj and isinstance(metrics, dict) and any(k in metrics for k in SWEEP_KEYS):
        obj = {**obj, "metrics": {k: v for k, v in metrics.items() if k not in SWEEP_KEYS},
               "sweep": {k: metrics[k] for k in SWEEP_KEYS if k in metrics}}  # fmt: skip
    return obj


def _upgrade_v1(row: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 row in schema 2: `crop` -> `resolution`, `iou` -> `per_class_iou`, mIoU and pixel
    accuracy as fractions (some producers wrote percentages), the derived metrics it stored kept under
    `derived` (no companions to derive them again), a new point_id for the renamed point."""
    if row.get("schema") != 1:
        return row
    row = {**row, "schema": SCHEMA_VERSION}
    point = dict(row.get("point") or {})
    if "crop" in point:
        point["resolution"] = point.pop("crop")
    metrics = dict(row.get("metrics") or {})
    if "iou" in metrics and "per_class_iou" not in metrics:
        metrics["per_class_iou"] = metrics.pop("iou")
    for key in ("miou", "acc"):
        if isinstance(metrics.get(key), (int, float)) and metrics[key] > 1:
            metrics[key] = metrics[key] / 100.0
    row["derived"] = {k: metrics.pop(k) for k in _V1_DERIVED if k in metrics}
    row["point"], row["metrics"] = point, metrics
    if isinstance(row.get("scenario"), str):
        row["point_id"] = point_id(row["scenario"], point)
    row.setdefault("companions", {})
    return row


def unresolved(row: Row) -> list[str]:
    """The variables a row was recorded under unresolved (its config or point still holds `${...}`): such a
    row measured something other than its point says, so it is never matched with real rows."""
    if "$" not in repr(row.config) and "$" not in repr(row.point):  # the common case, in C: no walk
        return []
    return variables_in([row.config, row.point])
