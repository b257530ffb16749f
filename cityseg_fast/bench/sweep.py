"""Benchmark sweeps: a grid of points from a YAML spec, one fresh subprocess per point, resumable results.

    cityseg sweep configs/sweeps/cpu_quick.yaml --out runs/cpu_quick    # -> runs/cpu_quick/results.jsonl

A spec (see configs/sweeps/*.yaml for commented examples):

    name: cpu_quick
    config: [configs/bench/cpu.yaml]          # base config layers (later wins)
    overrides: {bench.iters: 10}              # applied to every point
    timeout_s: 900                            # per point
    max_batch_search: false                   # on OOM halve the batch until it fits, record each try
    runs:                                     # one or more blocks; each is scenarios x product(grid)
      - scenarios: [loader, model, e2e]
        overrides: {...}                      # block-level overrides
        grid:                                 # any config key, plus world_size (torchrun)
          model.name: [unet_s16]
          data.crop: [[64, 128], [128, 256]]
          loader.batch_size: [2, 4]
          world_size: [1]

Each point is identified by the scenario table (`results.point_for`), which keeps only the keys that
change that scenario's measurement, so axes irrelevant to a scenario (the loader for `model`) do not
multiply its points. Points run in the table's order (loader, model, infer, e2e, accuracy, baseline)
and in ascending world size, so the rows an e2e or a multi-GPU row's derived metrics need (its
companions) exist first; `results.merge` derives them when the rows are read.

Guarantees:
- the parent alone appends to results.jsonl (results.append_row: atomic, fsync); a point's child
  writes to its own scratch file, so a killed sweep loses at most the point in flight, never a row;
- rerunning skips points already `ok` (and `oom`, unless --retry-oom), so an interrupted sweep
  resumes without duplicate rows; `error` points are retried;
- any failure (exception, crash, timeout) becomes an `error` row with a one-line message; an
  out-of-memory becomes `oom`; the sweep always goes on to the next point.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cityseg_fast.config import Config, dump_config, load_config, load_yaml
from cityseg_fast.errors import UserError

SPEC_KEYS = {
    "demo",  # read by `cityseg demo` only (the dataset it makes), ignored here
    "name",
    "description",
    "config",
    "overrides",
    "timeout_s",
    "max_batch_search",
    "runs",
    "scenarios",
    "grid",
}
RUN_KEYS = {"scenarios", "grid", "overrides", "config", "name"}
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class SweepPoint:
    scenario: str
    point: dict[str, Any]
    cfg: Config
    world_size: int = 1
    label: str = ""
    search_from: int | None = None  # batch size this max-batch-search try halved down from


@dataclass
class SweepSpec:
    name: str
    points: list[SweepPoint]
    timeout_s: float = 1800.0
    max_batch_search: bool = False
    source: str = ""
    skipped_duplicates: int = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# spec


def _as_overrides(value: Any, where: str) -> list[str]:
    """{a.b: v} or ["a.b=v"] -> ["a.b=<yaml v>"] with ${ENV} expanded in strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [os.path.expandvars(v) for v in value]
    raise UserError(f"{where}: overrides must be a mapping of section.key: value")


