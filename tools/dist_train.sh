#!/usr/bin/env bash
# Multi-GPU / multi-node training through torch.distributed.run (torchrun) with the checkout's
# .venv python (DEFORM_VIZ_PYTHON for another): tools/dist_train.sh CONFIG GPUS [train.py args]
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
tools=$(cd "$(dirname "$0")" && pwd)
source "$tools/_python.sh"

PYTHONPATH="$tools/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
