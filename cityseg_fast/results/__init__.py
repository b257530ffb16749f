"""Results: the row every benchmark writes and every report reads, below both bench/ and report/.

    row = row_for("model", cfg, metrics)        # a checked, read-only Row; error=exc: failures are rows too (record.py)
    rows = rows_for("accuracy", cfg, metrics)   # that row, then one per bench.eval_scales scale (record.py)
    row.metrics[IMAGES_PER_S], row.number(MIOU) # metric names: constants of the scenario table (scenarios.py)
    append_row("results.jsonl", row)            # atomic (store.py); Row.to_json() / Row.from_json() (schema.py)
    rows = merge(read_rows("results.jsonl"))    # latest per point, each with row.derived (derive.py)
    SCENARIOS["e2e"].title                      # the scenario table (scenarios.py)
    results_files("runs/x")                     # results.jsonl and its shards' files (files.py)
"""

from cityseg_fast.results.derive import e2e_limit, latest_per_point, merge, split_unresolved
from cityseg_fast.results.files import RESULTS_FILE, missing_shards, results_files, shard_file, shard_of
from cityseg_fast.results.record import classify, clean, is_oom, one_line, row_for, rows_for
from cityseg_fast.results.scenarios import SCENARIOS, Scenario, companions_for, point_for, scenario
from cityseg_fast.results.schema import (
    MAX_BATCH_SEARCH_FROM,
    POINT_WALL_S,
    SCHEMA_VERSION,
    SWEEP_KEYS,
    Row,
    point_id,
    unresolved,
    validate_row,
    variables_in,
)
from cityseg_fast.results.store import append_row, read_rows, scan_rows

__all__ = [
    "MAX_BATCH_SEARCH_FROM",
    "POINT_WALL_S",
    "RESULTS_FILE",
    "SCENARIOS",
    "SCHEMA_VERSION",
    "SWEEP_KEYS",
    "Row",
    "Scenario",
    "append_row",
    "classify",
    "clean",
    "companions_for",
    "e2e_limit",
    "is_oom",
    "latest_per_point",
    "merge",
    "missing_shards",
    "one_line",
    "point_for",
    "point_id",
    "read_rows",
    "results_files",
    "row_for",
    "rows_for",
    "scan_rows",
    "scenario",
    "shard_file",
    "shard_of",
    "split_unresolved",
    "unresolved",
    "validate_row",
    "variables_in",
]
