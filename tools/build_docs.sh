#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml, docs/) into build/site with
# warnings as errors, so a broken link or API reference fails. Installs
# nothing: the packages are the `docs` extra (pip install -e '.[docs]').
set -euo pipefail
cd "$(dirname "$0")/.."
exec mkdocs build --strict --site-dir build/site "$@"
