#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, everything on loopback (as root, no systemd).
#   .ci/slurm-cluster.sh start DIR   installs slurm-wlm and munge from Debian if missing, writes
#                                    DIR/slurm.conf, starts munged, slurmctld and slurmd, and
#                                    waits until the node is idle; prints `export SLURM_CONF=...`
#   .ci/slurm-cluster.sh stop DIR    stops what `start` started (safe to call twice)
# The daemons' state, spool, pids and logs live under DIR.
set -euo pipefail
action="${1:?usage: $0 start|stop DIR}"
dir="${2:?usage: $0 start|stop DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
export SLURM_CONF="$dir/slurm.conf"

install_packages() {
    "$(dirname "$0")/apt-install.sh" slurm-wlm munge
}

write_config() {
    local host
    host="$(hostname -s)"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$SLURM_CONF" <<EOF
ClusterName=ldmscale-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

start_munge() {
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey -c -k /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    # An already running munged (another cluster, or a rerun) serves us too.
    if ! munge -n >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
        pgrep -n -u munge -x munged >"$dir/munged.pid"
    fi
}

start() {
    # Only the export line goes to stdout (the caller evals it): apt's and the daemons' chatter
    # goes to stderr.
    {
        install_packages
        write_config
        start_munge
        slurmctld -i
        slurmd
    } >&2
    for _ in $(seq 60); do
        if [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = idle ]; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm-cluster: the node did not become idle; logs in $dir/log" >&2
    sinfo >&2 || true
    return 1
}

stop() {
    [ -f "$SLURM_CONF" ] && scontrol shutdown >/dev/null 2>&1 || true
    sleep 1
    # Whatever is still running, by the pid it recorded (checked by name: pids are reused).
    for name in slurmd slurmctld munged; do
        local pidfile="$dir/$name.pid" pid
        [ -s "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
            kill "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

case "$action" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
