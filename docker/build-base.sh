#!/usr/bin/env bash
# Build the base images locally (debootstrap + docker import) for machines with no registry access.
#
#   sudo bash docker/build-base.sh            # -> msdn-local/python:3.11-slim-bookworm
#                                             #    msdn-local/debian:bookworm-slim
#   PYTHON_IMAGE=msdn-local/python:3.11-slim-bookworm DEBIAN_IMAGE=msdn-local/debian:bookworm-slim \
#     docker compose build
#
# Debian bookworm's python3 is 3.11, so the Python image matches python:3.11-slim-bookworm closely
# enough for docker/Dockerfile (python3 -m venv, pip from PyPI). Needs root, debootstrap and docker.
#   MIRROR        Debian mirror (default http://deb.debian.org/debian)
#   WORKDIR       scratch folder (default a temp dir, removed afterwards)
#   EXTRA_CA_DIR  folder of extra CA certificates (*.crt) to trust, e.g. a TLS-intercepting proxy's
#                 (/usr/local/share/ca-certificates); pip in the images is then pointed at the system
#                 bundle with PIP_CERT.
set -euo pipefail
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PYTHON_TAG=${PYTHON_TAG:-msdn-local/python:3.11-slim-bookworm}
DEBIAN_TAG=${DEBIAN_TAG:-msdn-local/debian:bookworm-slim}
command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
command -v docker >/dev/null || { echo "needs docker" >&2; exit 1; }
WORK=${WORKDIR:-$(mktemp -d)}
trap '[ -z "${WORKDIR:-}" ] && rm -rf "$WORK"' EXIT

build_rootfs() {  # build_rootfs DIR EXTRA_PACKAGES
  local dir=$1 include=$2
  if [ ! -x "$dir/bin/sh" ]; then
    debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir" "$MIRROR"
  fi
  cat > "$dir/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
  if [ -n "${EXTRA_CA_DIR:-}" ]; then
    cp "$EXTRA_CA_DIR"/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null
  fi
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/tmp/* "$dir"/var/log/*.log
}

CHANGES=(--change 'ENV LANG=C.UTF-8')
if [ -n "${EXTRA_CA_DIR:-}" ]; then
  CHANGES+=(--change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt')
fi

build_rootfs "$WORK/debian" "ca-certificates"
tar -C "$WORK/debian" --numeric-owner -c . | docker import \
  --change 'CMD ["bash"]' "${CHANGES[@]}" - "$DEBIAN_TAG"

build_rootfs "$WORK/python" "python3,python3-venv,ca-certificates"
ln -sf python3 "$WORK/python/usr/bin/python"
tar -C "$WORK/python" --numeric-owner -c . | docker import \
  --change 'CMD ["python3"]' "${CHANGES[@]}" - "$PYTHON_TAG"

docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${DEBIAN_TAG}|${PYTHON_TAG})"
