#!/usr/bin/env bash
# Installs everything conformer-vision needs on a fresh Debian/Ubuntu machine (idempotent).
# torch/torchvision are pinned to versions with a local copy on the project's machines; on
# other machines any torch >= 2.6 works (pip install -e . picks one).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  echo "installing Debian's dataset-fashion-mnist (the real-data quickstart and tests use it)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
