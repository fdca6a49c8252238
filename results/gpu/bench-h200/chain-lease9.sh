#!/usr/bin/env bash
# lease 9 (two H200s of one host, nvidia-h200-x2): bench.sh's groups split over the two GPUs, each
# GPU's groups one after another; a group that fails does not stop the next. Logs: RUNS/chain-gpuN.log
#   bash results/gpu/bench-h200/chain-lease9.sh     (from the repo root, after staging)
# The record of what ran; scripts/gpu/lease.sh (start, then wait calls) now does this for any groups.
export PATH=/root/bin:/root/site/bin:$PATH HF_HUB_OFFLINE=1 PYTHONPATH=/root/site:/root/src
export MODEL=/root/qwen2.5-coder-1.5b-instruct.gguf DATA=/root/data RUNS=/root/bench
chain() {  # GPU GROUP...
  local gpu=$1; shift
  for group in "$@"; do
    echo "## $group $(date +%T)"
    CUDA_VISIBLE_DEVICES=$gpu STAGES=$group bash scripts/gpu/bench.sh || echo "## $group failed: $?"
  done
  echo "## end $(date +%T)"
}
mkdir -p "$RUNS"
chain 0 vllm openrlhf vllm-variants > "$RUNS/chain-gpu0.log" 2>&1 &
chain 1 transformers decode-steps engine-seed continuous > "$RUNS/chain-gpu1.log" 2>&1 &
wait
