#!/usr/bin/env bash
# slurm_harness.sh -- a real single-node SLURM on this machine, for testing
# `snakemake --profile slurm` end to end (tests/test_slurm_real.py).
#
#   tools/slurm_harness.sh up      install (apt) what is missing, configure, start the
#                                  daemons that are not running, wait for the node
#   tools/slurm_harness.sh down    stop the daemons this script started (by PID)
#   tools/slurm_harness.sh status  which daemons run, and which of them we started
#
# Needs root and Debian 12's packages (slurm-wlm 22.05, munge, MariaDB, slurmdbd).
# No systemd: the daemons are started directly. The cluster:
#  * one node, all CPUs, ~85% of the memory; select/cons_tres with CR_CPU_Memory, so
#    --cpus-per-task/--mem are scheduling limits; proctrack/linuxproc + task/none
#    (no cgroups needed);
#  * accounting in slurmdbd on MariaDB, with an account $ACCOUNT for root, as a real
#    cluster has: the plugin validates -A with sacctmgr, and the test reads job states
#    from sacct;
#  * MinJobAge=300 (SLURM's default) keeps finished jobs in squeue for 5 minutes, which
#    the profile's status command (squeue) needs; KillWait=5 so a cancelled or
#    timed-out job gets its SIGKILL 5 s after the SIGTERM (the trainer checkpoints
#    at the end of a step, well within that).
# Exit status of `up`: 0 ready, 3 cannot install/start (the tests skip on that).
set -euo pipefail

PARTITION=${PARTITION:-debug}
ACCOUNT=${ACCOUNT:-tarpo-test}
CLUSTER=tarpo
STATE=/run/tarpo-slurm                   # PIDs of the daemons we started
NODE=$(hostname -s)
DB_PASS=tarpo-slurm                      # local-only MariaDB user for slurmdbd
ORDER=(munged mariadbd slurmdbd slurmctld slurmd)
MARK="# written by tarpo tools/slurm_harness.sh"

log() { echo "[slurm_harness] $*" >&2; }
fail() { echo "[slurm_harness] cannot start SLURM: $*" >&2; exit 3; }

wait_for() {  # wait_for SECONDS WHAT CMD...
    local t=$1 what=$2; shift 2
    for ((i = 0; i < t; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    fail "timed out after ${t}s waiting for $what"
}

install() {
    local bin missing=0
    for bin in slurmctld slurmd slurmdbd munged mariadbd sbatch sacct; do
        command -v "$bin" >/dev/null || [[ -x /usr/sbin/$bin ]] || missing=1
    done
    ((missing)) || return 0
    log "installing slurm-wlm, munge, MariaDB"
    local pkgs=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; } \
        || fail "apt-get install ${pkgs[*]} failed"
}

configure() {
    local cpus mem_mb
    cpus=$(getconf _NPROCESSORS_ONLN)   # not nproc: it honours OMP_NUM_THREADS
    # below the physical memory, so that slurmd never finds less than configured
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
    for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
        [[ ! -e $f ]] || grep -qF "$MARK" "$f" || fail "$f exists and is not ours: a real SLURM is configured here"
    done
    mkdir -p /etc/slurm /var/log/slurm /var/lib/slurm/ctld /var/lib/slurm/d /run/slurm /run/munge /run/mysqld "$STATE"
    chown -R slurm:slurm /var/log/slurm /var/lib/slurm /run/slurm
    chown munge:munge /run/munge
    chown mysql:mysql /run/mysqld
    [[ -s /etc/munge/munge.key ]] || {
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    }
    local conf
    conf=$(cat <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/ctld
SlurmdSpoolDir=/var/lib/slurm/d
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
MinJobAge=300
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
    # rewritten only when it changes: running daemons of ours then restart (see up)
    if [[ ! -f /etc/slurm/slurm.conf || $(</etc/slurm/slurm.conf) != "$conf" ]]; then
        printf '%s\n' "$conf" > /etc/slurm/slurm.conf
        CONF_CHANGED=1
    fi
    cat > /etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
    chown slurm:slurm /etc/slurm/slurmdbd.conf
    chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a readable one
}

pidfile() {
    case $1 in
        munged) echo /run/munge/munged.pid ;;
        mariadbd) echo /run/mysqld/mysqld.pid ;;
        *) echo "/run/slurm/$1.pid" ;;
    esac
}

