#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on 127.0.0.1 for the profile test: munge, MariaDB + slurmdbd (so that
# `sacct`, the slurm executor's default status check, works as on a real cluster), slurmctld and slurmd.
# Run as root (CI, a container); every wait is bounded; idempotent (a running cluster is left as it is).
# Stop it with tests/slurm/stop_cluster.sh. Installs the Debian packages when they are missing.
set -euo pipefail

CLUSTER=dpmedgen
ACCOUNT=dpmedgen
NODE_CPUS=$(nproc)
NODE_MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
LOG=/var/log/slurm

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll once a second, fail with the description
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "start_cluster: $what did not come up within ${seconds}s" >&2
    for f in "$LOG"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    return 1
}

if [ "$(id -u)" != 0 ]; then echo "start_cluster: run as root" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 900 apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi
mkdir -p "$LOG" /var/spool/slurmctld /var/spool/slurmd /run/munge /etc/slurm

# munge: one key, daemon as the munge user
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
fi
wait_for 20 munged sh -c 'munge -n | unmunge'

# MariaDB with the accounting database
if ! mysqladmin ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >"$LOG/mariadb.log" 2>&1 &)
fi
wait_for 60 MariaDB mysqladmin ping
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

HOST=$(hostname -s)
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf

# slurm.conf must be at /etc/slurm/slurm.conf: the srun that the executor runs inside each job reads it there
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if ! pgrep -x slurmdbd >/dev/null; then /usr/sbin/slurmdbd; fi
wait_for 60 slurmdbd sacctmgr -n list cluster
sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description=dpmedgen-tests >/dev/null 2>&1 || true
sacctmgr -i -Q add user "$(id -un)" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true

if ! pgrep -x slurmctld >/dev/null; then /usr/sbin/slurmctld; fi
wait_for 60 slurmctld scontrol ping
if ! pgrep -x slurmd >/dev/null; then /usr/sbin/slurmd -N localhost; fi
wait_for 60 "the node" sh -c 'sinfo -h -N -o %T | grep -Eq "^(idle|mixed|allocated)"'
scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
timeout 60 srun -N1 -t 1 true
echo "start_cluster: SLURM cluster '$CLUSTER' is up (node localhost: $NODE_CPUS CPUs, $NODE_MEM_MB MB; account $ACCOUNT)"
