#!/usr/bin/env bash
# Start a real single-node SLURM (munge + slurmctld + slurmd) on this machine, for tests/test_slurm.py
# (.ci/run starts it before `make test` and stops it after). Needs root and the system packages slurm-wlm
# and munge (installed here if missing). Idempotent: does nothing when `sinfo` already answers.
# Stop with: slurm-single-node.sh stop (kills the daemons by the PIDs in their pid files).
# Partition: debug (default), one node with this machine's CPUs and 3/4 of its memory; no accounting.
# The daemons talk over 127.0.0.1 whatever the host name resolves to.
set -euo pipefail
if [ "${1:-}" = stop ]; then
  for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  exit 0
fi
if command -v sinfo >/dev/null && timeout 5 sinfo -h >/dev/null 2>&1; then sinfo; exit 0; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq slurm-wlm munge >/dev/null
fi
host=$(hostname -s); cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 3 / 4 / 1024 ))
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
[ -f /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge; chmod 400 /etc/munge/munge.key; chmod 711 /run/munge
runuser -u munge -- /usr/sbin/munged --force
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
/usr/sbin/slurmctld; /usr/sbin/slurmd
for _ in $(seq 30); do sinfo -h 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo
