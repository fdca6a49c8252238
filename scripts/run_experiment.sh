#!/usr/bin/env bash
# Run experiment configs through sample -> prep -> train -> eval; finished stages are skipped.
#   bash scripts/run_experiment.sh configs/demo/upft.yaml [more.yaml ...] [--runs-dir runs]
# Then: python eval/report.py runs/<name> ... --out reports/<name>
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ] && [ -z "${VIRTUAL_ENV:-}" ]; then . .venv/bin/activate; fi
exec python -m upft.experiment "$@"
