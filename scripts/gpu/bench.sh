#!/usr/bin/env bash
# Issue 14's speed measurements on one GPU, side by side in one lease -> results/gpu/perf.json:
#   MODEL=qwen2.5-coder-1.5b-instruct.gguf DATA=../shared/data RUNS=/root/bench bash scripts/gpu/bench.sh
# Every stage skips itself when done, so a rerun resumes; then scripts/gpu/perf.py collects the
# manifests and summaries. STAGES picks groups, in the order given (default: all, as below), for a
# lease with little GPU time left; groups can also run at once on different GPUs
# (CUDA_VISIBLE_DEVICES=i STAGES=... each), at the price of timings taken on a busy host:
#   vllm            GSM8K eval from a cold and a warm compile cache; UPFT (L=32, p=0.1) vs full sampling
#                   of the same 2000 GSM8K train questions, a seed per draw
#   transformers    the same UPFT and full sampling, and the GSM8K eval from a cold start
#   engine-seed     vLLM's UPFT and full sampling with --engine-seed
#   vllm-variants   the GSM8K eval with 2048 sequences at once and CUDA graphs up to 2048 (the default
#                   runs up to 1024 on an H100/H200 and captures graphs up to 512), twice, in its own
#                   compile cache; then UPFT and full sampling with it (all 2000 UPFT draws at once),
#                   a seed per draw and with --engine-seed.
#                   The fastest setting so far (lease 10); graphs up to 1024 alone gained nothing there
#   speculative     vllm-variants' settings with vLLM's n-gram speculation (--speculative-ngram 4): UPFT
#                   and full sampling, then the GSM8K eval, in its own compile cache
#   runner-v2       vllm-variants' settings with vLLM's model runner v2 (--model-runner v2: a step's
#                   seeded noise in one kernel): UPFT and full sampling, then the GSM8K eval, in its
#                   own compile cache. Compare with vllm-variants' runs of the same lease
#   upft-parts      runner-v2's UPFT pass in parts, in its compile cache (run after runner-v2): the 2000
#                   prompts with one token each (--L 1 --p 0: their prefill, the floor of any pass over
#                   them), then their 32-token prefixes alone (--p 0: no full draw)
#   decode-graphs   runner-v2's runs with CUDA graphs for decoding steps alone (--cudagraph-mode
#                   FULL_DECODE_ONLY: half the graphs to capture at each engine start), in its own compile
#                   cache. Compare with runner-v2's runs of the same lease
#   repeat          the warm GSM8K evals of vllm-variants and vllm once more, back to back (run it last,
#                   with the other GPUs idle: an idle host's figures)
#   openrlhf        OpenRLHF SFT runs: one plain, then the fastest settings: --group-by-length
#                   --no-gradient-checkpointing --micro-batch 16, Liger's kernels, ZeRO stage 0,
#                   --causal-attention and --trained-logits; that without --trained-logits; the fastest
#                   in micro-batches of 32, and profiled; a second plain one (it must load DeepSpeed's
#                   ops, not build them); the fast one with micro-batches of 16, with Liger's kernels,
#                   with them and ZeRO stage 0, and of 8; it first draws the full vLLM samples its set
#                   is built from (full-vllm-sft, untimed; SFT_DRAW=NAME builds it from RUNS/NAME, a full
#                   draw an earlier group of the same chain made: another draw than full-vllm-sft's, so
#                   its losses compare within the lease only)
#   openrlhf-short  the openrlhf group's first two runs alone (the plain run, which builds DeepSpeed's op,
#                   and the fastest settings, which must load it: issue 14's OpenRLHF figures), so that a
#                   short lease's chain ends on its own: "runner-v2 upft-parts transformers openrlhf-short"
#   openrlhf-alloc  after openrlhf-short: its fastest run with PyTorch's expandable memory segments
#                   (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True), then without them once more
#                   (openrlhf-trained16-repeat)
#   trained-logits  --trained-logits beside the same runs without it: at the launcher's ZeRO stage 3 with
#                   gradient checkpointing on the SFT set; with the fastest settings on a UPFT set; at
#                   ZeRO stage 3 on the UPFT set
#   variants        transformers without compiling (--compile-decode never)
#   sdpa            the transformers group's GSM8K eval from a cold start, and variants' eval, with
#                   transformers' own attention (--attention sdpa): the control of the grouped steps
#   continuous      transformers' continuous batching (--continuous-batching)
#   decode-steps    the wall time of one transformers decoding step by batch size and KV cache
# OpenRLHF without flash-attn needs tests/gpu/stubs on PYTHONPATH (added below for those runs only).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL}" "${DATA:?set DATA}" "${RUNS:=/root/bench}"
: "${STAGES:=vllm transformers engine-seed vllm-variants speculative runner-v2 upft-parts decode-graphs openrlhf openrlhf-alloc \
trained-logits variants sdpa continuous decode-steps repeat}"
Q=(--questions "$DATA/gsm8k/train.jsonl" --answer-field answer --limit 2000 --max-new-tokens 512 --temperature 0.6)
EVAL=(--benchmarks gsm8k --data-dir "$DATA" --max-new-tokens 512)
export VLLM_CACHE_ROOT="$RUNS/vllm-cache"  # starts empty: the first engine start compiles (cold)
V2048=(--max-num-seqs 2048 --max-cudagraph-size 2048) V2048_CACHE="$RUNS/vllm-cache-seqs2048-graphs2048"
V2=(--model-runner v2) V2_CACHE="$RUNS/vllm-cache-v2"  # runner-v2's flag and compile cache (upft-parts' too)

