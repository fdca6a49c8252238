#!/usr/bin/env bash
# lease 9c (two H200s, the session's last device time, one call): wait for the model's conversion,
# run bench.sh's vllm group on GPU 0 and its transformers group on GPU 1, and pack the finished
# figures into OUT every 20 s, so whatever ran comes back even when the call is cut at its limit.
#   bash results/gpu/bench-h200/lease9c.sh "$OUT"
# The record of what ran; scripts/gpu/lease.sh (start, then wait calls) now does this for any groups.
out=${1:?usage: lease9c.sh OUT}
export PATH=/root/bin:/root/site/bin:$PATH HF_HUB_OFFLINE=1 PYTHONPATH=/root/site:/root/src
export MODEL=/root/qwen2.5-coder-1.5b-instruct.gguf DATA=/root/data RUNS=/root/bench
mkdir -p "$RUNS"
until [ -f /root/conv.done ]; do sleep 1; done; echo "converted $(date +%T)"
(echo "## vllm $(date +%T)"; CUDA_VISIBLE_DEVICES=0 STAGES=vllm bash scripts/gpu/bench.sh; echo "## end $? $(date +%T)") > "$RUNS/chain-gpu0.log" 2>&1 &
(echo "## transformers $(date +%T)"; CUDA_VISIBLE_DEVICES=1 STAGES=transformers bash scripts/gpu/bench.sh; echo "## end $? $(date +%T)") > "$RUNS/chain-gpu1.log" 2>&1 &
while sleep 20; do
  bash scripts/gpu/pack.sh "$RUNS" "$out/bench.tgz" > /dev/null
  grep -ah "^## \|\[generate\] 2000\|\[generate\] 1319" "$RUNS"/chain-gpu*.log | tail -n 4
  [ "$(jobs -r | wc -l)" -gt 0 ] || break
done
