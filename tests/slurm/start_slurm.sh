#!/usr/bin/env bash
# Start a single-node Slurm (munged, slurmctld, slurmd on this host) for tests, as root.
#   source tests/slurm/start_slurm.sh DIR   -> exports SLURM_CONF, defines stop_slurm
# Everything (config, state, spool, logs, pid files) lives under DIR; only the daemons this
# script started are stopped by stop_slurm. Installs slurm-wlm and munge when missing.
# A container has no systemd and no cgroup delegation: proctrack/linuxproc, task/none.

slurm_dir=$(realpath -m "${1:?usage: source start_slurm.sh DIR}")
mkdir -p "$slurm_dir"/{state,spool,run}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge" >&2
    if [ "$(id -u)" != 0 ]; then echo "needs root to install slurm-wlm and munge" >&2; return 1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null || return 1
fi

host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
export SLURM_CONF="$slurm_dir/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=m3ptest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=26817
SlurmdPort=26818
StateSaveLocation=$slurm_dir/state
SlurmdSpoolDir=$slurm_dir/spool
SlurmctldPidFile=$slurm_dir/run/slurmctld.pid
SlurmdPidFile=$slurm_dir/run/slurmd.pid
SlurmctldLogFile=$slurm_dir/slurmctld.log
SlurmdLogFile=$slurm_dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

started_munged=""
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
    munged --force --pid-file="$slurm_dir/run/munged.pid" || return 1
    started_munged=1
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi

slurmctld -f "$SLURM_CONF" || return 1
slurmd -f "$SLURM_CONF" || return 1

stop_slurm() {
    # only the daemons started above, by their pid files
    local pid_file
    for pid_file in "$slurm_dir/run/slurmd.pid" "$slurm_dir/run/slurmctld.pid" \
                    ${started_munged:+"$slurm_dir/run/munged.pid"}; do
        [ -s "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
    done
}

for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "slurm is up: $(sinfo -h -o '%P %D %T %c')" >&2
        return 0
    fi
    sleep 1
done
echo "slurm did not come up; see $slurm_dir/slurmctld.log and slurmd.log" >&2
tail -20 "$slurm_dir/slurmctld.log" "$slurm_dir/slurmd.log" >&2
stop_slurm
return 1
