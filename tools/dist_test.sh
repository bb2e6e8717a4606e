#!/usr/bin/env bash
# Multi-GPU / multi-node evaluation through torch.distributed.run (torchrun) with the checkout's
# .venv python (DEFORM_VIZ_PYTHON for another): tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args]
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
tools=$(cd "$(dirname "$0")" && pwd)
source "$tools/_python.sh"

PYTHONPATH="$tools/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
