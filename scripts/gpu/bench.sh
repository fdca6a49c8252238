#!/usr/bin/env bash
# Issue 14's speed measurements on one GPU, side by side in one lease -> results/gpu/perf.json:
#   MODEL=qwen2.5-coder-1.5b-instruct.gguf DATA=../shared/data RUNS=/root/bench bash scripts/gpu/bench.sh
# vLLM GSM8K eval from a cold and a warm compile cache; UPFT (L=32, p=0.1) vs full sampling of the
# same 2000 GSM8K train questions on vLLM (a seed per draw, and --engine-seed) and on transformers;
# transformers GSM8K eval from a cold start; two OpenRLHF SFT runs (the second must load DeepSpeed's
# ops, not build them), and the first again with --group-by-length --no-gradient-checkpointing (and
# that with --micro-batch 16).
# Every stage skips itself when done, so a rerun resumes. Then scripts/gpu/perf.py collects the
# manifests and summaries. OpenRLHF without flash-attn needs tests/gpu/stubs on PYTHONPATH (added
# below for those runs only). STAGES picks groups for a lease with little GPU time left (default:
# all): vllm, transformers, openrlhf (which first draws the full vLLM samples its training set is
# built from, unless they are there), and settings that may be faster, each next to its default:
# variants (--compile-decode never on transformers), vllm-variants (the GSM8K eval with
# --max-num-seqs 2048 or 512, or --max-cudagraph-size 1024: vLLM decodes up to 1024 sequences at
# once on an H100 but captures CUDA graphs only up to 512; each run twice in its own compile cache,
# the warm run compared with eval-vllm-warm), continuous (transformers' UPFT and full sampling and
# evaluation with --continuous-batching). Groups can run at once on different GPUs
# (CUDA_VISIBLE_DEVICES=i STAGES=... each).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL}" "${DATA:?set DATA}" "${RUNS:=/root/bench}" "${STAGES:=vllm transformers openrlhf variants vllm-variants continuous}"
want() { [[ " ${STAGES//,/ } " == *" $1 "* ]]; }  # space- or comma-separated
Q=(--questions "$DATA/gsm8k/train.jsonl" --answer-field answer --limit 2000 --max-new-tokens 512 --temperature 0.6)
EVAL=(--benchmarks gsm8k --data-dir "$DATA" --max-new-tokens 512)
mkdir -p "$RUNS"
export VLLM_CACHE_ROOT="$RUNS/vllm-cache"  # starts empty: the first engine start compiles (cold)
if want vllm; then
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm --out "$RUNS/eval-vllm-cold"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm --out "$RUNS/eval-vllm-warm"
fi
for seeding in draw engine; do
  flag=(); [ "$seeding" = engine ] && flag=(--engine-seed)
  if want vllm; then
    python sample/generate.py --model "$MODEL" "${Q[@]}" --backend vllm "${flag[@]}" --mode upft --L 32 --p 0.1 \
      --out "$RUNS/upft-vllm-$seeding"
  fi
  if want vllm || { want openrlhf && [ "$seeding" = draw ]; }; then
    python sample/generate.py --model "$MODEL" "${Q[@]}" --backend vllm "${flag[@]}" --mode full \
      --out "$RUNS/full-vllm-$seeding"
  fi
done
if want transformers; then
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode upft --L 32 --p 0.1 \
    --out "$RUNS/upft-transformers"
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode full --out "$RUNS/full-transformers"
  TORCHINDUCTOR_CACHE_DIR="$RUNS/inductor-cold" python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" \
    --batch-size 2048 --out "$RUNS/eval-transformers-cold"
fi
if want variants; then
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode upft --L 32 --p 0.1 \
    --compile-decode never --out "$RUNS/upft-transformers-eager"
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode full --compile-decode never \
    --out "$RUNS/full-transformers-eager"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --batch-size 2048 --compile-decode never \
    --out "$RUNS/eval-transformers-eager"
fi
if want vllm-variants; then  # each twice, in its own compile cache: the first run fills it, the second is compared
  for variant in "seqs2048 --max-num-seqs 2048" "seqs512 --max-num-seqs 512" "graphs1024 --max-cudagraph-size 1024"; do
    read -r name flag value <<< "$variant"
    for run in "$name-cold" "$name"; do
      VLLM_CACHE_ROOT="$RUNS/vllm-cache-$name" python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm \
        "$flag" "$value" --out "$RUNS/eval-vllm-$run"
    done
  done
fi
if want continuous; then  # transformers' continuous batching: rows leave when done, each with its own length
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode upft --L 32 --p 0.1 \
    --continuous-batching --out "$RUNS/upft-transformers-cb"
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode full --continuous-batching \
    --out "$RUNS/full-transformers-cb"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --batch-size 2048 --continuous-batching \
    --out "$RUNS/eval-transformers-cb"
fi
if want openrlhf; then
  python data_prep/build.py --samples "$RUNS/full-vllm-draw" --method sft --out "$RUNS/prep-sft"
  sft() {  # one OpenRLHF run on the SFT set, on one GPU
    PYTHONPATH="$PWD/tests/gpu/stubs:${PYTHONPATH:-}" TORCH_CUDA_ARCH_LIST=9.0 bash scripts/train_sft.sh \
      --data "$RUNS/prep-sft" --model "$MODEL" --gpus 1 --micro-batch 8 --zero-stage 2 --no-adam-offload \
      --attn sdpa --max-len 1024 --lr 1e-6 "$@"
  }
  sft --seed 1 --out "$RUNS/openrlhf-1"
  sft --seed 2 --out "$RUNS/openrlhf-2"
  # the first run again, with less padding and no recomputation: the same steps, faster? And with
  # micro-batches of 16 (4 per step instead of 8): the same rows per step, fewer, fuller kernels
  sft --seed 1 --group-by-length --no-gradient-checkpointing --out "$RUNS/openrlhf-fast"
  sft --seed 1 --group-by-length --no-gradient-checkpointing --micro-batch 16 --out "$RUNS/openrlhf-fast16"
fi
python scripts/gpu/perf.py "$RUNS" results/gpu/perf.json
