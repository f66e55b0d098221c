#!/usr/bin/env bash
# Builds the stand-in images docker-compose.offline.yml runs, from Debian and npm
# packages only, for a machine that reaches Debian's mirrors, PyPI and npm but no
# image registry:
#
#   adxflow-offline/debian:bookworm   debootstrap of bookworm (minbase), imported
#   adxflow-offline/python:3.11       Debian's python3 (3.11) with venv: deploy/Dockerfile's base
#   adxflow-offline/rabbitmq:3        Debian's rabbitmq-server with the management plugin
#   adxflow-offline/postgres:15       Debian's PostgreSQL, configured from POSTGRES_* like the official image
#   adxflow-offline/node:18           Debian's nodejs, for the two below
#   adxflow-offline/azurite:3         Azurite from npm
#   adxflow-offline/maildev:2         MailDev from npm: SMTP catcher with a web page and a REST API
#   adxflow:dev                       deploy/Dockerfile on adxflow-offline/python:3.11
#   adxflow-offline/kusto:dev         adxflow's local Kusto endpoint, on adxflow:dev
#
# The host's CA bundle (CA_BUNDLE, default /etc/ssl/certs/ca-certificates.crt) is
# copied into the base, so apt, pip and npm inside builds trust a TLS-inspecting
# proxy the host trusts. Proxies in the environment (HTTP_PROXY, HTTPS_PROXY,
# NO_PROXY) are passed to debootstrap and to every build. The debootstrap is cached
# under CACHE_DIR (default /var/cache/adxflow-offline), keyed by the suite, the
# mirror, the package list and the bundle's SHA-256: a changed bundle builds a new
# base, and every image above is rebuilt on it. Run as root (debootstrap and docker).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
CACHE_DIR="${CACHE_DIR:-/var/cache/adxflow-offline}"
INCLUDE=ca-certificates,netcat-openbsd
BASE=adxflow-offline/debian:$SUITE
LABEL=org.adxflow.offline.key

[ -r "$CA_BUNDLE" ] || { echo "no CA bundle at $CA_BUNDLE (set CA_BUNDLE)" >&2; exit 1; }
key="$(printf '%s\n' "$SUITE" "$MIRROR" "$INCLUDE" "$(sha256sum <"$CA_BUNDLE")" | sha256sum | cut -c1-16)"
tarball="$CACHE_DIR/$SUITE-$key.tar"

if [ "$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$BASE" 2>/dev/null)" != "$key" ]; then
  if [ ! -s "$tarball" ]; then
    echo "debootstrap $SUITE from $MIRROR (cache $tarball)"
    mkdir -p "$CACHE_DIR"
    root="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
      || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    # What Debian's own container images do: no services start inside builds,
    # no documentation, package lists fetched fresh by each build.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
    cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
      >"$root/etc/dpkg/dpkg.cfg.d/01-nodoc"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/01-norecommends"
    # The host's bundle, so TLS through the host's proxy verifies; kept under
    # /usr/local/share too, so a later update-ca-certificates keeps it.
    install -m 644 "$CA_BUNDLE" "$root/usr/local/share/ca-certificates/host-bundle.crt"
    install -m 644 "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" --numeric-owner -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  echo "importing $BASE"
  docker import \
    --change "LABEL $LABEL=$key" \
    --change 'ENV LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["bash"]' \
    "$tarball" "$BASE" >/dev/null
fi

proxy_args=()
for name in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -n "${!name:-}" ] && proxy_args+=(--build-arg "$name")
done

build() {  # build TAG FOLDER [BASE]
  echo "building $1"
  docker build -q "${proxy_args[@]}" --build-arg "BASE=${3:-$BASE}" -t "$1" "$here/$2" >/dev/null
}
build adxflow-offline/python:3.11 python
build adxflow-offline/rabbitmq:3 rabbitmq
build adxflow-offline/postgres:15 postgres
build adxflow-offline/node:18 node
build adxflow-offline/azurite:3 azurite adxflow-offline/node:18
build adxflow-offline/maildev:2 maildev adxflow-offline/node:18

# adxflow's image, then the Kusto stand-in made from it (compose builds the former
# again on `up --build`, from cache; the latter only here).
repo="$(cd "$here/../.." && pwd)"
echo "building adxflow:dev"
docker build -q "${proxy_args[@]}" --build-arg PYTHON_IMAGE=adxflow-offline/python:3.11 \
  -f "$repo/deploy/Dockerfile" -t adxflow:dev "$repo" >/dev/null
echo "building adxflow-offline/kusto:dev"
docker build -q -f "$repo/deploy/offline/kusto/Dockerfile" -t adxflow-offline/kusto:dev "$repo" >/dev/null
