#!/usr/bin/env bash
# Entrypoint of the GPU worker: pin this worker to one GPU that no other worker on the host holds, then
# exec the command (the Celery worker). Docker gives every replica of a service the same devices, so
# `docker compose --profile gpu up --scale gpu-worker=N` on an N-GPU host would otherwise put every
# worker on cuda:0. Each worker takes the first free lock in $KPIGUARD_GPU_LOCK_DIR (a volume shared by
# the workers of one host) and keeps it for its lifetime: the lock's file descriptor stays open across
# exec, and the kernel drops it when the worker exits, so a restart never finds a stale claim.
#
# CUDA_VISIBLE_DEVICES already set: kept as it is. One GPU (or none visible): nothing to pin.
# KPIGUARD_GPUS overrides the count that nvidia-smi reports.
set -euo pipefail

if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
  gpus=${KPIGUARD_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)}
  if [ "${gpus:-0}" -gt 1 ]; then
    locks=${KPIGUARD_GPU_LOCK_DIR:-/opt/airflow/gpu-locks}
    mkdir -p "$locks"
    for ((i = 0; i < gpus; i++)); do
      exec 9>"$locks/gpu$i.lock"
      if flock --nonblock 9; then
        export CUDA_VISIBLE_DEVICES=$i
        break
      fi
      exec 9>&-
    done
    if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
      echo "gpu-pin: all $gpus GPUs of this host are held by other workers; run at most $gpus here" >&2
      exit 1
    fi
    echo "gpu-pin: this worker uses GPU $CUDA_VISIBLE_DEVICES of $gpus"
  fi
fi
exec "$@"
