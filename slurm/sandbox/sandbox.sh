#!/usr/bin/env bash
# A one-node SLURM with accounting on this machine, from Debian's packages, to try and test the
# cluster path (`make slurm-up`, `make slurm-down`, tests marked `slurm`):
#
#   slurm/sandbox/sandbox.sh up       install what is missing, start what is not running
#   slurm/sandbox/sandbox.sh down     stop what `up` started, remove its state and its config files
#   slurm/sandbox/sandbox.sh status   one line per daemon
#
# Its own munged (a key generated here, a private socket), its own MariaDB (a private data directory on
# 127.0.0.1:$SLURM_SANDBOX_DB_PORT) holding the accounting database, slurmdbd, slurmctld and slurmd:
# one node with this machine's cores and memory (`slurmd -C`), a partition and an account both named
# `sandbox`. Daemons run as root (SlurmUser=root), so jobs submitted as root run. Their state, logs and
# pid files live under $SLURM_SANDBOX_DIR; the only files outside it are /etc/slurm/slurm.conf and
# /etc/slurm/slurmdbd.conf (where SLURM's commands look), written with a marker line and never over a
# file without it. Needs root, and apt-get where the packages are missing; no systemd.
set -euo pipefail

STATE=${SLURM_SANDBOX_DIR:-/var/lib/slurm-sandbox}
DB_PORT=${SLURM_SANDBOX_DB_PORT:-6820}
CONF_DIR=/etc/slurm
MARKER="# slurm-sandbox: written by slurm/sandbox/sandbox.sh (make slurm-up); make slurm-down removes it"
NAME=sandbox  # the cluster, its partition and its account
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # in start order; stopped in reverse

say() { echo "[slurm-sandbox] $*"; }
die() { echo "[slurm-sandbox] cannot start: $*" >&2; exit 1; }

# MariaDB runs as the mysql user: its socket, pid file and log are in a folder of its own.
pid_file() { if [[ $1 == mariadbd ]]; then echo "$STATE/db/mariadbd.pid"; else echo "$STATE/run/$1.pid"; fi; }

# Whether the daemon that `up` started is alive: its pid file names a live process of that program
# (a pid reused by another program after a reboot does not count).
alive() {
    local file pid
    file=$(pid_file "$1")
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] || return 1
    [[ $(<"/proc/$pid/comm") == "$1" ]]
}

# Wait up to $1 seconds for the command that follows to succeed.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

our_file() { [[ ! -e $1 ]] || head -n 1 "$1" | grep -qxF "$MARKER"; }

check_can_start() {
    [[ $(id -u) == 0 ]] || die "it needs root (it installs packages and runs daemons as root); run it as root"
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || die "Debian's ${missing[*]} are missing and there is no apt-get to install them"
        install_packages "${missing[@]}"
    fi
    for file in "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf"; do
        our_file "$file" || die "$file exists and was not written by the sandbox (this machine has a SLURM of its own)"
    done
}

# Debian starts a package's service at installation unless policy-rc.d says no: the sandbox runs its own
# daemons with their own state, so a policy that refuses every start is put in place for the install
# (only where none exists, and removed after).
install_packages() {
    say "installing ${*} (Debian packages)"
    local policy=/usr/sbin/policy-rc.d placed=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && placed=$policy
    fi
    local status=0
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"/tmp/slurm-sandbox-apt.log" 2>&1 \
        || { apt-get update -q >>"/tmp/slurm-sandbox-apt.log" 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
                >>"/tmp/slurm-sandbox-apt.log" 2>&1; }; } || status=$?
    [[ -z $placed ]] || rm -f "$placed"
    ((status == 0)) || die "apt-get install $* failed (log: /tmp/slurm-sandbox-apt.log)"
}

