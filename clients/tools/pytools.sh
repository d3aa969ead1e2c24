#!/usr/bin/env bash
# Idempotent: a virtualenv with the Python tools the API tests use (openapi-spec-validator,
# schemathesis, prometheus_client), pinned in requirements.txt beside this script. It lives
# under the Cargo target directory and is rebuilt only when requirements.txt changes.
# Prints the venv's bin directory on its last line.
#
#   clients/tools/pytools.sh            # create or reuse
#   PYTOOLS_DIR=/some/dir clients/tools/pytools.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${PYTOOLS_DIR:-${CARGO_TARGET_DIR:-$root/target}/pytools}"
requirements="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$venv/bin"
  exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "pytools: $python not found" >&2; exit 1; }
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "pytools: $python lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
# The stamp is written last: an interrupted install has none and is redone from scratch.
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
echo "$want" > "$stamp"
echo "$venv/bin"