def _yaml_value(v: Any) -> str:
    if isinstance(v, str):
        v = os.path.expandvars(v)
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def load_spec(
    path: str | os.PathLike, out_dir: str | os.PathLike | None = None, overrides: Iterable[str] = ()
) -> SweepSpec:
    """Parse and expand a sweep YAML into concrete points (configs resolved and type-checked).

    overrides: `section.key=value` applied to every point, after the spec's own (e.g. the demo's --quick).
    A config file named in the spec is found relative to the working directory, else to the spec's
    folder, else to the repository root (so a shipped spec runs from anywhere)."""
    from cityseg_fast.results import SCENARIOS, point_for

    p = Path(path)
    raw = load_yaml(p)
    if not isinstance(raw, dict):
        raise UserError(f"{p}: a sweep spec must be a mapping (name:, config:, runs:)")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise UserError(f"{p}: unknown sweep key(s) {sorted(unknown)}; valid: {sorted(SPEC_KEYS)}")
    runs = raw.get("runs")
    if runs is None:
        runs = [{k: raw[k] for k in ("scenarios", "grid") if k in raw}]
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{p}: 'runs' must be a non-empty list of {{scenarios, grid, overrides}} blocks")
    base_files = [_config_path(f, p) for f in _as_list(raw.get("config") or [])]
    base_over = _as_overrides(raw.get("overrides"), f"{p}: overrides")
    extra = list(overrides)
    spec = SweepSpec(
        name=str(raw.get("name") or p.stem),
        points=[],
        timeout_s=float(raw.get("timeout_s", 1800)),
        max_batch_search=bool(raw.get("max_batch_search", False)),
        source=str(p),
    )
    seen: set[str] = set()
    for i, run in enumerate(runs):
        where = f"{p}: runs[{i}]"
        if not isinstance(run, dict) or set(run) - RUN_KEYS:
            raise UserError(f"{where}: expected keys {sorted(RUN_KEYS)}, got {run!r:.200}")
        scenarios = _as_list(run.get("scenarios") or [])
        bad = [s for s in scenarios if s not in SCENARIOS]
        if not scenarios or bad:
            raise UserError(f"{where}: scenarios must be a list from {list(SCENARIOS)}, got {scenarios}")
        grid = run.get("grid") or {}
        if not isinstance(grid, dict):
            raise UserError(f"{where}: grid must be a mapping of section.key: [values]")
        files = base_files + [_config_path(f, p) for f in _as_list(run.get("config") or [])]
        over = base_over + _as_overrides(run.get("overrides"), f"{where}.overrides")
        axes = [(k, _as_list(v)) for k, v in grid.items()]
        for combo in itertools.product(*[vals for _, vals in axes]):
            values = dict(zip([k for k, _ in axes], combo, strict=True))
            world = _world_size(values.pop("world_size", 1), where)
            point_over = [f"{k}={_yaml_value(v)}" for k, v in values.items()]
            try:
                cfg = load_config(files, over + point_over + extra)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            for scenario in scenarios:
                point = point_for(scenario, cfg, world)
                key = _key(scenario, point)
                if key in seen:
                    spec.skipped_duplicates += 1
                    continue
                seen.add(key)
                label = " ".join(f"{k}={_short(v)}" for k, v in values.items())
                spec.points.append(SweepPoint(scenario, point, cfg, world, label + f" ws={world}"))
    order = list(SCENARIOS)  # the table's order: loader and model points before the e2e they explain
    spec.points.sort(key=lambda sp: (order.index(sp.scenario), sp.world_size))
    if out_dir is not None:
        _place_accuracy_runs(spec, Path(out_dir))
    return spec


def _config_path(name: Any, spec: Path) -> str:
    """A config file of a spec: as given, else beside the spec, else under the repository root."""
    text = os.path.expandvars(str(name))
    for cand in (Path(text), spec.parent / text, Path(PACKAGE_ROOT) / text):
        if cand.is_file():
            return str(cand)
    return text  # load_config names it as not found


def _world_size(v: Any, where: str) -> int:
    text = os.path.expandvars(str(v))
    if not text.isdigit() or int(text) < 1:
        raise UserError(
            f"{where}: world_size {v!r} is not a positive integer (is its environment variable set?)"
        )
    return int(text)


def _short(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, list) else str(v)


def _key(scenario: str, point: dict[str, Any]) -> str:
    return json.dumps({"scenario": scenario, **point}, sort_keys=True, default=str)


def _place_accuracy_runs(spec: SweepSpec, out: Path) -> None:
    """Each accuracy point trains into its own out_dir under the sweep folder (not the default runs/)."""
    from cityseg_fast.config import replace
    from cityseg_fast.results import point_id

    for sp in spec.points:
        if sp.scenario == "accuracy":
            run_dir = out / "runs" / f"accuracy-{point_id(sp.scenario, sp.point)}"
            sp.cfg = replace(sp.cfg, train={"out_dir": str(run_dir)})


# ---------------------------------------------------------------------------------------------
# running one point


