#!/usr/bin/env bash
# A device lease's bench work, so that a lost connection costs only what ran since the last call:
# `start` runs bench.sh's groups as one detached chain per GPU and returns at once; each later call
# runs `wait`, which packs the finished figures into OUT every LEASE_POLL_S seconds (default 20) and
# returns when every chain has ended (exit 0) or after SECONDS (exit 3: call it again).
#   MODEL=... DATA=... RUNS=/root/bench bash scripts/gpu/lease.sh start "vllm openrlhf" "transformers decode-steps"
#   RUNS=/root/bench bash scripts/gpu/lease.sh wait "$OUT" 540
# Chain i runs on GPU i, its groups one after another; a group that fails is logged ("## GROUP failed:
# RC") and the next one runs. Logs: RUNS/chain-gpuI.log, packed with the figures (scripts/gpu/pack.sh).
set -euo pipefail
usage="usage: lease.sh start GROUPS... | lease.sh wait OUT [SECONDS]"
here=$PWD  # relative paths are the caller's, not the repo root's
export RUNS=$(realpath -m "${RUNS:-/root/bench}")
cd "$(dirname "$0")/../.."
chains="$RUNS/chains"  # the chains' log names, one per line
ended() {  # every chain of the last start has logged its end
  local log
  while read -r log; do grep -q '^## end ' "$RUNS/$log" 2> /dev/null || return 1; done < "$chains"
}
case "${1:-}" in
  start)
    shift
    [ $# -ge 1 ] || { echo "error: start needs the groups of at least one GPU ($usage)" >&2; exit 2; }
    if [ -f "$chains" ] && ! ended; then
      echo "error: the chains of an earlier start still run in $RUNS" >&2; exit 2
    fi
    for groups in "$@"; do STAGES=$groups BENCH_CHECK=1 "$BASH" scripts/gpu/bench.sh; done  # all before any runs
    mkdir -p "$RUNS"
    : > "$chains.part"
    gpu=0
    for groups in "$@"; do
      echo "chain-gpu$gpu.log" >> "$chains.part"
      CUDA_VISIBLE_DEVICES=$gpu setsid nohup "$BASH" -c 'for group in $1; do
          echo "## $group $(date +%T)"; STAGES=$group "$BASH" scripts/gpu/bench.sh || echo "## $group failed: $?"
        done; echo "## end $(date +%T)"' chain "$groups" > "$RUNS/chain-gpu$gpu.log" 2>&1 < /dev/null &
      echo "GPU $gpu: $groups"
      gpu=$((gpu + 1))
    done
    mv "$chains.part" "$chains"
    ;;
  wait)
    out=$(cd "$here" && realpath -m "${2:?$usage}") limit=${3:-540}
    [ -f "$chains" ] || { echo "error: no chains were started in $RUNS" >&2; exit 2; }
    mkdir -p "$out"
    t0=$SECONDS
    while :; do
      "$BASH" scripts/gpu/pack.sh "$RUNS" "$out/bench.tgz" > /dev/null
      while read -r log; do  # each chain's group and its last progress line
        echo "$log: $(grep -a '^## ' "$RUNS/$log" | tail -n 1) $(grep -a '^\[generate\]' "$RUNS/$log" | tail -n 1)"
      done < "$chains"
      if ended; then echo "every chain ended ($(date +%T))"; exit 0; fi
      [ $((SECONDS - t0)) -lt "$limit" ] || exit 3
      sleep "${LEASE_POLL_S:-20}"
    done
    ;;
  *) echo "error: $usage" >&2; exit 2 ;;
esac
