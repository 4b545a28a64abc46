#!/usr/bin/env bash
# RabbitMQ 4.0 for the tests, without Docker: Debian trixie's rabbitmq-server in a chroot.
#
#   rabbitmq4.sh build       build the root file system once per machine (needs root, debootstrap)
#   rabbitmq4.sh start       start a fresh node in it; print its AMQP URL once it answers AMQP
#   rabbitmq4.sh ctl ARGS    rabbitmqctl against that node (for WARDEN_TEST_RABBITMQCTL)
#   rabbitmq4.sh stop        stop the node and its epmd, unmount /proc; nothing is left running
#
# The node listens on 127.0.0.1 only, on ports of its own (AMQP 5682, distribution 25682, epmd
# 4382), so it runs beside a RabbitMQ on the usual ports. Every start begins with an empty
# database: no queue, vhost or user survives from an earlier run.
#
# The node stamps every message it receives with its arrival time (the message interceptor
# message_interceptors.incoming.set_header_timestamp.overwrite = true), as warden's queueing
# allowance requires. WARDEN_RABBITMQ4_NODE=keep selects a second node in the same root, on AMQP
# 5683 (distribution 25683, epmd 4383), configured with overwrite = false: a broker that keeps a
# publisher's stamp, which a worker with an allowance must refuse. Each node starts and stops on
# its own.
set -Eeuo pipefail

root="${WARDEN_RABBITMQ4_ROOT:-/var/cache/warden/rabbitmq4-trixie}"
mirror="${WARDEN_RABBITMQ4_MIRROR:-http://deb.debian.org/debian}"
suite=trixie
stamp=.warden-rabbitmq4-built

case "${WARDEN_RABBITMQ4_NODE:-}" in
  "")
    amqp_port=5682
    node=warden4@localhost
    overwrite=true
    ;;
  keep)
    amqp_port=5683
    node=warden4keep@localhost
    overwrite=false
    ;;
  *)
    echo "rabbitmq4.sh: WARDEN_RABBITMQ4_NODE is empty or 'keep', not '$WARDEN_RABBITMQ4_NODE'" >&2
    exit 2
    ;;
esac
dist_port=$((amqp_port + 20000))
epmd_port=$((amqp_port - 1300))
config="/etc/rabbitmq/${node%@*}.conf"
url="amqp://guest:guest@127.0.0.1:${amqp_port}/"
boot_timeout="${WARDEN_RABBITMQ4_BOOT_TIMEOUT:-120}"

command="${1:-}"

# A failure is reported in one line: by die, or by the ERR trap for a command that failed
# unexpectedly. die's status tells the trap (in the subshells around it too) that it was said.
reported=3
die() {
  echo "rabbitmq4.sh ${command:-}: $*" >&2
  exit "$reported"
}
trap 'status=$?; [ "$status" -eq "$reported" ] && exit "$reported"
  die "failed (exit $status) at line $LINENO: $BASH_COMMAND"' ERR

# The node's environment, for the server and the command line tools alike. ERL_FLAGS keeps the
# distribution listeners (the node's and each CLI's) on the loopback interface.
node_env=(
  env -i
  HOME=/var/lib/rabbitmq
  PATH=/usr/sbin:/usr/bin:/sbin:/bin
  LANG=C.UTF-8
  LC_ALL=C.UTF-8
  RABBITMQ_NODENAME="$node"
  RABBITMQ_CONFIG_FILE="$config"
  RABBITMQ_LOG_BASE="/var/log/rabbitmq/${node%@*}"
  RABBITMQ_DIST_PORT="$dist_port"
  RABBITMQ_CTL_DIST_PORT_MIN=$((dist_port + 10100))
  RABBITMQ_CTL_DIST_PORT_MAX=$((dist_port + 10110))
  ERL_EPMD_PORT="$epmd_port"
  ERL_EPMD_ADDRESS=127.0.0.1
  "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}"
)

