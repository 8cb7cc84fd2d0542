#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml, docs/) into build/site with
# warnings as errors, so a broken link or API reference fails. Installs
# nothing: the packages are the `docs` extra (pip install -e '.[docs]').
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1  # Material's banner about its successor.
exec mkdocs build --strict --site-dir build/site "$@"
