# Shared by the scripts/run_*.sh wrappers (sourced, not run): strict mode, PYTHONPATH to this
# checkout's src/, the usage text from the calling script's header comment, and option parsing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

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
