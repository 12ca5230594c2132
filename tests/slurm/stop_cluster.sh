#!/usr/bin/env bash
# Stop what tests/slurm/start_cluster.sh started (jobs first); every wait is bounded.
set -uo pipefail
DAEMONS="slurmd slurmctld slurmdbd mariadbd munged"
running() { for d in $DAEMONS; do pgrep -x "$d" >/dev/null && return 0; done; return 1; }
command -v scancel >/dev/null && timeout 20 scancel --full --user "$(id -un)" 2>/dev/null
for d in $DAEMONS; do pkill -x "$d" 2>/dev/null; done
for _ in $(seq 20); do
    running || exit 0
    sleep 1
done
for d in $DAEMONS; do pkill -9 -x "$d" 2>/dev/null; done
exit 0
