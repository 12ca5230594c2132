#!/usr/bin/env bash
# Stop what tests/slurm/start_cluster.sh started (jobs first); every wait is bounded.
set -uo pipefail
command -v scancel >/dev/null && timeout 20 scancel --full --user "$(id -un)" 2>/dev/null
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
    pkill -x "$daemon" 2>/dev/null
done
for _ in $(seq 20); do
    pgrep -x 'slurmd|slurmctld|slurmdbd|mariadbd|munged' >/dev/null || exit 0
    sleep 1
done
pkill -9 -x 'slurmd|slurmctld|slurmdbd|mariadbd|munged' 2>/dev/null
exit 0
