#!/usr/bin/env bash
# Install the Debian 12 packages zmlx needs to build and test, and only the
# ones that are missing (apt-get is not run at all when nothing is missing).
# Why each package is there: see README.md, "Dependencies".
set -euo pipefail

packages=(
  cmake make gcc clang pkg-config     # build
  ccache                              # rebuilds of the same sources in seconds
  libssl-dev                          # OpenSSL libcrypto: SHA-256 cache keys
  ocl-icd-opencl-dev opencl-headers   # OpenCL through the ICD loader
  pocl-opencl-icd                     # OpenCL on the CPU (default backend without a GPU)
  libclblast-dev                      # CLBlast: the library GEMM of OpenCL devices
  libdlpack-dev                       # DLPack header for zero-copy exchange
  libcmocka-dev                       # C test framework
  libjansson-dev                      # JSON: the header of safetensors checkpoints
  libcairo2-dev                       # drawing: zmlx demo's loss-curve PNG
  libclang-rt-14-dev                  # sanitizer and libFuzzer runtimes for clang
  python3-dev python3-venv            # the Python extension (python/) and its test venv
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