def point_command(sp: SweepPoint, cfg_path: Path, row_path: Path) -> list[str]:
    """The child's command line: `cityseg bench SCENARIO --config POINT.yaml`, writing its row to row_path."""
    bench = ["-m", "cityseg_fast", "bench", sp.scenario, "--config", str(cfg_path), "--json", "--append", str(row_path)]
    if sp.world_size > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={sp.world_size}",
            *bench,
        ]
    return [sys.executable, *bench]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the sweep dies, so a killed sweep leaves no point running (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


def run_point(sp: SweepPoint, work: Path, timeout_s: float) -> dict[str, Any]:
    """Run one point in a fresh subprocess; always returns a schema row (ok, oom or error)."""
    from cityseg_fast.results import point_id, read_rows, row_for

    pid = point_id(sp.scenario, sp.point)
    cfg_path = work / f"{sp.scenario}-{pid}.yaml"
    row_path = work / f"{sp.scenario}-{pid}.jsonl"
    dump_config(sp.cfg, cfg_path)
    row_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        point_command(sp, cfg_path, row_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
        preexec_fn=_die_with_parent,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.terminate()  # torchrun forwards SIGTERM to its workers
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    except BaseException:  # Ctrl-C: stop the child too, then let the sweep stop
        proc.terminate()
        proc.wait(timeout=15)
        raise
    wall = time.perf_counter() - t0
    rows = list(read_rows(row_path))
    if rows and not timed_out:
        row = rows[-1]  # the child built it with row_for: the same point as sp.point
    else:
        if timed_out:
            msg = f"timeout: point ran longer than {timeout_s:.0f} s"
        elif proc.returncode and proc.returncode < 0:
            msg = f"killed by signal {-proc.returncode} ({signal.Signals(-proc.returncode).name})"
            msg += "; " + _last_line(err) if _last_line(err) else ""
        else:
            msg = _last_line(err) or f"exit code {proc.returncode} and no result row"
        row = row_for(sp.scenario, sp.cfg, error=msg, world_size=sp.world_size)
    row["metrics"]["point_wall_s"] = wall
    if sp.search_from is not None:
        row["metrics"]["max_batch_search_from"] = sp.search_from
    if row["status"] != "ok":
        (work / f"{sp.scenario}-{pid}.stderr.txt").write_text((err or "")[-20000:])
    return row


# ---------------------------------------------------------------------------------------------
# the sweep


@dataclass
class Progress:
    total: int
    rows: list[tuple[str, str, str, str, str]] = field(
        default_factory=list
    )  # scenario, label, status, ips, s
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "oom": 0, "error": 0, "skipped": 0})

    def table(self, title: str) -> Any:
        from rich.table import Table

        t = Table(
            title=f"{title}: {sum(self.counts.values())}/{self.total}  "
            + "  ".join(f"{k} {v}" for k, v in self.counts.items())
        )
        for col in ("scenario", "point", "status", "images/s", "s"):
            t.add_column(col, justify="right" if col in ("images/s", "s") else "left")
        for r in self.rows[-30:]:
            color = {"ok": "green", "oom": "yellow", "error": "red", "skipped": "dim", "running": "cyan"}[
                r[2]
            ]
            t.add_row(r[0], r[1], f"[{color}]{r[2]}[/{color}]", r[3], r[4])
        return t


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    *,
    retry_oom: bool = False,
    live: bool = True,
    time_budget_s: float | None = None,
) -> dict[str, int]:
    """Run every point not already done; returns counts {ok, oom, error, skipped, not_started}.

    time_budget_s: start no new point once this much wall time has passed (the point in flight
    finishes, bounded by the spec's timeout_s); the rest is left for a rerun, which resumes."""
    from rich.console import Console
    from rich.live import Live

    from cityseg_fast.results import append_row, point_id, read_rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    work = out / "points"
    work.mkdir(exist_ok=True)
    done_status = ("ok", "oom") if not retry_oom else ("ok",)
    prog = Progress(total=len(spec.points))
    console = Console(stderr=True)
    queue = list(spec.points)
    t0 = time.perf_counter()
    with Live(
        prog.table(spec.name), console=console, refresh_per_second=2, transient=False, auto_refresh=live
    ) as view:
        while queue:
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                prog.counts["not_started"] = len(queue)
                break
            sp = queue.pop(0)
            done = {r["point_id"] for r in read_rows(results) if r["status"] in done_status}
            if point_id(sp.scenario, sp.point) in done:
                prog.counts["skipped"] += 1
                prog.rows.append((sp.scenario, sp.label, "skipped", "", ""))
                view.update(prog.table(spec.name))
                continue
            prog.rows.append((sp.scenario, sp.label, "running", "", ""))
            view.update(prog.table(spec.name))
            row = run_point(sp, work, spec.timeout_s)
            append_row(results, row)
            ips = row["metrics"].get("images_per_s")
            prog.rows[-1] = (
                sp.scenario,
                sp.label,
                row["status"],
                f"{ips:.1f}" if isinstance(ips, float) else "",
                f"{row['metrics']['point_wall_s']:.0f}",
            )
            prog.counts[row["status"]] += 1
            view.update(prog.table(spec.name))
            if row["status"] == "oom" and spec.max_batch_search:
                nxt = _halved(sp)
                if nxt is not None:
                    prog.total += 1
                    queue.insert(0, nxt)
    return prog.counts


def _halved(sp: SweepPoint) -> SweepPoint | None:
    """The same point at half the batch size (max-batch search), or None below batch 1."""
    from cityseg_fast.config import replace
    from cityseg_fast.results import point_for

    bs = sp.cfg.loader.batch_size // 2
    if bs < 1:
        return None
    cfg = replace(sp.cfg, loader={"batch_size": bs})
    point = point_for(sp.scenario, cfg, sp.world_size)
    return SweepPoint(
        sp.scenario,
        point,
        cfg,
        sp.world_size,
        sp.label + f" (search bs={bs})",
        search_from=sp.search_from or sp.cfg.loader.batch_size,
    )


def default_out_dir(spec: SweepSpec) -> Path:
    return Path("runs") / "sweeps" / spec.name
