#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests (Debian's slurm-wlm and
# munge; run as root).
#
#   scripts/slurm-local.sh install     # apt-get install slurm-wlm munge (if missing)
#   scripts/slurm-local.sh start DIR   # config, keys, state and logs under DIR
#   scripts/slurm-local.sh stop DIR    # stops the daemons started with DIR
#
# After `start`, commands find the cluster with SLURM_CONF=DIR/slurm.conf.
# Daemons are stopped by the pids in DIR's pid files, never by name.
set -euo pipefail
cmd=${1:?usage: slurm-local.sh install|start DIR|stop DIR}

if [ "$cmd" = install ]; then
  if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  exit 0
fi

dir=$(mkdir -p "${2:?DIR missing}" && cd "$2" && pwd)
stop_pid() { # stop_pid FILE: TERM the pid in FILE, wait for it to go
  [ -f "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

case $cmd in
start)
  host=$(hostname -s)
  mkdir -p "$dir"/{munge,run,state,spool,log}
  chown munge:munge "$dir/munge" "$dir/run"
  chmod 700 "$dir/munge"
  chmod 755 "$dir/run"
  if [ ! -f "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
  fi
  # --force: the test folder's parents (/tmp) are world-writable.
  runuser -u munge -- munged --force --key-file="$dir/munge/munge.key" \
    --socket="$dir/run/munge.socket" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
  cat > "$dir/slurm.conf" <<CONF
ClusterName=samlab-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/run/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf"
  for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "slurm: one node idle; SLURM_CONF=$dir/slurm.conf"
      exit 0
    fi
    sleep 0.2
  done
  echo "slurm did not come up; logs in $dir/log" >&2
  exit 1
  ;;
stop)
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/run/munged.pid"
  ;;
*)
  echo "usage: slurm-local.sh install|start DIR|stop DIR" >&2
  exit 2
  ;;
esac
