#!/usr/bin/env bash
# Run an mpcgpu command on three local MPI ranks (one per party), or 3K (--groups K).
#
#   launch/local.sh [launcher options] COMMAND [ARGS...]
#   launch/local.sh infer --model shards/lenet --data shards/mnist
#     -> mpiexec -n 3 python -m mpcgpu.cli infer --model shards/lenet --data shards/mnist
#   launch/local.sh my_script.py ARGS...   (a COMMAND ending in .py runs that script)
#
# Run with --help for the options.  Exit status: that of mpiexec (non-zero if any
# rank failed), 2 for a usage error, 127 if no python or mpiexec was found.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: launch/local.sh [--device cpu|cuda|auto] [--groups K] [--python PY]
                       [--mpiexec PATH] [--dry-run] [--help] COMMAND [ARGS...]

Runs `mpiexec -n 3 PY -m mpcgpu.cli COMMAND ARGS...` on this machine: three MPI
ranks, one per party (rank i is party i and reads its own shard
STEM.party<i>.h5). A COMMAND ending in .py is run as a script instead.

Launcher options (before COMMAND):
  --device D     cpu, cuda or auto: exported as MPCGPU_DEVICE to all ranks
                 (auto: a GPU per rank when CuPy sees one, ranks share GPUs
                 round-robin)
  --groups K     K groups of three parties: 3K ranks (default 1), laid out
                 cyclic on this one machine (rank r plays party r % 3;
                 MPCGPU_LAYOUT overrides); the work is split across groups
  --python PY    the python to run (default: $PYTHON, the active virtualenv,
                 the repository's .venv, then python3 on PATH)
  --mpiexec M    the launcher (default: $MPIEXEC, mpiexec next to PY -- the pip
                 `mpich` wheel installs it there -- then mpiexec on PATH)
  --dry-run      print the environment and the command, run nothing
  -h, --help     this help

Environment set when not already set: OPENBLAS_NUM_THREADS and OMP_NUM_THREADS
(cores / 3, at least 1), and on a machine with fewer than 3 cores MPICH's
progress throttle (MPIR_CVAR_CH4_PROGRESS_THROTTLE=1,
MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT=32) so busy-polling ranks do
not starve each other. If the run fails, the /dev/shm/mpich_shm_* files it left
behind are removed.

Examples:
  launch/local.sh infer --model shards/lenet --data shards/mnist
  launch/local.sh --device cuda bench
EOF
}

die() { echo "launch/local.sh: $*" >&2; exit "${2:-2}"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
device="" py="${PYTHON:-}" mpiexec="${MPIEXEC:-}" dry=0 groups=1

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --device) [ $# -ge 2 ] || die "--device needs a value"; device=$2; shift 2 ;;
    --device=*) device=${1#--device=}; shift ;;
    --groups) [ $# -ge 2 ] || die "--groups needs a value"; groups=$2; shift 2 ;;
    --groups=*) groups=${1#--groups=}; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a value"; py=$2; shift 2 ;;
    --python=*) py=${1#--python=}; shift ;;
    --mpiexec) [ $# -ge 2 ] || die "--mpiexec needs a value"; mpiexec=$2; shift 2 ;;
    --mpiexec=*) mpiexec=${1#--mpiexec=}; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    -*) die "unknown launcher option $1 (launcher options go before COMMAND; see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { usage >&2; exit 2; }

case "$device" in
  ""|cpu|cuda|auto) ;;
  *) die "--device must be cpu, cuda or auto, not '$device'" ;;
esac
case "$groups" in
  ''|*[!0-9]*|0*) die "--groups must be a whole number >= 1, not '$groups'" ;;
esac
ranks=$(( 3 * groups ))
[ "$groups" -gt 1 ] && export MPCGPU_LAYOUT=${MPCGPU_LAYOUT:-cyclic}

# -- python: explicit, active virtualenv, the repository's .venv, PATH
if [ -z "$py" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then py=$VIRTUAL_ENV/bin/python
  elif [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python
  else py=$(command -v python3 || command -v python || true)
  fi
fi
[ -n "$py" ] || die "no python found (set PYTHON or --python)" 127
case "$py" in */*) ;; *) py=$(command -v "$py" || true) ;; esac
[ -n "$py" ] && [ -x "$py" ] || die "python '$py' is not executable" 127

# -- mpiexec: explicit, next to the python (not resolving symlinks: a venv's bin), PATH
if [ -z "$mpiexec" ]; then
  if [ -x "$(dirname "$py")/mpiexec" ]; then mpiexec=$(dirname "$py")/mpiexec
  else mpiexec=$(command -v mpiexec || command -v mpirun || true)
  fi
fi
[ -n "$mpiexec" ] || die "no mpiexec found: pip install mpich (puts it next to python), or load an MPI module" 127

# -- environment for three ranks on this node
cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
threads=$(( cores / ranks )); [ "$threads" -ge 1 ] || threads=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$threads}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
if [ "$cores" -lt "$ranks" ]; then
  export MPIR_CVAR_CH4_PROGRESS_THROTTLE=${MPIR_CVAR_CH4_PROGRESS_THROTTLE:-1}
  export MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT=${MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT:-32}
fi
[ -n "$device" ] && export MPCGPU_DEVICE=$device
export PYTHONUNBUFFERED=1

# Open MPI needs explicit permission to run 3 ranks on fewer cores, and as root
extra=()
if "$mpiexec" --version 2>&1 | grep -qiE 'open ?mpi|openrte'; then
  [ "$cores" -lt "$ranks" ] && extra+=(--oversubscribe)
  [ "$(id -u)" = 0 ] && extra+=(--allow-run-as-root)
fi

if [[ "$1" == *.py ]]; then
  cmd=("$mpiexec" -n "$ranks" "${extra[@]}" "$py" "$@")
else
  cmd=("$mpiexec" -n "$ranks" "${extra[@]}" "$py" -m mpcgpu.cli "$@")
fi

if [ "$dry" = 1 ]; then
  for v in MPCGPU_DEVICE OPENBLAS_NUM_THREADS OMP_NUM_THREADS MPIR_CVAR_CH4_PROGRESS_THROTTLE \
           MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT MPCGPU_CUDA_AWARE MPCGPU_LAYOUT; do
    [ -n "${!v:-}" ] && echo "$v=${!v}"
  done
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi

# -- run; on failure remove the MPICH shared-memory files this run left behind
shm_before=$(ls -1 /dev/shm/ 2>/dev/null | grep '^mpich_shm_' || true)
child=""
cleanup_shm() {
  local f
  for f in /dev/shm/mpich_shm_*; do
    [ -e "$f" ] || continue
    grep -qxF "$(basename "$f")" <<<"$shm_before" && continue   # existed before this run
    [ -O "$f" ] || continue                                      # not ours
    # still mapped by a live process (another job started meanwhile)? keep it
    grep -qsF "$f" /proc/[0-9]*/maps 2>/dev/null && continue
    rm -f -- "$f"
  done
}
forward() {  # pass a signal on to mpiexec, which stops the ranks
  [ -n "$child" ] && kill "-$1" "$child" 2>/dev/null
}
trap 'forward TERM' INT   # background jobs ignore SIGINT: send TERM
trap 'forward TERM' TERM
trap 'forward HUP' HUP

"${cmd[@]}" &
child=$!
rc=0
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break   # wait returned because of a trapped signal: wait again
done
child=""
[ "$rc" -ne 0 ] && cleanup_shm
exit "$rc"
