#!/usr/bin/env bash
# Installs metricjax with its dev, aot and docs extras and, where apt-get is usable,
# Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist), so the
# quickstart and the tests run on a fresh machine without internet.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and pinned: a bare `torch` requirement would pull a CUDA build.
python -m pip install -q 'torch==2.13.0'
python -m pip install -q -e '.[dev,aot,docs]'
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } \
    >/dev/null 2>&1 || echo "note: could not install dataset-fashion-mnist with apt-get;" \
      "set METRICJAX_DATA_DIR to a folder with fashion-mnist/ instead." >&2
fi