rabbitmq_ids() {
  local ids
  ids="$(awk -F: '$1 == "rabbitmq" { print $3 ":" $4 }' "$root/etc/passwd")"
  [ -n "$ids" ] || die "no rabbitmq user in $root/etc/passwd"
  echo "$ids"
}

as_rabbitmq() {
  local ids
  ids="$(rabbitmq_ids)"
  "${node_env[@]}" chroot --userspec="$ids" --groups="${ids#*:}" "$root" "$@"
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (chroot, mount)"
}

need_built() {
  [ -f "$root/$stamp" ] || die "no RabbitMQ 4.0 root at $root: run '$0 build' first"
}

# True when the AMQP port answers the protocol header with connection.start (class 10,
# method 10 on channel 0): the broker has finished booting, not just opened a socket.
answers_amqp() {
  local reply
  reply="$(
    timeout 3 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf "AMQP\x00\x00\x09\x01" >&3
      head -c 11 <&3 | od -An -tx1 | tr -d " \n"
    ' _ "$amqp_port" 2>/dev/null
  )" || return 1
  [[ "$reply" == 010000????????000a000a ]]
}

port_taken() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

mounted_under() {
  awk -v prefix="$1/" '$2 == substr(prefix, 1, length(prefix) - 1) || index($2, prefix) == 1' \
    /proc/self/mounts
}

remove_tree() {
  [ -z "$(mounted_under "$1")" ] || die "$1 has file systems mounted in it; run '$0 stop' first"
  rm -rf -- "$1"
}

# Processes whose root directory is the chroot: the nodes, their epmds and their helpers; with
# "own", only this node's (their environment names its epmd port, which no other node shares).
chrooted_pids() {
  local dir real
  real="$(readlink -f "$root")"
  for dir in /proc/[0-9]*; do
    [ "$(readlink "$dir/root" 2>/dev/null)" = "$real" ] || continue
    if [ "${1:-}" = own ] &&
      ! tr '\0' '\n' <"$dir/environ" 2>/dev/null | grep -x "ERL_EPMD_PORT=$epmd_port" >/dev/null; then
      continue
    fi
    echo "${dir#/proc/}"
  done
  return 0
}

node_running() {
  local pid
  for pid in $(chrooted_pids own); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ] && return 0
  done
  return 1
}

# TERM, then KILL after 5 s, whatever of this node still runs in the chroot.
end_chrooted() {
  local pids tries=0
  pids="$(chrooted_pids own)"
  while [ -n "$pids" ]; do
    # shellcheck disable=SC2086 # one id per word
    case "$tries" in
      0) kill $pids 2>/dev/null || true ;;
      50) kill -KILL $pids 2>/dev/null || true ;;
      100) die "processes $(echo $pids) in $root did not exit" ;;
    esac
    sleep 0.1
    tries=$((tries + 1))
    pids="$(chrooted_pids own)"
  done
}

