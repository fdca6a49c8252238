#!/usr/bin/env bash
# The GPU measurements reported in README and results/gpu/: one step per call.
#   MODEL=path/to/qwen2.5-coder-1.5b-instruct.gguf DATA=../shared/data RUNS=runs/gpu \
#     bash scripts/gpu/checks.sh STEP
# Steps (in order): eval-base, sample-upft, train-openrlhf, eval-openrlhf, vllm-sample, vllm-eval.
# train-openrlhf needs deepspeed + openrlhf; without flash-attn, add tests/gpu/stubs to PYTHONPATH
# (see tests/gpu/stubs/README.md). Each step skips itself when its output holds the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL}" "${DATA:?set DATA}" "${RUNS:=runs/gpu}"
N_TRAIN=${N_TRAIN:-2000}   # GSM8K train questions for the UPFT set
EVAL="--data-dir $DATA --max-new-tokens 1024 --max-new-tokens-for gsm8k=512 --batch-size 2048"
case "$1" in
  eval-base)   # four benchmarks, greedy, transformers backend, one batch per benchmark; GPQA's long
               # prompts need smaller batches on an 80 GB card after MATH-500's static cache
    python eval/run_eval.py --model "$MODEL" --benchmarks gsm8k $EVAL --label base --out "$RUNS/eval-base-gsm8k"
    python eval/run_eval.py --model "$MODEL" --benchmarks math500,aime24 $EVAL --label base --out "$RUNS/eval-base-math"
    python eval/run_eval.py --model "$MODEL" --benchmarks gpqa_diamond $EVAL --batch-size 66 --label base \
      --out "$RUNS/eval-base-gpqa" ;;
  sample-upft) # UPFT sampling: L=32 tokens for 90% of the questions, full (512) for p=10%
    python sample/generate.py --model "$MODEL" --questions "$DATA/gsm8k/train.jsonl" --answer-field answer \
      --limit "$N_TRAIN" --mode upft --L 32 --p 0.1 --max-new-tokens 512 --temperature 0.6 \
      --batch-size 2048 ${BACKEND:+--backend $BACKEND} --out "$RUNS/sample-upft${BACKEND:+-$BACKEND}"
    python data_prep/build.py --samples "$RUNS/sample-upft${BACKEND:+-$BACKEND}" --method upft --L 32 \
      --out "$RUNS/prep-upft${BACKEND:+-$BACKEND}" ;;
  train-openrlhf)  # OpenRLHF + DeepSpeed, one GPU, 1 epoch, paper LR/schedule, global batch 64
    bash scripts/train_sft.sh --data "$RUNS/prep-upft" --model "$MODEL" --out "$RUNS/model-openrlhf" \
      --gpus 1 --zero-stage 2 --no-adam-offload --attn sdpa --micro-batch 8 --max-len 1024 ;;
  eval-openrlhf)
    python eval/run_eval.py --model "$RUNS/model-openrlhf" --benchmarks gsm8k $EVAL \
      --label "UPFT (OpenRLHF)" --out "$RUNS/eval-openrlhf" ;;
  vllm-sample)
    BACKEND=vllm bash "$0" sample-upft ;;
  vllm-eval)
    python eval/run_eval.py --model "$MODEL" --benchmarks gsm8k $EVAL --backend vllm \
      --label "base (vLLM)" --out "$RUNS/eval-base-vllm" ;;
  *) echo "error: unknown step '$1'" >&2; exit 2 ;;
esac
