#!/usr/bin/env bash
# Lease 12 (two H200s, device kind nvidia-h200-x2, a queue per GPU): OpenRLHF runs of bench.sh's `sft`
# command on the SFT set of bench.sh's openrlhf group, taken from a queue file that grows while the
# lease runs (one run a line: NAME then the run's flags; END stops; no blank lines), so that what the
# profile shows can be tried at once.
#   MODEL=... DATA=... RUNS=/root/bench bash tune.sh QUEUE > RUNS/tune.log
set -uo pipefail
queue=${1:?usage: tune.sh QUEUE}
cd "$(dirname "$0")/../../../.."
sft() {  # bench.sh's sft
  PYTHONPATH="$PWD/tests/gpu/stubs:${PYTHONPATH:-}" TORCH_CUDA_ARCH_LIST=9.0 bash scripts/train_sft.sh \
    --data "$RUNS/prep-sft" --model "$MODEL" --gpus 1 --micro-batch 8 --zero-stage 2 --no-adam-offload \
    --attn sdpa --max-len 1024 --lr 1e-6 "$@"
}
echo "## draw $(date +%T)"
VLLM_CACHE_ROOT="$RUNS/vllm-cache-sft" python sample/generate.py --model "$MODEL" --questions "$DATA/gsm8k/train.jsonl" \
  --answer-field answer --limit 2000 --max-new-tokens 512 --temperature 0.6 --backend vllm --mode full \
  --out "$RUNS/full-vllm-sft" || { echo "## draw failed: $?"; echo "## end $(date +%T)"; exit 1; }
python data_prep/build.py --samples "$RUNS/full-vllm-sft" --method sft --out "$RUNS/prep-sft" ||
  { echo "## build failed: $?"; echo "## end $(date +%T)"; exit 1; }
n=0
while :; do
  line=$(sed -n "$((n + 1))p" "$queue")
  [ -n "$line" ] || { sleep 5; continue; }
  n=$((n + 1))
  [ "$line" != END ] || break
  name=${line%% *} args=${line#* }
  echo "## $name $(date +%T)"
  # shellcheck disable=SC2086  # the flags split on spaces
  sft --out "$RUNS/$name" $args || echo "## $name failed: $?"
done
echo "## end $(date +%T)"
