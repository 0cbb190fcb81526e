# Shared by the scripts/run_*.sh wrappers and quickstart.sh (sourced, not run): strict mode,
# PYTHONPATH to this checkout's src/, the interpreter, the usage text from the calling script's
# header comment, option parsing, and the split of the CPU cores between compute and data loading.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
# The project's virtual environment made by scripts/setup.sh (VENV, default .venv) when there is
# one, else python3 from the PATH (an activated environment, or an install of one's own).
VENV=${VENV:-$ROOT/.venv}
if [[ -x $VENV/bin/python ]]; then PY=$VENV/bin/python; else PY=python3; fi

# The calling script's header comment, from line 2 to the first line that is not a comment.
usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# require_positional NAME "$@": the first argument exists and is not an option.
require_positional() {
  local name=$1; shift
  if [[ $# -eq 0 ]]; then echo "missing $name" >&2; usage >&2; exit 2; fi
  case $1 in
    -h|--help) usage; exit 0 ;;
    --*) echo "missing $name before '$1'" >&2; usage >&2; exit 2 ;;
  esac
}

# parse_options NAME... -- ARGS...: each "--NAME VALUE" in ARGS sets the shell variable NAME in
# upper case (--device_ids 0,1 -> DEVICE_IDS=0,1); everything after --extra goes to the array EXTRA
# unchanged; -h/--help prints the usage; anything else is an error (exit 2).
parse_options() {
  local names=" "
  while [[ $1 != -- ]]; do names+="$1 "; shift; done
  shift
  EXTRA=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --extra) shift; EXTRA=("$@"); return 0 ;;
      -h|--help) usage; exit 0 ;;
      --*)
        local key=${1#--}
        if [[ $names == *" $key "* && $# -ge 2 ]]; then
          printf -v "${key^^}" '%s' "$2"; shift 2
        else
          echo "unknown argument or missing value: '$1'" >&2; usage >&2; exit 2
        fi ;;
      *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
  done
}

# cpu_split [CORES]: "THREADS WORKERS" for one training process on CORES cores (default: the cores
# this process may use, whatever OMP_NUM_THREADS says): a quarter of the cores (at least one) load
# and augment images in DataLoader workers, the rest compute. 1-2 cores: 1 thread and 1 worker (on a
# small shared CPU more threads spin against each other and are slower); 8: 6 + 2; 16: 12 + 4.
cpu_split() {
  local cores=${1:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
  [[ $cores =~ ^[1-9][0-9]*$ ]] || { echo "cpu_split: not a core count: '$cores'" >&2; return 2; }
  local workers=$(( cores / 4 > 1 ? cores / 4 : 1 ))
  local threads=$(( cores - workers > 1 ? cores - workers : 1 ))
  echo "$threads $workers"
}
