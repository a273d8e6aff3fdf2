#!/usr/bin/env bash
# The Python package's tests (python/tests, pytest) against the build tree:
# a venv in BUILD/venv made with the interpreter the extension was built for,
# NumPy and pytest from PyPI (python/requirements-test.txt), then pytest with
# PYTHONPATH=BUILD/python. Exit 77 (ctest: skipped) when the venv or the
# packages cannot be had (no network), so a skip is never a pass.
#   python-tests.sh PYTHON BUILD_DIR [pytest args...]
#   python-tests.sh --torch PYTHON BUILD_DIR [pytest args...]
# --torch runs python/tests/torch (zmlx.torch against PyTorch) with PYTHON
# itself, or $ZMLX_TORCH_PYTHON: PyTorch is not installed from PyPI here
# (its Linux wheels pull gigabytes of CUDA libraries), so where PYTHON cannot
# import torch the run exits 77 (skipped). The H100 script sets it.
set -uo pipefail
torch_mode=0
if [ "${1:-}" = --torch ]; then
  torch_mode=1
  shift
fi
python=${1:?python-tests: PYTHON}
build=${2:?python-tests: BUILD_DIR}
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$torch_mode" = 1 ]; then
  python=${ZMLX_TORCH_PYTHON:-$python}
  if ! "$python" -c "import torch, numpy, pytest" >/dev/null 2>&1; then
    echo "python-tests: $python cannot import torch, numpy and pytest: zmlx.torch tests skipped"
    exit 77
  fi
  cd "$build" || exit 1
  PYTHONPATH="$build/python" exec "$python" -m pytest -q -p no:cacheprovider \
    "$root/python/tests/torch" "$@"
fi
venv=$build/venv
req=$root/python/requirements-test.txt
. "$root/scripts/venv.sh"
ensure_venv "$python" "$venv" "$req" python-tests || exit $?
cd "$build" || exit 1
PYTHONPATH="$build/python" exec "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  --ignore="$root/python/tests/torch" "$root/python/tests" "$@"