vllm_sampling() {  # NAME MODE (upft, full) [FLAGS...] -> RUNS/MODE-vllm-NAME
  local mode=(--mode full); [ "$2" = upft ] && mode=(--mode upft --L 32 --p 0.1)
  python sample/generate.py --model "$MODEL" "${Q[@]}" --backend vllm "${mode[@]}" "${@:3}" --out "$RUNS/$2-vllm-$1"
}
vllm() {
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm --out "$RUNS/eval-vllm-cold"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm --out "$RUNS/eval-vllm-warm"
  vllm_sampling draw upft
  vllm_sampling draw full
}
engine-seed() {
  vllm_sampling engine upft --engine-seed
  vllm_sampling engine full --engine-seed
}
transformers() {
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode upft --L 32 --p 0.1 \
    --out "$RUNS/upft-transformers"
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode full --out "$RUNS/full-transformers"
  TORCHINDUCTOR_CACHE_DIR="$RUNS/inductor-cold" python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" \
    --batch-size 2048 --out "$RUNS/eval-transformers-cold"
}
vllm-variants() {  # the eval twice in its own compile cache (the first run fills it, the second is
  # compared with eval-vllm-warm), then UPFT and full sampling with the same flags
  for run in seqs2048-graphs2048-cold seqs2048-graphs2048; do
    VLLM_CACHE_ROOT=$V2048_CACHE python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm "${V2048[@]}" \
      --out "$RUNS/eval-vllm-$run"
  done
  for mode in upft full; do VLLM_CACHE_ROOT=$V2048_CACHE vllm_sampling seqs2048-graphs2048 "$mode" "${V2048[@]}"; done
  for mode in upft full; do  # and with the engine's seed alone (faster sampling; a draw depends on its batch)
    VLLM_CACHE_ROOT=$V2048_CACHE vllm_sampling seqs2048-graphs2048-engine "$mode" "${V2048[@]}" --engine-seed
  done
}
v2048_variant() {  # SUFFIX CACHE FLAGS...: vllm-variants' UPFT and full sampling, then its GSM8K eval,
  # with FLAGS added, in compile cache CACHE (the first engine start compiles), as *-seqs2048-graphs2048-SUFFIX
  local name="seqs2048-graphs2048-$1" cache=$2 flags=("${V2048[@]}" "${@:3}")
  for mode in upft full; do VLLM_CACHE_ROOT=$cache vllm_sampling "$name" "$mode" "${flags[@]}"; done
  VLLM_CACHE_ROOT=$cache python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm "${flags[@]}" \
    --out "$RUNS/eval-vllm-$name"
}
speculative() {  # vLLM's n-gram speculation (--speculative-ngram 4) with vllm-variants' settings (the
  # eval is greedy, so its answers should be the ones without speculation). A speculating sequence takes
  # up to 5 tokens of a step, so graphs up to 2048 tokens cover steps of about 400 sequences: UPFT's tail
  # of about 200 full draws, not the first waves of full sampling or the eval (vllm-variants' graph every
  # step). Compare with vllm-variants' runs
  v2048_variant ngram4 "$RUNS/vllm-cache-ngram4" --speculative-ngram 4
}
runner-v2() {  # vLLM's model runner v2 with vllm-variants' settings (greedy eval: its accuracy should be
  # vllm-variants'). v1 draws a step's seeded noise with a kernel launch per draw from Python, v2 in one
  # kernel: the draws differ, the distribution does not
  v2048_variant v2 "$V2_CACHE" "${V2[@]}"
}
upft-parts() {  # where runner-v2's UPFT pass spends its time, beside its full pass of the same lease: the
  # prompts' prefill (one token each), the prefixes without the fraction p of full draws, and (runner-v2's
  # own pass) with them. Both engines start warm in runner-v2's compile cache
  [ -f "$RUNS/full-vllm-seqs2048-graphs2048-v2/manifest.json" ] ||
    { echo "error: the upft-parts group is compared with runner-v2's passes, which have not run in $RUNS (run runner-v2 first)" >&2; return 2; }
  VLLM_CACHE_ROOT=$V2_CACHE vllm_sampling seqs2048-graphs2048-v2-prefill upft "${V2048[@]}" "${V2[@]}" --L 1 --p 0
  VLLM_CACHE_ROOT=$V2_CACHE vllm_sampling seqs2048-graphs2048-v2-prefixes upft "${V2048[@]}" "${V2[@]}" --p 0
}
decode-graphs() {  # runner-v2 capturing whole-step graphs for decoding steps alone (vLLM's
  # FULL_DECODE_ONLY), not also piecewise ones for steps with prompt tokens: a faster engine start
  v2048_variant v2-decode-graphs "$RUNS/vllm-cache-v2-decode-graphs" --model-runner v2 \
    --cudagraph-mode FULL_DECODE_ONLY
}
repeat() {  # after vllm-variants and vllm (their compile caches warm): each warm eval once more
  local stage
  for stage in eval-vllm-seqs2048-graphs2048 eval-vllm-warm; do  # else the repeats would be cold runs
    [ -f "$RUNS/$stage/manifest.json" ] ||
      { echo "error: the repeat group repeats $stage, which has not run in $RUNS (run vllm and vllm-variants first)" >&2; return 2; }
  done
  VLLM_CACHE_ROOT=$V2048_CACHE python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm "${V2048[@]}" \
    --out "$RUNS/eval-vllm-seqs2048-graphs2048-repeat"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --backend vllm --out "$RUNS/eval-vllm-warm-repeat"
}
train() {  # SET FLAGS...: one OpenRLHF run on RUNS/prep-SET, on one GPU
  PYTHONPATH="$PWD/tests/gpu/stubs:${PYTHONPATH:-}" TORCH_CUDA_ARCH_LIST=9.0 bash scripts/train_sft.sh \
    --data "$RUNS/prep-$1" --model "$MODEL" --gpus 1 --micro-batch 8 --zero-stage 2 --no-adam-offload \
    --attn sdpa --max-len 1024 --lr 1e-6 "${@:2}"
}
sft() { train sft "$@"; }
# the fastest OpenRLHF settings (leases 13-14): less padding, no recomputation, the same rows per step
# (seed 1); ZeRO stage 0 and causal attention; Liger's fused kernels (passed through to OpenRLHF)
FAST=(--seed 1 --group-by-length --no-gradient-checkpointing) BEST=(--zero-stage 0 --causal-attention)
LIGER=(-- --ds.use_liger_kernel)
sft_set() {
  # the SFT set's samples, drawn apart from the vllm group's timed draws and compile cache, so the
  # two groups can run at once on two GPUs (the same draws: a seed per draw); or SFT_DRAW, a full
  # draw of the same questions an earlier group of the lease made (say full-vllm-seqs2048-graphs2048-v2,
  # runner-v2's): no engine start and draw of its own, about 2.5 minutes of an H100 lease
  local draw=${SFT_DRAW:-full-vllm-sft}
  if [ -z "${SFT_DRAW:-}" ]; then
    VLLM_CACHE_ROOT="$RUNS/vllm-cache-sft" vllm_sampling sft full
  elif [ ! -f "$RUNS/$draw/manifest.json" ]; then
    echo "error: SFT_DRAW=$draw has not finished in $RUNS (run the group that draws it first)" >&2; return 2
  fi
  python data_prep/build.py --samples "$RUNS/$draw" --method sft --out "$RUNS/prep-sft"
}
openrlhf() {
  # the plain run first (it builds DeepSpeed's Adam op; perf.py compares every other run's losses
  # with it), then the fastest settings, as a lease of one GPU may end before the group does:
  # micro-batches of 16 with less padding, no recomputation, Liger's fused kernels, ZeRO stage 0, causal
  # attention and the trained positions' logits alone (the fastest, lease 14; the second run, so it
  # also shows the op loaded, not built); that with every position's logits (lease 13's fastest); the
  # fastest in micro-batches of 32 (with the same settings but OpenRLHF's float32 logits of every
  # position, 32 ran out of GPU memory in lease 13); the fastest with 8 of its micro-steps profiled
  # (where a step's time goes; untimed); a second plain run (its ops must load, not build); the fast
  # run without the newer settings: in micro-batches of 16; with Liger's kernels; with them and ZeRO
  # stage 0; in micro-batches of 8. A trained-logits run that fails (out of memory, say) is logged
  # and the group goes on, as is the causal16 run (every position's float32 logits at micro-batch 16 ran
  # out of memory on an 80 GB H100 in lease 18).
  local fast=("${FAST[@]}") best=("${BEST[@]}") liger=("${LIGER[@]}")
  openrlhf-short
  sft "${fast[@]}" --micro-batch 16 "${best[@]}" --out "$RUNS/openrlhf-causal16" "${liger[@]}" \
    || echo "## openrlhf-causal16 failed: $?"
  sft "${fast[@]}" --micro-batch 32 "${best[@]}" --trained-logits --out "$RUNS/openrlhf-trained32" "${liger[@]}" \
    || echo "## openrlhf-trained32 failed: $?"
  sft "${fast[@]}" --micro-batch 16 "${best[@]}" --trained-logits --out "$RUNS/openrlhf-profile" "${liger[@]}" \
    --upft.profile_steps 8 || echo "## openrlhf-profile failed: $?"
  sft --seed 2 --out "$RUNS/openrlhf-2"
  sft "${fast[@]}" --micro-batch 16 --out "$RUNS/openrlhf-fast16"
  sft "${fast[@]}" --micro-batch 16 --out "$RUNS/openrlhf-liger16" "${liger[@]}"
  sft "${fast[@]}" --micro-batch 16 --zero-stage 0 --out "$RUNS/openrlhf-liger16-zero0" "${liger[@]}"
  sft "${fast[@]}" --out "$RUNS/openrlhf-fast"
}
trained16() {  # NAME: the fastest settings (a failure is logged and the group goes on) -> RUNS/NAME
  sft "${FAST[@]}" --micro-batch 16 "${BEST[@]}" --trained-logits --out "$RUNS/$1" "${LIGER[@]}" || echo "## $1 failed: $?"
}
openrlhf-short() {  # the openrlhf group's first two runs (see there)
  sft_set
  sft --seed 1 --out "$RUNS/openrlhf-1"
  trained16 openrlhf-trained16
}
openrlhf-alloc() {  # after openrlhf-short: its fastest run with PyTorch's expandable memory segments (a
  # segment grows in place where the caching allocator would otherwise reserve blocks for each new row
  # length, and free them all, with a wait on the GPU, when memory runs short), then the same run without
  # them once more, so that the lease's own spread brackets the figure. It needs openrlhf-short's plain
  # run (the loss reference; it built DeepSpeed's op), not its fastest one, which may have failed
  [ -f "$RUNS/openrlhf-1/manifest.json" ] ||
    { echo "error: the openrlhf-alloc group is compared with openrlhf-short's runs, which have not run in $RUNS (run openrlhf-short first)" >&2; return 2; }
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True trained16 openrlhf-trained16-expandable
  trained16 openrlhf-trained16-repeat
}
trained-logits() {
  # --trained-logits where the openrlhf group does not run it, each run beside the same run without it
  # (the same seed: the same rows per step, so the losses compare step by step): the launcher's own
  # settings (ZeRO stage 3, gradient checkpointing; micro-batches of 8 and no Liger here), where
  # DeepSpeed gathers the output layer's weights as it runs; UPFT's set (L=32, p=0.1, drawn as the SFT
  # set), whose prefix rows train few of their positions, with the fastest settings; the launcher's
  # settings on the UPFT set (the openrlhf group's fastest run once more is openrlhf-alloc's). A
  # trained-logits run that fails is logged and the group goes on.
  local fast=("${FAST[@]}" --micro-batch 16 "${BEST[@]}") liger=("${LIGER[@]}")
  sft_set
  VLLM_CACHE_ROOT="$RUNS/vllm-cache-sft" vllm_sampling sft upft
  python data_prep/build.py --samples "$RUNS/upft-vllm-sft" --method upft --L 32 --out "$RUNS/prep-upft"
  sft --seed 1 --zero-stage 3 --out "$RUNS/openrlhf-zero3"
  sft --seed 1 --zero-stage 3 --trained-logits --out "$RUNS/openrlhf-zero3-trained" \
    || echo "## openrlhf-zero3-trained failed: $?"
  train upft "${fast[@]}" --out "$RUNS/openrlhf-upft-causal16" "${liger[@]}"
  train upft "${fast[@]}" --trained-logits --out "$RUNS/openrlhf-upft-trained16" "${liger[@]}" \
    || echo "## openrlhf-upft-trained16 failed: $?"
  train upft --seed 1 --zero-stage 3 --out "$RUNS/openrlhf-upft-zero3"
  train upft --seed 1 --zero-stage 3 --trained-logits --out "$RUNS/openrlhf-upft-zero3-trained" \
    || echo "## openrlhf-upft-zero3-trained failed: $?"
}
variants() {
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode upft --L 32 --p 0.1 \
    --compile-decode never --out "$RUNS/upft-transformers-eager"
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode full --compile-decode never \
    --out "$RUNS/full-transformers-eager"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --batch-size 2048 --compile-decode never \
    --out "$RUNS/eval-transformers-eager"
}
sdpa() {  # the same machine's speed and accuracy without upft.attention's grouped decoding steps
  TORCHINDUCTOR_CACHE_DIR="$RUNS/inductor-sdpa" python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" \
    --batch-size 2048 --attention sdpa --out "$RUNS/eval-transformers-sdpa-cold"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --batch-size 2048 --compile-decode never --attention sdpa \
    --out "$RUNS/eval-transformers-sdpa-eager"
}
continuous() {  # transformers' continuous batching: rows leave when done, each with its own length
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode upft --L 32 --p 0.1 \
    --continuous-batching --out "$RUNS/upft-transformers-cb"
  python sample/generate.py --model "$MODEL" "${Q[@]}" --batch-size 512 --mode full --continuous-batching \
    --out "$RUNS/full-transformers-cb"
  python eval/run_eval.py --model "$MODEL" "${EVAL[@]}" --batch-size 2048 --continuous-batching \
    --out "$RUNS/eval-transformers-cb"
}
decode-steps() {
  [ -f "$RUNS/decode_steps.json" ] ||
    TORCHINDUCTOR_CACHE_DIR="$RUNS/inductor-decode-steps" python scripts/gpu/decode_steps.py --model "$MODEL" --data "$DATA" \
      --out "$RUNS/decode_steps.json"
}

GROUPS_KNOWN=" vllm transformers engine-seed vllm-variants speculative runner-v2 upft-parts decode-graphs openrlhf openrlhf-short \
openrlhf-alloc trained-logits variants sdpa continuous decode-steps repeat "
for group in ${STAGES//,/ }; do  # all checked before the first runs
  [[ "$GROUPS_KNOWN" == *" $group "* ]] || { echo "error: unknown STAGES group '$group' (known:$GROUPS_KNOWN)" >&2; exit 2; }
done
[ -z "${BENCH_CHECK:-}" ] || exit 0  # BENCH_CHECK=1: check the settings only (scripts/gpu/lease.sh start)
mkdir -p "$RUNS"
for group in ${STAGES//,/ }; do "$group"; done
settings=default  # the runs that fill perf.json's vLLM evaluation and engine-start keys: runner-v2's where it ran
[[ " ${STAGES//,/ } " == *" runner-v2 "* ]] && settings=v2
python scripts/gpu/perf.py "$RUNS" results/gpu/perf.json --vllm-settings "$settings"
