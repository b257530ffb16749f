#!/usr/bin/env bash
# One node's part of a multi-node job: torchrun with the c10d rendezvous taken from the SLURM_* variables.
#
#   srun scripts/slurm/torchrun_node.sh train --config CONFIG --data DATA --out OUT     (train.sbatch runs this)
#
# srun starts it once per node. Every node's torchrun joins the rendezvous on the job's first host, port
# 20000 + job id mod 20000 (MASTER_ADDR / MASTER_PORT override both), with the job id as its name, and starts
# NPROC_PER_NODE processes (default: the GPUs Slurm gave this node, SLURM_GPUS_ON_NODE), each running
# `python -m cityseg_fast ARGS`.
#
# A stop signal (SIGUSR1 from `sbatch --signal`, SIGTERM at the time limit or on preemption) reaches this
# script and torchrun (same process group; under proctrack/cgroup every process of the step). torchrun must
# handle SIGUSR1 too, or it dies of it and leaves its workers running (they are in sessions of their own):
# it then passes the signal on to its workers and waits for them up to its shutdown timeout, CITYSEG_STOP_GRACE_S
# (default 80 s: within the 90 s of train.sbatch's --signal). torchrun reads both settings from PET_* variables
# (its --signals-to-handle and --shutdown-timeout), older versions from TORCHELASTIC_SIGNALS_TO_HANDLE and
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT: all four are set. The workers save at their next log interval and exit
# EXIT_PREEMPTED, but torchrun exits 1 for any worker's non-zero status: this script saw the signal, so it
# exits EXIT_PREEMPTED (read from cityseg_fast.errors) for a non-zero exit after one, and the batch script
# requeues on it.
set -u

PYTHON=${PYTHON:-python}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:?torchrun_node.sh: not in a Slurm job (SLURM_JOB_NUM_NODES is unset)}}
NPROC=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
JOB=${SLURM_JOB_ID:-0}
RDZV_HOST=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
RDZV_PORT=${MASTER_PORT:-$((20000 + JOB % 20000))}
EXIT_PREEMPTED=$("$PYTHON" -c 'from cityseg_fast.errors import EXIT_PREEMPTED; print(EXIT_PREEMPTED)') || exit 2

SIGNALS=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
export PET_SIGNALS_TO_HANDLE=$SIGNALS TORCHELASTIC_SIGNALS_TO_HANDLE=$SIGNALS
export PET_SHUTDOWN_TIMEOUT=${CITYSEG_STOP_GRACE_S:-80} TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${CITYSEG_STOP_GRACE_S:-80}

stopped=""
trap 'stopped=USR1' USR1
trap 'stopped=TERM' TERM

echo "node ${SLURM_NODEID:-?} of $NNODES: torchrun, $NPROC processes, rendezvous $RDZV_HOST:$RDZV_PORT (job $JOB)" >&2
"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC" \
    --rdzv_backend=c10d --rdzv_endpoint="$RDZV_HOST:$RDZV_PORT" --rdzv_id="$JOB" \
    -m cityseg_fast "$@" &
agent=$!
wait "$agent"
status=$?
while [ "$status" -gt 128 ] && kill -0 "$agent" 2>/dev/null; do  # the wait was cut short by a trapped signal
    wait "$agent"
    status=$?
done
if [ -n "$stopped" ] && [ "$status" -ne 0 ]; then
    echo "node ${SLURM_NODEID:-?}: stopped by SIG$stopped (torchrun exit $status): exit $EXIT_PREEMPTED, EXIT_PREEMPTED" >&2
    exit "$EXIT_PREEMPTED"
fi
exit "$status"
