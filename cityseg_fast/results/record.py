"""`row_for`: the one way a result row is built, from a measurement or from the failure that prevented it.

    row = row_for("model", cfg, metrics)                      # ok
    row = row_for("model", cfg, error=exc)                    # oom or error, classified here
    row = row_for("e2e", cfg, error="timeout: point ran longer than 600 s", world_size=2)
    rows = rows_for("accuracy", cfg, metrics)                 # that row, then one per inference scale

Like timm's benchmark `_try_run`, failures become results in one place: `classify` decides oom vs
error and makes the one-line message, `clean` (cityseg_fast/jsonsafe.py) makes metrics strict JSON, and
the point, its id and its companions come from the scenario table.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import TYPE_CHECKING, Any

from cityseg_fast.config import config_hash, to_dict
from cityseg_fast.environment import collect_env
from cityseg_fast.jsonsafe import clean  # re-exported: results.clean is the rows' cleaner too
from cityseg_fast.results.scenarios import EVAL_SCALE, SCALES, companions_for, point_for
from cityseg_fast.results.schema import Row, point_id

if TYPE_CHECKING:
    from cityseg_fast.config import Config


def one_line(error: BaseException | str, limit: int = 500) -> str:
    """'Type: first line of the message' (or the text given), whitespace collapsed, at most `limit`."""
    if isinstance(error, BaseException):
        text = " ".join(str(error).split())
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    else:
        text = " ".join(str(error).split())
    return text[:limit]


def is_oom(error: BaseException | str) -> bool:
    """An out-of-memory failure (torch's exception, or its message seen through a subprocess)."""
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return "out of memory" in str(error).lower()


def classify(error: BaseException | str) -> tuple[str, str]:
    """(status, one-line message) of a failed measurement: 'oom' or 'error'."""
    return ("oom" if is_oom(error) else "error"), one_line(error)


def row_for(
    scenario: str,
    cfg: Config,
    metrics: dict[str, Any] | None = None,
    *,
    error: BaseException | str | None = None,
    world_size: int = 1,
    env: dict[str, Any] | None = None,
    point: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None,
) -> Row:
    """The checked, read-only row of one measurement of `scenario` under `cfg` (see the module docstring).

    point: extra identity keys merged over the table's (e.g. a benchmark's `round`); env defaults to
    environment.collect_env(); sweep: how a sweep ran the point (schema.SWEEP_KEYS)."""

    if env is None:
        env = collect_env()
    p = {**point_for(scenario, cfg, world_size), **(point or {})}
    status, message = ("ok", None) if error is None else classify(error)
    return Row(
        scenario=scenario,
        status=status,
        error=message,
        point_id=point_id(scenario, p),
        point=clean(p),
        metrics=clean(dict(metrics or {})),
        companions={role: point_id(s, q) for role, (s, q) in companions_for(scenario, cfg, world_size).items()},
        sweep=clean(dict(sweep or {})),
        config=to_dict(cfg),
        config_hash=config_hash(cfg),
        env=clean(env),
        time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def rows_for(
    scenario: str,
    cfg: Config,
    metrics: dict[str, Any] | None = None,
    *,
    error: BaseException | str | None = None,
    world_size: int = 1,
    env: dict[str, Any] | None = None,
    point: dict[str, Any] | None = None,
) -> list[Row]:
    """The rows one measurement records: `row_for`'s, then, where its metrics hold SCALES (an accuracy run
    with bench.eval_scales), one per scale: the same point plus EVAL_SCALE, that scale's metrics, and the
    training row as its companion 'train'. One training run, several points, each with its own id."""
    metrics = dict(metrics or {})
    scales = metrics.pop(SCALES, None) or []
    env = collect_env() if env is None else env
    main = row_for(scenario, cfg, metrics, error=error, world_size=world_size, env=env, point=point)
    rows = [main]
    for entry in scales:
        extra = {**(point or {}), EVAL_SCALE: entry[EVAL_SCALE]}
        row = row_for(scenario, cfg, {k: v for k, v in entry.items() if k != EVAL_SCALE}, world_size=world_size,
                      env=env, point=extra)  # fmt: skip
        rows.append(dataclasses.replace(row, companions={"train": main.point_id}))
    return rows
