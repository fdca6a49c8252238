#!/usr/bin/env bash
# Issue 10's device proof on one node with 4 GPUs: both trainers, UPFT and SFT, then GSM8K.
#   MODEL=qwen.gguf DATA=../shared/data RUNS=/root/runs bash scripts/gpu/trainer_check.sh start
#   bash scripts/gpu/trainer_check.sh status      # progress of the four job chains
#   python scripts/gpu/trainer_check.py RUNS OUT.json   # results/gpu/trainer_check.json from the runs
# start runs four chains in the background, one per GPU (CUDA_VISIBLE_DEVICES=i), logs in RUNS/logs:
#   gpu0: sample UPFT (L=32, p=0.1) -> prep -> local trainer mb 8 -> eval -> local trainer mb 1 -> eval
#   gpu1: sample full -> prep SFT -> local trainer mb 8 -> eval
#   gpu2: base eval -> (UPFT set) OpenRLHF per-token -> eval -> OpenRLHF per-sample -> eval
#   gpu3: the attention NaN reproduction (scripts/gpu/attention_nan.py) -> (SFT set) OpenRLHF per-sample -> eval
# Every step skips itself when its output holds the same run, so start again after a crash; another LR
# (LR=1e-6 ... start) reuses the samples and training sets and names its runs NAME-lr1e-6.
# A training the model check refuses (e.g. UPFT at lr 1e-5 stops early, see upft.health) is listed in
# RUNS/refused and its chain goes on; trainer_check.py then reports the runs that exist.
# Needs `python` on PATH (the package's convention). On a node that only has python3 in a venv, make a
# wrapper, never a symlink (a symlink loses the venv, and writing a file through it overwrites the
# interpreter): rm -f /root/bin/python; printf '#!/bin/sh\nexec python3 "$@"\n' > /root/bin/python
# Stop a started check with: pkill -f 'trainer_check[.]sh' (the brackets keep pkill off its own shell).
# OpenRLHF without flash-attn needs tests/gpu/stubs on PYTHONPATH (see tests/gpu/stubs/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RUNS:=/root/runs}"
N_TRAIN=${N_TRAIN:-2000} LR=${LR:-1e-5} MB1=${MB1:-1}  # MB1=0: skip the 12-minute micro-batch-1 run
EVAL=(--benchmarks gsm8k --data-dir "${DATA:-}" --max-new-tokens 512 --batch-size 2048)
SAMPLE=(--questions "${DATA:-}/gsm8k/train.jsonl" --answer-field answer --limit "$N_TRAIN" --max-new-tokens 512
        --temperature 0.6 --batch-size 512)  # 2048 prompts at once ran out of memory on an H100 (80 GB)
TRAIN=(--lr "$LR" --epochs 1 --batch-size 64 --max-len 1024)
SFX=$([ "$LR" = 1e-5 ] || echo "-lr$LR")

wait_for() {  # a file another chain writes; give up after 20 minutes
  for _ in $(seq 240); do [ -f "$1" ] && return 0; sleep 5; done; echo "error: gave up waiting for $1" >&2; exit 1
}
evaluate() {  # name (skipped when its training was refused)
  [ -d "$RUNS/$1$SFX" ] || return 0
  python eval/run_eval.py --model "$RUNS/$1$SFX" "${EVAL[@]}" --label "$1$SFX" --out "$RUNS/eval-$1$SFX"
}
refused() { echo "$1$SFX" >> "$RUNS/refused"; }
local_train() {  # name data micro-batch
  python train/train_local.py --data "$RUNS/$2" --model "$MODEL" --out "$RUNS/$1$SFX" "${TRAIN[@]}" \
    --micro-batch "$3" || refused "$1"
}
openrlhf_train() {  # name data master-port loss-avg
  PYTHONPATH="$PWD/tests/gpu/stubs:${PYTHONPATH:-}" TORCH_CUDA_ARCH_LIST=9.0 bash scripts/train_sft.sh \
    --data "$RUNS/$2" --model "$MODEL" --out "$RUNS/$1$SFX" "${TRAIN[@]}" --gpus 1 --micro-batch 8 \
    --zero-stage 2 --no-adam-offload --attn sdpa --loss-avg "$4" --master-port "$3" || refused "$1"
}

chain() {  # one GPU's jobs, in order; set -e stops the chain at the first failure
  case "$1" in
    0) python sample/generate.py --model "$MODEL" "${SAMPLE[@]}" --mode upft --L 32 --p 0.1 --out "$RUNS/sample-upft"
       python data_prep/build.py --samples "$RUNS/sample-upft" --method upft --L 32 --out "$RUNS/prep-upft"
       local_train local-upft-mb8 prep-upft 8
       evaluate local-upft-mb8
       if [ "$MB1" = 1 ]; then local_train local-upft-mb1 prep-upft 1; evaluate local-upft-mb1; fi ;;
    1) python sample/generate.py --model "$MODEL" "${SAMPLE[@]}" --mode full --out "$RUNS/sample-full"
       python data_prep/build.py --samples "$RUNS/sample-full" --method sft --out "$RUNS/prep-sft"
       local_train local-sft-mb8 prep-sft 8
       evaluate local-sft-mb8 ;;
    2) python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --label base --out "$RUNS/eval-base"
       wait_for "$RUNS/prep-upft/manifest.json"
       openrlhf_train openrlhf-upft-token prep-upft 29510 token
       evaluate openrlhf-upft-token
       openrlhf_train openrlhf-upft prep-upft 29510 sample
       evaluate openrlhf-upft ;;
    3) python scripts/gpu/attention_nan.py --model "$MODEL" --questions "$DATA/gsm8k/train.jsonl" \
         --out "$RUNS/attention_nan.json" || true  # a diagnostic: its result is the file, not the status
       wait_for "$RUNS/prep-sft/manifest.json"
       openrlhf_train openrlhf-sft prep-sft 29511 sample
       evaluate openrlhf-sft ;;
  esac
}

case "${1:-}" in
  start)
    : "${MODEL:?set MODEL}" "${DATA:?set DATA}"
    mkdir -p "$RUNS/logs"; rm -f "$RUNS/failed" "$RUNS/refused"
    python -c "import sys; from upft.models import resolve_model; print(resolve_model(sys.argv[1]))" "$MODEL"
    for i in 0 1 2 3; do
      CUDA_VISIBLE_DEVICES=$i setsid bash -c "bash '$0' chain $i > '$RUNS/logs/gpu$i.log' 2>&1 \
        && touch '$RUNS/logs/gpu$i.done' || echo 'chain $i failed' >> '$RUNS/failed'" < /dev/null > /dev/null 2>&1 &
    done ;;
  chain) chain "$2" ;;
  status)
    for i in 0 1 2 3; do
      s=running; [ -f "$RUNS/logs/gpu$i.done" ] && s=done
      echo "gpu$i: $s: $(grep -a -E '^\[|error|Error|%' "$RUNS/logs/gpu$i.log" 2>/dev/null | tail -1 | cut -c1-150)"
    done
    cat "$RUNS/failed" "$RUNS/refused" 2>/dev/null; true ;;
  *) echo "error: usage: trainer_check.sh start|status" >&2; exit 2 ;;
esac
