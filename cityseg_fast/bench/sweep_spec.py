"""Sweep specs: a YAML grid expanded into concrete points, its variables and paths resolved before anything runs.

A spec (see configs/sweeps/*.yaml for commented examples):
    name: cpu_quick
    config: [configs/bench/cpu.yaml]          # base config layers (later wins)
    overrides: {data.root: ${CITYSCAPES_QUICK}, bench.iters: 10}   # applied to every point
    timeout_s: 900                            # per point
    max_batch_search: false                   # on OOM halve the batch until it fits, record each try
    repeats: 3                                # measure every point 3 times (default 1); a block may set its own
    runs:                                     # one or more blocks; each is scenarios x product(grid)
      - scenarios: [loader, model, e2e]
        overrides: {...}                      # block-level overrides
        grid:                                 # any config key, plus world_size (torchrun)
          model.name: [unet_s16]
          data.crop: [[64, 128], [128, 256]]
          loader.batch_size: [2, 4]
          world_size: [1, "${GPUS}"]

Each point is identified by the scenario table (`results.point_for`), which keeps only the keys that
change that scenario's measurement, so axes irrelevant to a scenario (the loader for `model`) do not
multiply its points. Points are listed in the table's order (loader, model, infer, e2e, accuracy,
baseline) and in ascending world size; derived metrics (e2e and scaling efficiency) are computed when
rows are read (`results.merge`), so no point needs another to have run first.

Repeats: `repeats: N` (N >= 2) measures every point N times, as N points that differ only in a `round`
key (0..N-1) of their identity, so each round is its own row and a killed sweep resumes inside a round.
The rounds are interleaved: every point's round 0 runs before any round 1, so a drift in the machine's
load hits all points alike. Reports show the median over rounds and the spread (`results/rounds.py`).

Variables: `${NAME}` (or `$NAME`) anywhere in a spec (overrides, grid values, config paths, world_size)
is expanded from the environment when the spec is loaded. An unset (or empty) one is an error naming it
and the spec, before anything runs, with one exception: where it only feeds `data.root` of points that read no
data (`SCENARIOS[name].reads_data` is false: model and infer time synthetic on-device batches), those
points run without a dataset, so `--only model --only infer` needs none. Their point ids never depend
on the dataset (no dataset key is part of them).

Paths: a config file a spec names is found beside the spec file, else under the repository root (the
shipped specs say `configs/bench/cpu.yaml`), never relative to the working directory; a spec itself
is found as given, else under the repository root.

Shards (`select_shard`): point p belongs to shard int(point_id(p), 16) % N. Disjoint and complete, and
a point's shard depends on its id alone, so points added elsewhere in a spec move no other point.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cityseg_fast.config import Config, format_hw, load_config, load_yaml, replace, to_dict
from cityseg_fast.errors import UserError
from cityseg_fast.results import (
    RESULTS_FILE,
    SCENARIOS,
    point_for,
    point_id,
    shard_file,
    variables_in,
)
from cityseg_fast.results.schema import VARIABLE

SPEC_KEYS = {
    "demo",  # read by `cityseg demo` only (the dataset it makes), ignored here
    "name",
    "description",
    "config",
    "overrides",
    "timeout_s",
    "max_batch_search",
    "repeats",
    "runs",
    "scenarios",
    "grid",
}
RUN_KEYS = {"scenarios", "grid", "overrides", "config", "name", "repeats"}
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
DATA_ROOT = "data.root"
NO_DATA_HINT = "--only " + " --only ".join(s.name for s in SCENARIOS.values() if not s.reads_data)


@dataclass
class SweepPoint:
    scenario: str
    point: dict[str, Any]
    cfg: Config
    world_size: int = 1
    label: str = ""
    search_from: int | None = None  # batch size this max-batch-search try halved down from
    round: int | None = None  # which measurement of a repeated point (part of its identity); None: not repeated

    @property
    def id(self) -> str:
        return point_id(self.scenario, self.point)

    @property
    def extra(self) -> dict[str, Any]:
        """The identity keys beyond the scenario table's: the child records them in its row (`--round`)."""
        return {} if self.round is None else {"round": self.round}


