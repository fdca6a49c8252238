#!/usr/bin/env bash
# lease 8 (one H200), run as lease/chain.sh: bench groups in priority order, one GPU, one after another
cd /root/src
export PATH=/root/bin:/root/site/bin:$PATH HF_HUB_OFFLINE=1 PYTHONPATH=/root/site:/root/src
export MODEL=/root/qwen2.5-coder-1.5b-instruct.gguf DATA=/root/data RUNS=/root/bench
B=scripts/gpu/bench.sh
EVAL=(--model "$MODEL" --benchmarks gsm8k --data-dir "$DATA" --max-new-tokens 512 --backend vllm)
stamp() { echo "## $1 $(date +%T)"; }
stamp vllm; STAGES=vllm bash $B
stamp transformers; STAGES=transformers bash $B
for run in graphs1024-cold graphs1024; do
  stamp $run; VLLM_CACHE_ROOT=$RUNS/vllm-cache-graphs1024 python eval/run_eval.py "${EVAL[@]}" --max-cudagraph-size 1024 --out $RUNS/eval-vllm-$run
done
stamp prep; python data_prep/build.py --samples $RUNS/full-vllm-draw --method sft --out $RUNS/prep-sft
sft() {
  PYTHONPATH="$PWD/tests/gpu/stubs:$PYTHONPATH" TORCH_CUDA_ARCH_LIST=9.0 bash scripts/train_sft.sh \
    --data "$RUNS/prep-sft" --model "$MODEL" --gpus 1 --micro-batch 8 --zero-stage 2 --no-adam-offload \
    --attn sdpa --max-len 1024 --lr 1e-6 "$@"
}
stamp openrlhf-1; sft --seed 1 --out "$RUNS/openrlhf-1"
stamp decode-steps; STAGES=decode-steps bash $B
stamp openrlhf-fast16; sft --seed 1 --group-by-length --no-gradient-checkpointing --micro-batch 16 --out "$RUNS/openrlhf-fast16"
stamp rest; STAGES=vllm-variants,openrlhf,engine-seed bash $B
stamp end
