# Sourced by scripts/python-tests.sh and scripts/zig-tests.sh: make (or
# reuse) a venv with a pinned requirements file from PyPI.
#   ensure_venv PYTHON VENV REQUIREMENTS WHAT
# Returns 0 when VENV/bin/python is ready; else prints why (naming WHAT)
# and returns 77, ctest's skip code, so a skip is never counted as a pass.
ensure_venv() {
  local python=$1 venv=$2 req=$3 what=$4
  if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/requirements.txt"; then
    return 0
  fi
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    echo "$what: cannot make a venv with $python (python3-venv): skipped"
    return 77
  fi
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"; then
    echo "$what: pip could not install $req (no network?): skipped"
    rm -rf "$venv"
    return 77
  fi
  cp "$req" "$venv/requirements.txt"
}
