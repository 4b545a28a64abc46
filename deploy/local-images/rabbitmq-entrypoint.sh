#!/bin/sh
# OFFLINE STAND-IN for the official rabbitmq image's entry point (deploy/local-images.sh):
# RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS become the node's default user, the data
# directory belongs to the rabbitmq user, and the server runs as that user in the foreground,
# as PID 1's only child, so that SIGTERM stops it.
set -eu

if [ "$(id -u)" = 0 ]; then
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] || [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
    {
      echo "# from RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS"
      [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER"
      [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS"
    } >/etc/rabbitmq/conf.d/11-default-user.conf
    chmod 0640 /etc/rabbitmq/conf.d/11-default-user.conf
    chgrp rabbitmq /etc/rabbitmq/conf.d/11-default-user.conf
  fi
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
fi

if [ "${1:-}" = rabbitmq-server ]; then
  shift
  set -- /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
  if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"
  fi
fi
exec "$@"
