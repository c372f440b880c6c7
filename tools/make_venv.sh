#!/usr/bin/env bash
# Builds (or refreshes) the project's virtual environment from the lock file, constraints.txt.
# One progress line per phase, errors only. uv does the install (pinned in constraints.txt);
# pip is the fallback when uv cannot be installed. Usage: tools/make_venv.sh .venv
# Both write the packages' bytecode (.pyc) at install time: where PYTHONDONTWRITEBYTECODE is set (CI
# containers, these machines) Python would otherwise compile TensorFlow and TFX from source in every
# process: `import tensorflow, tfx.v1` took 52-59 s without the .pyc files and 17-19 s with them.
set -euo pipefail
VENV=${1:-.venv}
PY=$VENV/bin/python
LOG=$(mktemp -t kdem-venv.XXXXXX.log)
t0=$SECONDS
phase() { printf '[venv] %-54s' "$1"; }
done_() { echo "done ($((SECONDS - t0)) s)"; }
fail() { echo "FAILED"; echo "--- $LOG ---" >&2; tail -n 40 "$LOG" >&2; exit 1; }

PYBIN=$(tools/find_python.sh) || exit 1
if [[ ! -x $PY ]]; then
  phase "creating $VENV with Python 3.10"; "$PYBIN" -m venv "$VENV" >>"$LOG" 2>&1 || fail; done_
fi
UV_PIN=$(grep -E '^uv==' constraints.txt || true)
phase "installing the installer (${UV_PIN:-pip})"
if [[ -n $UV_PIN ]] && "$PY" -m pip install --quiet --disable-pip-version-check "$UV_PIN" >>"$LOG" 2>&1; then
  done_
  phase "installing the stack with bytecode (uv)"
  VIRTUAL_ENV=$VENV "$VENV/bin/uv" pip install --quiet --compile-bytecode --python "$PY" -c constraints.txt -e ".[dev]" >>"$LOG" 2>&1 || fail
else
  echo "uv unavailable, falling back to pip"
  phase "installing the stack with bytecode (pip)"
  "$PY" -m pip install --quiet --disable-pip-version-check --progress-bar off --compile -c constraints.txt -e ".[dev]" >>"$LOG" 2>&1 || fail
fi
done_
rm -f "$LOG"
