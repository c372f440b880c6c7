#!/usr/bin/env bash
# Prints the path of a Python 3.10 interpreter, or a one-line error and exit 1.
set -u
for cand in "${PYTHON310:-}" python3.10; do
  [[ -n $cand ]] || continue
  if p=$(command -v "$cand" 2>/dev/null) && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
    echo "$p"; exit 0
  fi
done
if command -v pyenv >/dev/null 2>&1; then
  for p in "$(pyenv root)"/versions/3.10.*/bin/python; do
    if [[ -x $p ]]; then echo "$p"; exit 0; fi
  done
fi
echo "error: Python 3.10 not found: install it (e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10') or set PYTHON310=/path/to/python3.10" >&2
exit 1
