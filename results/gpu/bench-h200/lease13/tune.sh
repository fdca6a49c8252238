#!/usr/bin/env bash
# Lease 13 (two H200s, device kind nvidia-h200-x2): OpenRLHF runs of bench.sh's `sft` command on the SFT
# set that bench.sh's openrlhf group draws and builds on GPU 0, taken from a queue file that may grow
# while the lease runs (one run a line: NAME then the run's flags; END stops; no blank lines). It starts
# once that set exists and GPU 1's chain (lease.sh start's second, the vllm group) has ended.
#   CUDA_VISIBLE_DEVICES=1 MODEL=... DATA=... RUNS=/root/bench bash tune.sh QUEUE > RUNS/tune.log
set -uo pipefail
queue=${1:?usage: tune.sh QUEUE}
cd "$(dirname "$0")/../../../.."
sft() {  # bench.sh's sft
  PYTHONPATH="$PWD/tests/gpu/stubs:${PYTHONPATH:-}" TORCH_CUDA_ARCH_LIST=9.0 bash scripts/train_sft.sh \
    --data "$RUNS/prep-sft" --model "$MODEL" --gpus 1 --micro-batch 8 --zero-stage 2 --no-adam-offload \
    --attn sdpa --max-len 1024 --lr 1e-6 "$@"
}
until [ -f "$RUNS/prep-sft/train.jsonl" ] && grep -q '^## end ' "$RUNS/chain-gpu1.log" 2> /dev/null; do sleep 5; done
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
