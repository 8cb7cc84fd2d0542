#!/usr/bin/env bash
# The device check: real step times on one NVIDIA H100 / H200 beside their
# projections (tools/device_check.py says what it measures), within 8 minutes.
#
#   bash tools/device_check.sh [--dry_run] [--out=FILE.json] [--only=NAME,...]
#
# The GPU machine is expected to have jax (CUDA), flax, optax, orbax, torch
# and scikit-learn, and no internet: metricjax's other requirements travel
# with the checkout as wheels in .whl/, made here beforehand by
#   bash tools/device_check.sh --download_wheels
# (ml-collections, grain and what they need that such an image lacks,
# pinned to the versions this project is tested with; .whl/ is git-ignored,
# so name it in the device run's `carry`;
# Python 3.12 manylinux wheels). --dry_run checks the script on this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--download_wheels" ]; then
  rm -rf .whl && mkdir -p .whl
  for pkg in ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 \
             dm-tree==0.1.10 simple-parsing==0.1.9 docstring-parser==0.18.0 \
             importlib-resources==7.1.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$pkg"
  done
  ls .whl
  exit 0
fi

dry_run=false
[[ " $* " == *" --dry_run "* ]] && dry_run=true
# The wheels are the GPU machine's (Python 3.12): a dry run here uses this
# machine's own packages.
if ! $dry_run && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/metricjax-site .whl/*.whl
  export PYTHONPATH="/tmp/metricjax-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
if $dry_run; then
  export JAX_PLATFORMS=cpu
fi
exec timeout 480 python3 tools/device_check.py "$@"