running_pid() {  # PID of daemon $1, from its pidfile or by exact process name
    local f pid=""
    f=$(pidfile "$1")
    [[ -s $f ]] && pid=$(<"$f")
    [[ -n $pid && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$1" ]] || pid=$(pgrep -x "$1" | head -1 || true)
    [[ -n $pid ]] && echo "$pid"
}

launch() {
    case $1 in
        munged) runuser -u munge -- /usr/sbin/munged ;;
        mariadbd)
            [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
            setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
                --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
                >>/var/log/slurm/mariadbd.log 2>&1 </dev/null & ;;
        *) "/usr/sbin/$1" ;;   # the SLURM daemons fork into the background themselves
    esac
    wait_for 30 "$1 to start (see /var/log/slurm/)" running_pid "$1"
    running_pid "$1" > "$STATE/$1.pid"
    log "started $1 (pid $(<"$STATE/$1.pid"))"
}

after_start() {  # what each daemon needs before the next one starts
    case $1 in
        munged) wait_for 10 munge sh -c 'munge -n | unmunge' ;;
        mariadbd)
            wait_for 60 MariaDB mariadb-admin ping
            mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" ;;
        slurmdbd)
            wait_for 60 slurmdbd sacctmgr -n list cluster
            # the cluster, and an account for root, before slurmctld first connects
            sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
            sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" || sacctmgr -i add account "$ACCOUNT" >/dev/null
            sacctmgr -n -P list user root format=defaultaccount | grep -qx "$ACCOUNT" \
                || sacctmgr -i add user root account="$ACCOUNT" defaultaccount="$ACCOUNT" >/dev/null ;;
        slurmctld) wait_for 30 slurmctld scontrol ping ;;
        slurmd) ;;
    esac
}

up() {
    [[ $(id -u) -eq 0 ]] || fail "needs root (installs packages, starts daemons)"
    install
    CONF_CHANGED=0
    configure
    local name pid
    for name in "${ORDER[@]}"; do
        # slurmctld/slurmd of ours from an earlier `up` restart to read a changed slurm.conf
        if ((CONF_CHANGED)) && [[ $name == slurmctld || $name == slurmd ]]; then stop_ours "$name"; fi
        if pid=$(running_pid "$name"); then
            log "$name already running (pid $pid)"
        else
            launch "$name"
        fi
        after_start "$name"
    done
    # ReturnToService=2 brings a node that was DOWN at our last stop back
    wait_for 60 "node $NODE to be up" sh -c "sinfo -h -n $NODE -o %t | grep -Eq '^(idle|mix|alloc)'"
    log "ready: partition $PARTITION, account $ACCOUNT ($(sinfo --version))"
}

stop_ours() {  # stop daemon $1 if this script started it
    local pid
    [[ -s $STATE/$1.pid ]] || return 0
    pid=$(<"$STATE/$1.pid")
    if [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$1" ]]; then
        log "stopping $1 (pid $pid)"
        kill "$pid"
        for ((i = 0; i < 30; i++)); do [[ -e /proc/$pid ]] || break; sleep 1; done
        [[ ! -e /proc/$pid ]] || kill -9 "$pid"
    fi
    rm -f "$STATE/$1.pid"
}

down() {
    local k
    for ((k = ${#ORDER[@]} - 1; k >= 0; k--)); do stop_ours "${ORDER[k]}"; done
}

status() {
    local name pid by
    for name in "${ORDER[@]}"; do
        if pid=$(running_pid "$name"); then
            [[ -s $STATE/$name.pid && $(<"$STATE/$name.pid") == "$pid" ]] && by=" (started by this script)" || by=""
            echo "$name: running, pid $pid$by"
        else
            echo "$name: stopped"
        fi
    done
}

case ${1:-} in
    up | down | status) "$1" ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
