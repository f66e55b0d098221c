#!/bin/sh
# The official image's RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS, written to a
# config file only the broker's user reads (never to the log), then the broker.
set -eu
umask 077
{
  echo "loopback_users = none"
  [ -n "${RABBITMQ_DEFAULT_USER:-}" ] && echo "default_user = $RABBITMQ_DEFAULT_USER"
  [ -n "${RABBITMQ_DEFAULT_PASS:-}" ] && echo "default_pass = $RABBITMQ_DEFAULT_PASS"
  true
} >/etc/rabbitmq/conf.d/10-defaults.conf
chown rabbitmq:rabbitmq /etc/rabbitmq/conf.d/10-defaults.conf /var/lib/rabbitmq
unset RABBITMQ_DEFAULT_USER RABBITMQ_DEFAULT_PASS
# Debian's wrapper drops to the rabbitmq user.
exec rabbitmq-server