@dataclass
class SweepSpec:
    name: str
    points: list[SweepPoint]
    timeout_s: float = 1800.0
    max_batch_search: bool = False
    source: str = ""
    skipped_duplicates: int = 0
    shard: tuple[int, int] | None = None  # (index, count) once select_shard kept this shard's points
    notes: list[str] = field(default_factory=list)

    @property
    def results_file(self) -> str:
        """Where this sweep's rows go inside its out folder: results.jsonl, or its shard's own file."""
        return shard_file(*self.shard) if self.shard else RESULTS_FILE


# ---------------------------------------------------------------------------------------------
# values


def as_overrides(value: Any, where: str) -> list[str]:
    """{a.b: v} or ["a.b=v"] -> ["a.b=<yaml v>"] (variables were expanded when the spec was read)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UserError(f"{where}: overrides must be a mapping of section.key: value")


def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _feeds_data_root(where: str, text: str) -> bool:
    """A value under a data.root key (overrides / grid), or a list-form override 'data.root=...'."""
    where = re.sub(r"(\[\d+\])+$", "", where)  # a grid axis's values: runs[0].grid.data.root[2]
    return where == DATA_ROOT or where.endswith("." + DATA_ROOT) or text.startswith(DATA_ROOT + "=")


def resolve_variables(value: Any, spec: Path, where: str = "") -> Any:
    """`value` with every set ${NAME} / $NAME expanded. An unset one is a UserError naming it, the spec
    and where it is used, unless it feeds data.root: that stays literal, for `load_spec` to decide per point."""
    if isinstance(value, dict):
        return {k: resolve_variables(v, spec, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_variables(v, spec, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def expand(m: Any) -> str:
        name = m.group(1) or m.group(2)
        if os.environ.get(name):  # an empty one is a mistake too (CITYSCAPES_QUICK= cityseg sweep ...)
            return os.environ[name]
        if _feeds_data_root(where, value):
            return m.group(0)
        raise UserError(f"{spec}: ${{{name}}} {_unset(name)} (used in {where}); set it in the environment")

    return VARIABLE.sub(expand, value)


def _unset(name: str) -> str:
    return "is empty" if name in os.environ else "is not set"


# ---------------------------------------------------------------------------------------------
# files


def find_spec(path: str | os.PathLike) -> Path:
    """The spec file: as given, else (a relative path) under the repository root."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and (Path(PACKAGE_ROOT) / p).is_file():
        return Path(PACKAGE_ROOT) / p
    where = "" if p.is_absolute() else f" (nor under {PACKAGE_ROOT})"
    raise UserError(f"{p}: sweep spec not found{where}")


def _config_path(name: Any, spec: Path, where: str) -> str:
    """A config file of a spec: absolute as given, else beside the spec, else under the repository root."""
    p = Path(str(name)).expanduser()
    cands = [p] if p.is_absolute() else [spec.parent / p, Path(PACKAGE_ROOT) / p]
    for cand in cands:
        if cand.is_file():
            return str(cand)
    looked = " or ".join(str(c) for c in cands)
    raise UserError(f"{spec}: {where}: config file '{name}' not found (looked for {looked})")


def _world_size(v: Any, where: str) -> int:
    text = str(v)
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{where}: world_size {v!r} is not a positive integer")
    return int(text)


def _repeats(v: Any, where: str) -> int:
    if isinstance(v, bool) or not str(v).isdigit() or int(v) < 1:
        raise UserError(f"{where}: repeats {v!r} is not a positive integer (measurements of each point)")
    return int(v)


def _read(p: Path) -> dict[str, Any]:
    raw = load_yaml(p)
    if not isinstance(raw, dict):
        raise UserError(f"{p}: a sweep spec must be a mapping (name:, config:, runs:)")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise UserError(f"{p}: unknown sweep key(s) {sorted(unknown)}; valid: {sorted(SPEC_KEYS)}")
    body = {k: v for k, v in raw.items() if k not in ("demo", "description")}
    return resolve_variables(body, p)