build() {
  need_root
  if [ -f "$root/$stamp" ]; then
    echo "RabbitMQ $(cat "$root/$stamp") already built in $root"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  mkdir -p "$(dirname "$root")"
  exec 9>"$root.lock"
  flock 9
  if [ -f "$root/$stamp" ]; then # built by a concurrent run while this one waited
    echo "RabbitMQ $(cat "$root/$stamp") already built in $root"
    return
  fi
  local partial="$root.partial" log="$root.build.log" version
  remove_tree "$root"
  remove_tree "$partial"
  echo "building Debian $suite with rabbitmq-server into $root (from $mirror)" >&2
  if ! debootstrap --variant=minbase --include=rabbitmq-server "$suite" "$partial" "$mirror" \
    >"$log" 2>&1; then
    die "debootstrap failed: $(grep -E '^[EW]:' "$log" | tail -n 1 || true) (log: $log)"
  fi
  rm -f "$partial"/var/cache/apt/archives/*.deb
  version="$(chroot "$partial" dpkg-query -W -f='${Version}' rabbitmq-server)"
  [[ "$version" == 4.0.* ]] || die "Debian $suite has rabbitmq-server $version, not 4.0"
  grep -qw localhost "$partial/etc/hosts" 2>/dev/null ||
    echo "127.0.0.1 localhost" >>"$partial/etc/hosts"
  echo "$version" >"$partial/$stamp"
  mv "$partial" "$root"
  echo "RabbitMQ $version built in $root" >&2
}

write_config() {
  # The message interceptor stamps every message the broker receives with timestamp_in_ms (and
  # the timestamp property); with overwrite = true it replaces whatever a publisher set.
  cat >"$root$config" <<EOF
listeners.tcp.1 = 127.0.0.1:${amqp_port}
message_interceptors.incoming.set_header_timestamp.overwrite = ${overwrite}
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
log.console = false
log.file.level = info
EOF
  echo "[]." >"$root/etc/rabbitmq/enabled_plugins"
}

start() {
  need_root
  need_built
  if node_running; then
    answers_amqp ||
      die "a node runs in $root but 127.0.0.1:$amqp_port does not answer AMQP: run '$0 stop' first"
    echo "$url"
    return
  fi
  end_chrooted # an epmd that a 'ctl' started while no node ran
  for port in "$amqp_port" "$dist_port" "$epmd_port"; do
    if port_taken "$port"; then
      die "127.0.0.1:$port is taken by another process"
    fi
  done
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  write_config
  local logs="/var/log/rabbitmq/${node%@*}"
  local mnesia="$root/var/lib/rabbitmq/mnesia"
  rm -rf "$mnesia/$node" "$mnesia/$node"-* "$mnesia/$node.pid" "$root$logs"
  mkdir -p "$root/var/lib/rabbitmq/mnesia" "$root$logs"
  chroot "$root" chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq

  local console="$root$logs/console.log" ids pid waited=0
  ids="$(rabbitmq_ids)"
  setsid "${node_env[@]}" chroot --userspec="$ids" --groups="${ids#*:}" "$root" \
    rabbitmq-server >"$console" 2>&1 </dev/null &
  pid=$!
  until answers_amqp; do
    if ! kill -0 "$pid" 2>/dev/null; then
      die "RabbitMQ 4.0 exited while booting: $(grep -v '^\s*$' "$console" | tail -n 1 || true) (logs: $root$logs)"
    fi
    if [ "$waited" -ge $((boot_timeout * 2)) ]; then
      die "RabbitMQ 4.0 did not answer AMQP on 127.0.0.1:$amqp_port within ${boot_timeout}s (logs: $root$logs)"
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  echo "$url"
}

ctl() {
  need_built
  local ids
  ids="$(rabbitmq_ids)"
  # rabbitmqctl's own exit status and error text, not this script's.
  exec "${node_env[@]}" chroot --userspec="$ids" --groups="${ids#*:}" "$root" \
    rabbitmqctl -n "$node" "$@"
}

stop() {
  need_root
  [ -d "$root" ] || return 0
  if node_running; then
    # shutdown returns once the node's OS process has exited; a node that does not answer
    # it is ended below like any other process left in the chroot.
    as_rabbitmq rabbitmqctl -n "$node" -q shutdown >/dev/null 2>&1 ||
      echo "rabbitmq4.sh stop: $node did not shut down cleanly; ending its processes" >&2
  fi
  end_chrooted
  if mountpoint -q "$root/proc" && [ -z "$(chrooted_pids)" ]; then
    umount "$root/proc" || die "could not unmount $root/proc"
  fi
}

case "$command" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  ctl)
    shift
    ctl "$@"
    ;;
  *)
    echo "usage: $0 build | start | stop | ctl RABBITMQCTL-ARGS..." >&2
    exit 2
    ;;
esac
