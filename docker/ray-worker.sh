#!/bin/sh
# Start one Ray worker node of the compose stack, on GPUs no other replica uses.
#
# `docker compose up --scale ray-worker=N` gives every replica the same device request
# (Compose cannot hand replica k its own GPU), so each replica sees all the host's GPUs.
# Here each replica claims RAY_WORKER_GPUS of them in a volume all replicas share
# ($GPU_CLAIMS_DIR), under a lock, and shows Ray only those (CUDA_VISIBLE_DEVICES).
# A claim holds a heartbeat (its file's mtime, touched every 10 s): a replica that is gone
# frees its GPUs after CLAIM_STALE_S; a restarted container (same hostname) keeps its own.
#
# Environment (docker-compose.yml sets these):
#   RAY_HEAD_ADDRESS   GCS address of the head (ray-head:6379)
#   RAY_WORKER_GPUS    GPUs per replica (default 1; 0: a CPU-only worker)
#   RAY_WORKER_CPUS    CPUs this node offers to trials (default: Ray counts them)
#   RAY_WORKER_START_ARGS  more `ray start` options, split on spaces (e.g. on host
#                      networking: --node-ip-address=127.0.0.1 --dashboard-agent-listen-port=0)
#   GPU_CLAIMS_DIR     the shared claims directory (default /claims)
#   GPU_COUNT          GPUs on the host (default: counted with torch)
#   CLAIM_WAIT_S       how long to wait for a free GPU (default 60; stale claims expire)
#   CLAIM_STALE_S      heartbeat age after which a claim is free (default 30)
#   WORKER_NAME        who owns a claim (default: the hostname, i.e. the container)
#   DRY_RUN=1          print the chosen devices and the ray command instead of running it
set -eu

head_address="${RAY_HEAD_ADDRESS:-ray-head:6379}"
want="${RAY_WORKER_GPUS:-1}"
claims="${GPU_CLAIMS_DIR:-/claims}"
wait_s="${CLAIM_WAIT_S:-60}"
stale_s="${CLAIM_STALE_S:-30}"
me="${WORKER_NAME:-$(hostname)}"  # the container's hostname: stable across restarts

say() { echo "ray-worker.sh [$me]: $*" >&2; }

age_s() {  # seconds since the file's last modification
    echo $(( $(date +%s) - $(stat -c %Y "$1") ))
}

lock() {  # mkdir is atomic: one replica at a time edits the claims
    while ! mkdir "$claims/.lock" 2>/dev/null; do
        if [ -d "$claims/.lock" ] && [ "$(age_s "$claims/.lock")" -gt "$stale_s" ]; then
            rmdir "$claims/.lock" 2>/dev/null || true  # left by a replica killed mid-claim
        fi
        sleep 0.2
    done
}

unlock() { rmdir "$claims/.lock"; }

# Claims gpu-<i> that are free, stale, or already ours; prints the claimed indices.
claim() {
    got=""
    n=0
    i=0
    while [ "$i" -lt "$total" ] && [ "$n" -lt "$want" ]; do
        f="$claims/gpu-$i"
        if [ ! -f "$f" ] || [ "$(cat "$f")" = "$me" ] || [ "$(age_s "$f")" -gt "$stale_s" ]; then
            echo "$me" > "$f"
            got="${got:+$got,}$i"
            n=$((n + 1))
        fi
        i=$((i + 1))
    done
    if [ "$n" -lt "$want" ]; then  # not enough: give back what we took this round
        for j in $(echo "$got" | tr ',' ' '); do
            [ "$(cat "$claims/gpu-$j")" = "$me" ] && rm -f "$claims/gpu-$j"
        done
        return 1
    fi
    echo "$got"
}

set -- ray start --address="$head_address" --block --disable-usage-stats
if [ -n "${RAY_WORKER_CPUS:-}" ]; then
    set -- "$@" --num-cpus="$RAY_WORKER_CPUS"
fi
# shellcheck disable=SC2086  # split on purpose: one word per option
set -- "$@" ${RAY_WORKER_START_ARGS:-}

if [ "$want" -eq 0 ]; then
    say "CPU-only worker"
    export CUDA_VISIBLE_DEVICES=""
    set -- "$@" --num-gpus=0
else
    total="${GPU_COUNT:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
    if [ "$total" -lt "$want" ]; then
        say "error: RAY_WORKER_GPUS=$want but this host shows $total GPU(s) to the container;" \
            "set RAY_WORKER_GPUS=0 for a CPU-only worker"
        exit 1
    fi
    mkdir -p "$claims"
    deadline=$(( $(date +%s) + wait_s ))
    while :; do
        lock
        devices="$(claim)" && { unlock; break; }
        unlock
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "error: no $want free GPU(s) of $total after ${wait_s}s: more replicas than" \
                "GPUs? (replicas x RAY_WORKER_GPUS must be <= $total)"
            exit 1
        fi
        sleep 2
    done
    say "claimed GPU(s) $devices of $total"
    export CUDA_VISIBLE_DEVICES="$devices"
    set -- "$@" --num-gpus="$want"
    if [ "${DRY_RUN:-0}" != 1 ]; then
        # Heartbeat: a child that outlives the exec below (it dies with the container).
        (while sleep 10; do
            for j in $(echo "$devices" | tr ',' ' '); do touch "$claims/gpu-$j"; done
        done) &
    fi
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES $*"
    exit 0
fi
exec "$@"
