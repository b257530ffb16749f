"""Results: the row every benchmark writes and every report reads, below both bench/ and report/.

    row = row_for("model", cfg, metrics)        # or error=exc: failures are rows too (record.py)
    append_row("results.jsonl", row)            # atomic (rows.py)
    rows = merge(read_rows("results.jsonl"))    # latest per point, derived metrics attached (derive.py)
    SCENARIOS["e2e"].title                      # the scenario table (scenarios.py)
    results_files("runs/x")                     # results.jsonl and its shards' files (files.py)
"""

from cityseg_fast.results.derive import e2e_limit, latest_per_point, merge, split_unresolved
from cityseg_fast.results.files import RESULTS_FILE, missing_shards, results_files, shard_file, shard_of
from cityseg_fast.results.record import classify, clean, is_oom, one_line, row_for
from cityseg_fast.results.rows import (
    SCHEMA_VERSION,
    append_row,
    point_id,
    read_rows,
    scan_rows,
    unresolved,
    validate_row,
    variables_in,
)
from cityseg_fast.results.scenarios import SCENARIOS, Scenario, companions_for, point_for, scenario

__all__ = [
    "RESULTS_FILE",
    "SCENARIOS",
    "SCHEMA_VERSION",
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
    "scan_rows",
    "scenario",
    "shard_file",
    "shard_of",
    "split_unresolved",
    "unresolved",
    "validate_row",
    "variables_in",
]
