#!/usr/bin/env bash
# Train on every GPU of this machine: one process sees them all, and the global batch
# (config.input.p x config.input.k) is split over them. Stop with Ctrl-C (saves, exit 130);
# run the same command again to resume.
#
#   launch/local.sh configs/market.py runs/market [--config.key=value ...]
#   CUDA_VISIBLE_DEVICES=0,1 launch/local.sh configs/market.py runs/market   # a subset
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
# JAX preallocates 75% of each GPU by default; the trainer needs no more than that, and other
# processes on the node (data workers) then cannot fragment it.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-true}
exec python -m dualattn.train --config "$config" --workdir "$workdir" "$@"
