#!/usr/bin/env bash
# Single GPU machine, or one node of a multi-node GPU job.
#
#   launch/gpu.sh configs/rafdb.py:mek runs/rafdb_mek
#
# Multi-node: run this on every node with the same COORDINATOR (host:port of node 0),
# NUM_PROCESSES and each node's PROCESS_ID; every process drives all its local GPUs.
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 launch/gpu.sh CONFIG WORKDIR
# PYTHON picks the interpreter (default: python on PATH, e.g. an activated venv).
set -euo pipefail
CONFIG=${1:?usage: launch/gpu.sh CONFIG WORKDIR [extra flags]}
WORKDIR=${2:?usage: launch/gpu.sh CONFIG WORKDIR [extra flags]}
shift 2
# Let XLA take most of the GPU memory up front and use its faster GPU paths.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
DIST=()
if [[ -n "${COORDINATOR:-}" ]]; then
  DIST=(--coordinator_address "$COORDINATOR" --num_processes "${NUM_PROCESSES:?}"
        --process_id "${PROCESS_ID:?}")
fi
exec "${PYTHON:-python}" -m ferjax.main --config "$CONFIG" --workdir "$WORKDIR" "${DIST[@]}" "$@"
