#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for a local trial of `kdtemp sweep --launcher slurm`
# (and for kdtemp's Slurm tests). Needs Debian's slurm-wlm and munge, and root.
#
#   scripts/slurm-local.sh start [DIR]   # write DIR/slurm.conf, start munged, slurmctld, slurmd
#   scripts/slurm-local.sh stop [DIR]    # stop them (by pid)
#   export SLURM_CONF=DIR/slurm.conf     # so sbatch, squeue, scancel and submitit find the cluster
#
# DIR defaults to /tmp/kdtemp-slurm. Nothing outside DIR is written; the cluster listens on loopback.
# scancel takes effect after KillWait=2 s here (submitit lets jobs ride out the first SIGTERM).
set -euo pipefail
action=${1:-}
dir=${2:-/tmp/kdtemp-slurm}

stop() {
  for pidfile in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    if [ -f "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
    fi
  done
}

case "$action" in
  start)
    for tool in munged slurmctld slurmd sinfo; do
      command -v "$tool" >/dev/null || { echo "error: $tool not found; install it with: apt-get install slurm-wlm munge" >&2; exit 1; }
    done
    stop
    mkdir -p "$dir"/state "$dir"/spool "$dir"/munge
    chmod 700 "$dir"/munge
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    [ -f "$dir"/munge/munge.key ] || head -c 1024 /dev/urandom > "$dir"/munge/munge.key
    chmod 400 "$dir"/munge/munge.key
    munged --force --key-file="$dir"/munge/munge.key --socket="$dir"/munge/socket \
      --pid-file="$dir"/munged.pid --log-file="$dir"/munged.log --seed-file="$dir"/munge/seed
    cat > "$dir"/slurm.conf <<CONF
ClusterName=kdtemp-local
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
KillWait=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$dir"/slurm.conf
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 1 60); do
      if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "Slurm is up: export SLURM_CONF=$SLURM_CONF"
        exit 0
      fi
      sleep 0.5
    done
    echo "error: Slurm did not come up (is another slurmctld using ports 6817/6818?); see $dir/slurmctld.log and $dir/slurmd.log" >&2
    stop
    exit 1
    ;;
  stop)
    stop
    echo "stopped the Slurm cluster in $dir"
    ;;
  *)
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
    ;;
esac