# ---------------------------------------------------------------------------------------------
# expansion


@dataclass
class _Expansion:
    """What load_spec gathers over the runs blocks."""

    spec: SweepSpec
    only: set[str]
    extra: list[str]
    repeats: int = 1  # the spec's; a runs block may set its own
    seen: set[str] = field(default_factory=set)
    needs: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)  # (scenario, {key: vars})


def load_spec(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    *,
    only: Iterable[str] = (),
) -> SweepSpec:
    """Parse and expand a sweep YAML into concrete points (configs resolved and type-checked).

    overrides: `section.key=value` applied to every point, after the spec's own (e.g. the demo's --quick).
    only: keep these scenarios' points (all when empty); an unset variable feeding data.root is an error
    only if a kept point reads data. out_dir: accuracy points train under OUT/runs/."""
    p = find_spec(path)
    raw = _read(p)
    runs = raw.get("runs")
    if runs is None:
        runs = [{k: raw[k] for k in ("scenarios", "grid") if k in raw}]
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{p}: 'runs' must be a non-empty list of {{scenarios, grid, overrides}} blocks")
    spec = SweepSpec(
        name=str(raw.get("name") or p.stem),
        points=[],
        timeout_s=float(raw.get("timeout_s", 1800)),
        max_batch_search=bool(raw.get("max_batch_search", False)),
        source=str(p),
    )
    ex = _Expansion(spec, set(only), list(overrides), _repeats(raw.get("repeats", 1), f"{p}"))
    files = [_config_path(f, p, "config") for f in _as_list(raw.get("config") or [])]
    over = as_overrides(raw.get("overrides"), f"{p}: overrides")
    for i, run in enumerate(runs):
        _expand_run(ex, run, p, f"runs[{i}]", files, over)
    if ex.needs:
        raise UserError(_needs_message(p, ex.needs, hint=bool(spec.points)))
    # Round by round (every point once before any point twice), each round in the table's order: loader
    # and model points before the e2e they explain.
    order = list(SCENARIOS)
    spec.points.sort(key=lambda sp: (sp.round or 0, order.index(sp.scenario), sp.world_size))
    if out_dir is not None:
        place_accuracy_runs(spec, Path(out_dir))
    return spec


def _expand_run(ex: _Expansion, run: Any, p: Path, name: str, files: list[str], over: list[str]) -> None:
    where = f"{p}: {name}"
    if not isinstance(run, dict) or set(run) - RUN_KEYS:
        raise UserError(f"{where}: expected keys {sorted(RUN_KEYS)}, got {run!r:.200}")
    scenarios = _as_list(run.get("scenarios") or [])
    bad = [s for s in scenarios if s not in SCENARIOS]
    if not scenarios or bad:
        raise UserError(f"{where}: scenarios must be a list from {list(SCENARIOS)}, got {scenarios}")
    grid = run.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{where}: grid must be a mapping of section.key: [values]")
    files = files + [_config_path(f, p, f"{name}.config") for f in _as_list(run.get("config") or [])]
    over = over + as_overrides(run.get("overrides"), f"{where}.overrides")
    repeats = _repeats(run.get("repeats", ex.repeats), where)
    for values in _combos(grid):
        world = _world_size(values.pop("world_size", 1), where)
        point_over = [f"{k}={_yaml_value(v)}" for k, v in values.items()]
        try:
            cfg = load_config(files, over + point_over + ex.extra)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        label = " ".join(f"{k}={format_hw(v)}" for k, v in values.items()) + f" ws={world}"
        for scenario in scenarios:
            if not ex.only or scenario in ex.only:
                for r in range(repeats) if repeats > 1 else [None]:
                    _add_point(ex, scenario, cfg, world, label, r)


def _combos(grid: dict[str, Any]) -> Iterator[dict[str, Any]]:
    axes = [(k, _as_list(v)) for k, v in grid.items()]
    for combo in itertools.product(*[vals for _, vals in axes]):
        yield dict(zip([k for k, _ in axes], combo, strict=True))


