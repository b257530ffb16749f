#!/usr/bin/env bash
# Submit a sweep as a job array of N shards and, after it, the report of all of them:
#
#   scripts/slurm/sweep.sh SPEC OUT N [cityseg sweep options]
#   scripts/slurm/sweep.sh configs/sweeps/gpu_full.yaml runs/gpu_full 4
set -eu
SPEC=${1:?usage: sweep.sh SPEC OUT N [cityseg sweep options]}
OUT=${2:?usage: sweep.sh SPEC OUT N [cityseg sweep options]}
N=${3:?usage: sweep.sh SPEC OUT N [cityseg sweep options]}
shift 3
here=$(dirname "$0")
array=$(sbatch --parsable --array=0-$((N - 1)) "$here/sweep.sbatch" "$SPEC" "$OUT" "$@")
report=$(sbatch --parsable --dependency=afterany:"${array%%;*}" "$here/report.sbatch" "$OUT")
echo "sweep: job array $array ($N shards) -> $OUT/shard-*; report: job $report -> $OUT/report/REPORT.md"
