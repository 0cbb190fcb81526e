#!/usr/bin/env bash
# timm's own model tests (tests/test_models.py of timm's source distribution, unmodified) for the
# conformer_* models, run against the INSTALLED timm: forward, backward, default cfgs, torchscript,
# features_only, FX forward/backward and FX torchscript.
#   bash scripts/timm_model_tests.sh [PYTEST_ARGS...]   (a -k EXPR narrows the selection: conformer and (EXPR))
# The sdist of the installed timm version is fetched once with pip into the cache
# (TIMM_TESTS_CACHE, default ~/.cache/conformer-vision/timm-tests) and only its tests/ folder and
# pyproject.toml (pytest markers) are unpacked, so `import timm` always finds the installed package.
# A conftest.py written next to them imports conformer_vision, which registers the models.
# PYTHON: the interpreter (default .venv's python, else python3). OMP_NUM_THREADS defaults to 1:
# the tests run many small operations, and on shared cores a second OpenMP thread mostly waits at
# barriers (3.5 instead of 9 minutes on a busy 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x ${VENV:-.venv}/bin/python ]]; then PY=${VENV:-.venv}/bin/python; else PY=python3; fi
fi
# A path relative to the checkout stays valid after the cd into the unpacked tests (the folder is
# made absolute, not the interpreter: a venv's python is a symlink that must stay one).
if [[ $PY == */* ]]; then PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY"); fi
VERSION=$("$PY" -c 'import timm; print(timm.__version__)')
CACHE=${TIMM_TESTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/conformer-vision/timm-tests}
DIR=$CACHE/timm-$VERSION

if [[ ! -f $DIR/tests/test_models.py ]]; then
  mkdir -p "$CACHE"
  TMP=$(mktemp -d "$CACHE/.fetch.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  echo "timm_model_tests: fetching the source distribution of timm $VERSION"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "timm==$VERSION" -d "$TMP"
  tar -xzf "$TMP/timm-$VERSION.tar.gz" -C "$TMP" "timm-$VERSION/tests" "timm-$VERSION/pyproject.toml"
  rm -rf "$DIR"
  mv "$TMP/timm-$VERSION" "$DIR"
fi

# Registers conformer_* in timm before test_models.py lists the models at import time.
cat > "$DIR/conftest.py" <<EOF
import sys

sys.path.insert(0, "$ROOT/src")  # this checkout's package, installed (editable) or not
import conformer_vision  # noqa: E402,F401
EOF

# timm's pretrained tests (test_model_load_pretrained, test_model_features_pretrained) build every
# variant that has published weights with pretrained=True. So that they run offline and never touch
# the user's torch hub cache, they get their own TORCH_HOME holding stand-ins under the published file
# names (seeded random weights, float16, under mmpretrain's backbone./head. prefixes): a cached
# file is used without downloading, so the tests check the whole loading path (cache, key mapping,
# in_chans adaptation, features_only). TIMM_TESTS_TORCH_HOME=~/.cache/torch uses the real weights.
STANDINS=${TIMM_TESTS_TORCH_HOME:-$CACHE/torch-home}
if [[ -z ${TIMM_TESTS_TORCH_HOME:-} ]]; then
  "$PY" - "$STANDINS" <<'PYEOF'
import sys
from pathlib import Path

import torch

sys.path.insert(0, "src")
from conformer_vision.models import create_model  # noqa: E402
from conformer_vision.pretrained import PUBLISHED  # noqa: E402

folder = Path(sys.argv[1]) / "hub" / "checkpoints"
folder.mkdir(parents=True, exist_ok=True)
for variant, weights in PUBLISHED.items():
    path = folder / weights.file_name
    if path.is_file():
        continue
    torch.manual_seed(0)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in create_model(variant).state_dict().items()}
    layout = {("head." if k.startswith(("conv_cls_head.", "trans_cls_head.")) else "backbone.") + k: v for k, v in sd.items()}
    tmp = path.with_name(path.name + ".partial")
    torch.save({"state_dict": layout}, tmp)
    tmp.replace(path)
    print(f"timm_model_tests: stand-in weights {path}")
PYEOF
fi

SELECT=conformer
ARGS=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == -k && $# -gt 1 ]]; then SELECT="conformer and ($2)"; shift 2; else ARGS+=("$1"); shift; fi
done
# timm trims its list on GitHub's runners (memory); the five Conformers are small enough for all of it.
cd "$DIR"
exec env -u GITHUB_ACTIONS TORCH_HOME="$STANDINS" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PY" -m pytest tests/test_models.py -k "$SELECT" \
  -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning ${ARGS[@]+"${ARGS[@]}"}
