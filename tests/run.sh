#!/usr/bin/env bash
# Runs the whole test suite: single-process tests, then the three-rank suite
# under mpiexec, then the six-rank suite (two groups of three: tests/test_*_mpi6.py).  Uses the python and mpiexec of the active environment.
# Exit status is non-zero if anything failed on any rank.  The three-rank suite runs twice:
# on MPCGPU_DEVICE (default cpu), then under the strict back end (STRICT=0 skips that pass).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BIN=$(dirname "$(command -v "$PY")")
MPIEXEC=${MPIEXEC:-$BIN/mpiexec}
[ -x "$MPIEXEC" ] || MPIEXEC=$(command -v mpiexec)
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MPIR_CVAR_CH4_PROGRESS_THROTTLE=1 MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT=32
export MPCGPU_DEVICE=${MPCGPU_DEVICE:-cpu} PYTHONUNBUFFERED=1
status=0
check() {  # pytest exit 5 means "no tests collected": a failure for us
  local rc=$1 what=$2
  if [ "$rc" -ne 0 ]; then echo "*** $what failed (exit $rc)"; status=1; fi
}
SLOW=()
[ "${RUN_SLOW:-0}" = "1" ] || SLOW=(-m "not slow")
echo "== lint and format (ruff)"
"$PY" -m ruff check .
check $? "lint"
"$PY" -m ruff format --check .
check $? "format (run: ruff format .)"
echo "== single-process tests"
timeout -k 10 1200 "$PY" -m pytest -q -p no:cacheprovider --timeout=600 "${SLOW[@]}" "$@" tests
check $? "single-process tests"
echo "== three-rank tests (mpiexec -n 3)"
rm -rf test-logs
timeout -k 10 1800 "$MPIEXEC" -n 3 "$PY" -m pytest -q -p no:cacheprovider --only-mpi \
    --timeout=600 --timeout-method=thread "${SLOW[@]}" "$@" tests
rc=$?
check $rc "three-rank tests"
if [ $rc -ne 0 ]; then
  for f in test-logs/rank*.log; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -n 40 "$f"; }; done
fi
# the three-rank suite once more under the strict back end (CuPy's rules over NumPy,
# mpcgpu/device/strict.py): a host/device mistake fails here, not on a user's GPU
if [ "${STRICT:-1}" = "1" ] && [ "$MPCGPU_DEVICE" != "strict" ]; then
  echo "== three-rank tests, strict back end (MPCGPU_DEVICE=strict)"
  rm -rf test-logs
  MPCGPU_DEVICE=strict timeout -k 10 1800 "$MPIEXEC" -n 3 "$PY" -m pytest -q -p no:cacheprovider --only-mpi \
      --timeout=600 --timeout-method=thread "${SLOW[@]}" "$@" tests
  rc=$?
  check $rc "three-rank tests (strict back end)"
  if [ $rc -ne 0 ]; then
    for f in test-logs/rank*.log; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -n 40 "$f"; }; done
  fi
fi
# two groups of three under one mpiexec (issue 22): the *_mpi6.py files, six ranks
echo "== six-rank tests (mpiexec -n 6: two groups of three)"
rm -rf test-logs
SIX=(tests/test_*_mpi6.py)
timeout -k 10 1200 "$MPIEXEC" -n 6 "$PY" -m pytest -q -p no:cacheprovider --only-mpi \
    --timeout=600 --timeout-method=thread "${SLOW[@]}" "$@" "${SIX[@]}"
rc=$?
check $rc "six-rank tests"
if [ $rc -ne 0 ]; then
  for f in test-logs/rank*.log; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -n 40 "$f"; }; done
fi
rm -f /dev/shm/mpich_shm_* 2>/dev/null || true
exit $status
