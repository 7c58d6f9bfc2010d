#!/usr/bin/env bash
# Install Orthanc and its DICOMweb plugin (Debian/Ubuntu packages) for the PACS integration tests.
# Idempotent: does nothing when both are present. Needs root (or sudo) to install; never starts the
# system service (the tests run their own Orthanc on free ports).
#   MSDN_ORTHANC_BINARY          default /usr/sbin/Orthanc
#   MSDN_ORTHANC_DICOMWEB_PLUGIN default /usr/share/orthanc/plugins/libOrthancDicomWeb.so
set -euo pipefail
BINARY=${MSDN_ORTHANC_BINARY:-/usr/sbin/Orthanc}
PLUGIN=${MSDN_ORTHANC_DICOMWEB_PLUGIN:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}

if [ -x "$BINARY" ] && [ -e "$PLUGIN" ]; then
  echo "Orthanc already installed: $("$BINARY" --version 2>/dev/null | head -n 1 || echo "$BINARY")"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_orthanc.sh: no apt-get here; install Orthanc + its DICOMweb plugin by hand" >&2
  echo "  (or point MSDN_ORTHANC_BINARY / MSDN_ORTHANC_DICOMWEB_PLUGIN at them)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_orthanc.sh: need root or sudo to apt-get install orthanc orthanc-dicomweb" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# No init system in containers/CI: keep dpkg from trying to start the service.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  CREATED_POLICY=1
fi
cleanup() { if [ "$CREATED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

if ! $SUDO apt-get install -y --no-install-recommends orthanc orthanc-dicomweb; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends orthanc orthanc-dicomweb
fi
if [ ! -x "$BINARY" ] || [ ! -e "$PLUGIN" ]; then
  echo "install_orthanc.sh: installed, but $BINARY or $PLUGIN is missing" >&2
  exit 1
fi
echo "Orthanc installed: $("$BINARY" --version 2>/dev/null | head -n 1)"
