#!/usr/bin/env bash
# Install dicom3tools (dciodvfy: David Clunie's DICOM validator) for the SEG conformance test.
# Idempotent: does nothing when dciodvfy is present. Needs root (or sudo) and apt-get.
set -euo pipefail
if command -v dciodvfy >/dev/null 2>&1; then
  echo "dicom3tools already installed: $(command -v dciodvfy)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_dicom3tools.sh: no apt-get here; install dicom3tools by hand" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_dicom3tools.sh: need root or sudo to apt-get install dicom3tools" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q dicom3tools >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dicom3tools >/dev/null; }
echo "dicom3tools installed: $(command -v dciodvfy)"
