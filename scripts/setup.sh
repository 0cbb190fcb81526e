#!/usr/bin/env bash
# Installs everything conformer-vision needs on a fresh Debian/Ubuntu machine into the project's
# virtual environment .venv (never into the system's python, which Debian 12 / Ubuntu 24.04 refuse
# anyway: PEP 668, "externally-managed-environment"):
#   bash scripts/setup.sh          then  . .venv/bin/activate  to use `conformer` in that shell
# - Debian's dataset-fashion-mnist (the quickstart and some tests read it), chromium (the serving
#   page's browser test), and python3-venv where
#   the interpreter cannot make virtual environments (Debian ships venv/ensurepip apart);
# - .venv made with `$PYTHON -m venv` (PYTHON: the interpreter to make it from, default python3);
# - torch/torchvision pinned to the versions this project's machines hold locally (TORCH_VERSION,
#   TORCHVISION_VERSION; any torch >= 2.6 works), then `pip install -e ".[test]"`.
# Running it again is quick: nothing is reinstalled while pyproject.toml and the pins are unchanged.
# A .venv this script made that no longer runs, or that was made from another interpreter than an
# explicitly given PYTHON, is made anew; a .venv made otherwise is used as it is, or, when broken,
# left alone with a message. VENV=DIR puts the environment elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP=$VENV/.conformer-setup   # written by this script: the base interpreter and what was installed
PINS="torch==${TORCH_VERSION:-2.14.1} torchvision==${TORCHVISION_VERSION:-0.29.1}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=0

apt_install() {  # apt_install PACKAGE...: Debian packages, the package lists updated once
  if [[ $APT_UPDATED == 0 ]]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null  # no prompt without a terminal
}

die() { echo "setup: $*" >&2; exit 2; }

base_id() {  # the interpreter BASE really is, and its version: what a venv made from it depends on
  "$BASE" -c 'import os, sys; print(os.path.realpath(sys.executable), "%d.%d.%d" % sys.version_info[:3])'
}

stamp_value() {  # stamp_value KEY: the KEY=... line of the stamp (empty when absent)
  [[ -f $STAMP ]] && sed -n "s/^$1=//p" "$STAMP" || true
}

ours() { [[ -n "$(stamp_value base)" ]]; }  # this script made $VENV (and may make it anew)

need_base() {
  command -v "$BASE" >/dev/null 2>&1 || die "no interpreter '$BASE': install python3, or set PYTHON=/path/to/python3"
}

make_venv() {  # make_venv [--clear]: a new environment from BASE, stamped as ours
  need_base
  if ! "$BASE" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "setup: $BASE cannot make virtual environments (no venv/ensurepip): installing python3-venv"
    apt_install python3-venv
    "$BASE" -c 'import venv, ensurepip' >/dev/null 2>&1 \
      || die "$BASE still has no venv/ensurepip module; install its venv package, or choose another interpreter with PYTHON=..."
  fi
  local existed=0; [[ -e $VENV ]] && existed=1
  if ! "$BASE" -m venv "$@" "$VENV"; then
    [[ $existed == 1 ]] || rm -rf "$VENV"  # only what this call created
    die "could not create the virtual environment $VENV with $BASE -m venv"
  fi
  printf 'base=%s\n' "$(base_id)" >"$STAMP"
}

# --- Debian packages
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  echo "setup: installing Debian's dataset-fashion-mnist (the real-data quickstart and tests use it)"
  apt_install dataset-fashion-mnist
fi

if ! dpkg -s chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium (the browser test of conformer serve's page drives it headless)"
  apt_install chromium
fi

# --- the virtual environment
if [[ ! -e $VENV ]]; then
  echo "setup: creating the virtual environment $VENV with $BASE"
  make_venv
elif ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  ours || die "$VENV exists but its python does not run, and this script did not make it; remove it (rm -r $VENV) or choose another folder with VENV=..., then run again"
  echo "setup: $VENV no longer runs (its interpreter is gone?): making it anew with $BASE"
  make_venv --clear
elif [[ -n ${PYTHON:-} ]] && ours && need_base && [[ "$(stamp_value base)" != "$(base_id)" ]]; then
  echo "setup: $VENV was made from $(stamp_value base), PYTHON=$PYTHON is $(base_id): making it anew"
  make_venv --clear
fi
PY=$VENV/bin/python

# --- packages: skipped while the stamp says this pyproject.toml and these pins are installed
WANT=$({ cat pyproject.toml; echo "$PINS"; pwd; } | sha256sum | cut -d' ' -f1)
if [[ "$(stamp_value installed)" == "$WANT" ]] \
   && "$PY" -c 'import importlib.metadata as m; m.version("torch"); m.version("conformer-vision")' >/dev/null 2>&1; then
  echo "setup: already installed in $VENV (pyproject.toml and pins unchanged)"
else
  echo "setup: installing $PINS and conformer-vision (editable, with the test extra) into $VENV"
  # shellcheck disable=SC2086  # PINS is two words on purpose
  "$PY" -m pip install -q --disable-pip-version-check $PINS
  "$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
  { grep -v '^installed=' "$STAMP" 2>/dev/null || true; echo "installed=$WANT"; } >"$STAMP.new"
  mv "$STAMP.new" "$STAMP"
fi
echo "setup: conformer-vision is installed in $(cd "$VENV" && pwd); use it with: . $VENV/bin/activate  (then: conformer --help)"
