#!/usr/bin/env bash
# OFFLINE STAND-INS, NOT THE OFFICIAL IMAGES. For machines that cannot pull from a public image
# registry: builds, from Debian trixie packages alone, the two images the compose stack takes
# from Docker Hub, and tags them under warden-standin/:
#
#   warden-standin/python:3-trixie            for python:3.12-slim-bookworm (the Dockerfile's base)
#   warden-standin/rabbitmq:4.0-management    for rabbitmq:4.0-management (Debian's
#                                             rabbitmq-server 4.0 with the management plugin)
#
#   deploy/local-images.sh build    build both (root, debootstrap and a Docker engine); prints
#                                   the variables that make compose use them
#   deploy/local-images.sh env      print those variables only
#
# Then, from the project directory:
#   eval "$(deploy/local-images.sh env)"
#   docker compose -f compose.yaml -f deploy/compose/local.yaml up
#
# The RabbitMQ stand-in behaves as the official image does for this stack: the node is
# rabbit@<hostname> with its data in /var/lib/rabbitmq, configuration from
# /etc/rabbitmq/conf.d/*.conf, RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS from the
# environment, the management plugin on 15672, logs on standard output, `rabbitmq-diagnostics`
# for health checks (and a health check of the image's own), SIGTERM stops the node.
#
# The Python stand-in (Debian's python3, 3.13) trusts the certificate authorities this machine
# added to /usr/local/share/ca-certificates (an intercepting proxy's, say), so that pip inside
# `docker build` reaches the package index as the host does.
#
# Each root file system is made once per machine (debootstrap, about a minute each) under
# WARDEN_STANDIN_CACHE; the images are made again from it in seconds.
set -Eeuo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${WARDEN_STANDIN_CACHE:-/var/cache/warden/images}"
mirror="${WARDEN_STANDIN_MIRROR:-http://deb.debian.org/debian}"
suite=trixie
python_image=warden-standin/python:3-trixie
rabbitmq_image=warden-standin/rabbitmq:4.0-management
notice="Offline stand-in built from Debian $suite packages by deploy/local-images.sh;"
notice+=" not the official image"

die() {
  echo "local-images.sh: $*" >&2
  exit 1
}

print_env() {
  echo "export PYTHON_IMAGE=$python_image"
  echo "export RABBITMQ_IMAGE=$rabbitmq_image"
}

# rootfs NAME PACKAGES: a Debian root file system in $cache/NAME, made once.
rootfs() {
  local dir="$cache/$1" partial="$cache/$1.partial" log="$cache/$1.log"
  if [ -f "$dir/.warden-standin" ]; then
    echo "$dir"
    return
  fi
  rm -rf -- "$partial"
  echo "local-images.sh: debootstrap $suite ($2) into $dir" >&2
  debootstrap --variant=minbase --include="$2" "$suite" "$partial" "$mirror" >"$log" 2>&1 ||
    die "debootstrap failed: $(grep -E '^[EW]:' "$log" | tail -n 1 || true) (log: $log)"
  rm -rf "$partial"/var/cache/apt/archives/*.deb "$partial"/var/lib/apt/lists/*
  date -u +%FT%TZ >"$partial/.warden-standin"
  rm -rf -- "$dir"
  mv "$partial" "$dir"
  echo "$dir"
}

# import DIR IMAGE CHANGES...: the root file system as an image, labelled as a stand-in.
import() {
  local dir="$1" image="$2"
  shift 2
  local changes=(--change "LABEL org.opencontainers.image.description=\"$notice\""
    --change "LABEL dev.warden.standin=true")
  for change in "$@"; do changes+=(--change "$change"); done
  tar -C "$dir" --exclude=./.warden-standin --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./dev/*' -c . | docker import "${changes[@]}" - "$image" >/dev/null
  echo "local-images.sh: $image ($notice)" >&2
}

build() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap)"
  command -v debootstrap >/dev/null ||
    die "debootstrap is not installed (apt-get install debootstrap)"
  docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9

  local python rabbitmq
  python="$(rootfs python-trixie python3,python3-venv,python-is-python3,ca-certificates,passwd)"
  find "$python/usr/local/share/ca-certificates" -mindepth 1 -delete
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$python/usr/local/share/ca-certificates/"
  fi
  chroot "$python" update-ca-certificates --fresh >/dev/null
  import "$python" "$python_image" \
    'ENV LANG=C.UTF-8' \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'CMD ["python3"]'

  rabbitmq="$(rootfs rabbitmq-trixie rabbitmq-server)"
  mkdir -p "$rabbitmq/etc/rabbitmq/conf.d"
  install -m 0755 "$here/local-images/rabbitmq-entrypoint.sh" \
    "$rabbitmq/usr/local/bin/docker-entrypoint.sh"
  install -m 0644 "$here/local-images/rabbitmq-defaults.conf" \
    "$rabbitmq/etc/rabbitmq/conf.d/10-defaults.conf"
  echo '[rabbitmq_management].' >"$rabbitmq/etc/rabbitmq/enabled_plugins"
  import "$rabbitmq" "$rabbitmq_image" \
    'ENV LANG=C.UTF-8 HOME=/var/lib/rabbitmq RABBITMQ_DATA_DIR=/var/lib/rabbitmq' \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'VOLUME /var/lib/rabbitmq' \
    'EXPOSE 4369 5671 5672 15672 25672' \
    'ENTRYPOINT ["docker-entrypoint.sh"]' \
    'CMD ["rabbitmq-server"]'
  # A health check of its own (import cannot set one): the node is up and listening.
  docker build -q -t "$rabbitmq_image" - >/dev/null <<DOCKERFILE
FROM $rabbitmq_image
HEALTHCHECK --interval=5s --timeout=10s --start-period=30s --retries=30 \
  CMD ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]
DOCKERFILE
  print_env
}

case "${1:-}" in
  build) build ;;
  env) print_env ;;
  *) die "usage: $0 build|env" ;;
esac
