#!/usr/bin/env bash
# Slurm evaluation with the checkout's .venv python (DEFORM_VIZ_PYTHON for another):
# tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args]
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
tools=$(cd "$(dirname "$0")" && pwd)
source "$tools/_python.sh"

set -x
# SRUN_ARGS unquoted on purpose: several srun options in one variable
PYTHONPATH="$tools/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher=slurm "${@:5}"