write_config() {
    mkdir -p "$STATE"/{run,log,munge,ctld,spool}
    chmod 700 "$STATE/munge"
    [[ -s $STATE/munge/munge.key ]] || mungekey --create --keyfile="$STATE/munge/munge.key" --force
    chmod 400 "$STATE/munge/munge.key"
    [[ -s $STATE/db-password ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db-password")
    local host node
    host=$(hostname -s)
    # This machine's own boards, sockets, cores, threads and memory, as slurmd sees them.
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "slurmd -C did not describe this machine: $node"
    mkdir -p "$CONF_DIR"
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=$NAME
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$(pid_file slurmctld)
SlurmdPidFile=$(pid_file slurmd)
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (no systemd here): processes are tracked by their parent ids.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# For slurmdbd, "Pass" is the munge socket (SLURM's commands take AuthInfo's for the controller only).
AccountingStoragePass=$STATE/munge/munge.socket
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
${node/NodeName=$host/NodeName=$host NodeAddr=127.0.0.1} State=UNKNOWN
PartitionName=$NAME Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
DbdHost=$host
DbdAddr=127.0.0.1
SlurmUser=root
DebugLevel=info
LogFile=$STATE/log/slurmdbd.log
PidFile=$(pid_file slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$STATE/db-password")
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

sql() { mariadb --no-defaults --socket="$STATE/db/mariadbd.sock" -u root "$@"; }

start_munged() {
    munged --force --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
        --pid-file="$(pid_file munged)" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
    wait_for 20 munge --socket="$STATE/munge/munge.socket" -n || die "munged does not answer (log: $STATE/log/munged.log)"
}

start_mariadbd() {
    mkdir -p "$STATE/db"
    chown mysql:mysql "$STATE/db"
    if [[ ! -d $STATE/db/data/mysql ]]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/db/data" --skip-test-db \
            >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (log: $STATE/log/mariadb-install.log)"
    fi
    # setsid + nohup: the server outlives this script and the terminal it ran from.
    setsid nohup mariadbd --no-defaults --user=mysql --datadir="$STATE/db/data" --socket="$STATE/db/mariadbd.sock" \
        --pid-file="$(pid_file mariadbd)" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$STATE/db/mariadbd.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for 60 sql -e "SELECT 1" || die "MariaDB does not answer (log: $STATE/db/mariadbd.log)"
    wait_for 10 alive mariadbd || die "MariaDB wrote no pid file (log: $STATE/db/mariadbd.log)"
    local password
    password=$(<"$STATE/db-password")
    sql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
    slurmdbd
    wait_for 60 sacctmgr -n show cluster || die "slurmdbd does not answer (log: $STATE/log/slurmdbd.log)"
    # The cluster, the account and root in it (and the user who ran sudo, if any), once.
    sacctmgr -n -P show cluster format=cluster | grep -qx "$NAME" || sacctmgr -i add cluster "$NAME" >/dev/null
    sacctmgr -n -P show account format=account | grep -qx "$NAME" \
        || sacctmgr -i add account "$NAME" Cluster="$NAME" Description="slurm sandbox" Organization="$NAME" >/dev/null
    for user in root ${SUDO_USER:-}; do
        sacctmgr -n -P show association where user="$user" account="$NAME" format=user | grep -q . \
            || sacctmgr -i add user "$user" Account="$NAME" Cluster="$NAME" >/dev/null
    done
}

start_slurmctld() {
    slurmctld -f "$CONF_DIR/slurm.conf"
    wait_for 60 scontrol ping || die "slurmctld does not answer (log: $STATE/log/slurmctld.log)"
}

node_ready() { sinfo -h -p "$NAME" -o %T | grep -qE '^(idle|mixed|allocated)'; }

start_slurmd() {
    slurmd -f "$CONF_DIR/slurm.conf"
    wait_for 60 node_ready || die "the node did not come up: $(sinfo -h -p $NAME -o '%T %E') (log: $STATE/log/slurmd.log)"
}

up() {
    check_can_start
    local started=()
    if [[ ! -f $CONF_DIR/slurm.conf ]] || ! alive slurmctld; then write_config; fi
    for daemon in "${DAEMONS[@]}"; do
        if ! alive "$daemon"; then
            "start_$daemon"
            started+=("$daemon")
        fi
    done
    if ((${#started[@]})); then
        say "started ${started[*]}; partition and account '$NAME' on $(hostname -s) ($(nproc) cores)"
    else
        say "already running (partition and account '$NAME'); make slurm-down stops it"
    fi
    say "try it: python -m slurm run smoke --executor slurm --profile slurm/sandbox/profile.yaml"
}

stop() {
    local daemon=$1 pid
    alive "$daemon" || return 0
    pid=$(<"$(pid_file "$daemon")")
    kill -TERM "$pid"
    for _ in $(seq 60); do
        [[ -d /proc/$pid ]] || return 0
        sleep 0.5
    done
    say "$daemon (pid $pid) did not stop within 30 s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    [[ $(id -u) == 0 ]] || die "it needs root to stop the sandbox's daemons"
    if alive slurmctld; then
        # Jobs of the sandbox end with it: their processes would outlive slurmd.
        scancel --partition="$NAME" 2>/dev/null || true
        wait_for 60 bash -c "[[ -z \$(squeue -h -p $NAME -o %i) ]]" || say "jobs still listed after 60 s"
    fi
    local stopped=()
    for ((index = ${#DAEMONS[@]} - 1; index >= 0; index--)); do
        if alive "${DAEMONS[index]}"; then
            stop "${DAEMONS[index]}"
            stopped+=("${DAEMONS[index]}")
        fi
    done
    for file in "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf"; do
        if [[ -e $file ]] && our_file "$file"; then rm -f "$file"; fi
    done
    rm -rf "$STATE"
    say "stopped ${stopped[*]:-nothing (none was running)}; removed $STATE"
}

status() {
    for daemon in "${DAEMONS[@]}"; do
        if alive "$daemon"; then echo "$daemon running (pid $(<"$(pid_file "$daemon")"))"; else echo "$daemon stopped"; fi
    done
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up | down | status" >&2; exit 2 ;;
esac