def _unresolved_keys(cfg: Config) -> dict[str, list[str]]:
    """{'section.key': [variables]} of the config values still holding a ${VAR}."""
    d = to_dict(cfg)
    keys = {f"{s}.{k}": variables_in(v) for s, sec in d.items() for k, v in sec.items()}
    return {k: names for k, names in keys.items() if names}


def _add_point(ex: _Expansion, scenario: str, cfg: Config, world: int, label: str, r: int | None) -> None:
    keys = _unresolved_keys(cfg)
    if keys:
        if set(keys) != {DATA_ROOT} or SCENARIOS[scenario].reads_data:
            ex.needs.append((scenario, keys))
            return
        cfg = replace(cfg, data={"root": ""})  # reads no data: synthetic batches, no dataset needed
    sp = _point(scenario, cfg, world, label + ("" if r is None else f" round={r}"), r)
    if sp.id in ex.seen:
        ex.spec.skipped_duplicates += 1
        return
    ex.seen.add(sp.id)
    ex.spec.points.append(sp)


def _point(
    scenario: str, cfg: Config, world: int, label: str, r: int | None = None, search_from: int | None = None
) -> SweepPoint:
    """The SweepPoint of one measurement: the table's identity keys, plus its round when repeated."""
    sp = SweepPoint(scenario, point_for(scenario, cfg, world), cfg, world, label, search_from, r)
    sp.point.update(sp.extra)
    return sp


def _needs_message(p: Path, needs: list[tuple[str, dict[str, list[str]]]], hint: bool) -> str:
    """One line: the first unresolved variable, the key it feeds, how many points (of which scenarios);
    hint: the spec also has points that read no data (which could run without it)."""
    key, names = next(iter(needs[0][1].items()))
    name = names[0]
    hit = [s for s, keys in needs if key in keys]
    state = _unset(name) if not os.environ.get(name) else "is not expanded (variables in config files are not)"
    msg = f"{p}: ${{{name}}} {state}; {key} of {len(hit)} point(s) ({', '.join(dict.fromkeys(hit))}) needs it"
    if key == DATA_ROOT and hint:
        return msg + f"; set it, or run only the points that read no data ({NO_DATA_HINT})"
    return msg + "; set it"


# ---------------------------------------------------------------------------------------------
# derived point lists


def _accuracy_dir(root: Path, sp: SweepPoint) -> str:
    return str(root / f"accuracy-{sp.id}")


def place_accuracy_runs(spec: SweepSpec, out: Path) -> None:
    """Each accuracy point trains into its own out_dir under the sweep folder (not the default runs/)."""
    for sp in spec.points:
        if sp.scenario == "accuracy":
            sp.cfg = replace(sp.cfg, train={"out_dir": _accuracy_dir(out / "runs", sp)})


def halved(sp: SweepPoint) -> SweepPoint | None:
    """The same point at half the batch size (max-batch search), or None below batch 1. An accuracy
    point gets a run directory of its own (the one of the try that ran out of memory has another config)."""
    bs = sp.cfg.loader.batch_size // 2
    if bs < 1:
        return None
    cfg = replace(sp.cfg, loader={"batch_size": bs})
    label = sp.label + f" (search bs={bs})"
    nxt = _point(sp.scenario, cfg, sp.world_size, label, sp.round, sp.search_from or sp.cfg.loader.batch_size)
    if sp.scenario == "accuracy":
        nxt.cfg = replace(cfg, train={"out_dir": _accuracy_dir(Path(cfg.train.out_dir).parent, nxt)})
    return nxt


def shard_index(pid: str, count: int) -> int:
    """The shard (0..count-1) of a point id: a hex digest, so shards come out about equal in size."""
    return int(pid, 16) % count


def select_shard(spec: SweepSpec, index: int, count: int) -> None:
    """Keep only the points of shard `index` of `count` (see the module docstring)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}")
    spec.points = [sp for sp in spec.points if shard_index(sp.id, count) == index]
    spec.shard = (index, count)


def default_out_dir(spec: SweepSpec) -> Path:
    return Path("runs") / "sweeps" / spec.name
