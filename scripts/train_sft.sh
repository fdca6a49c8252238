#!/usr/bin/env bash
# Multi-GPU / multi-node SFT with OpenRLHF + DeepSpeed on a file from data_prep/build.py.
# Paper defaults (LR 1e-6, constant with 3% warmup, global batch 64, ZeRO-3 + Adam offload,
# gradient checkpointing, bf16). Options: python -m upft.openrlhf_launcher --help.
#   one node, 8 GPUs:  bash scripts/train_sft.sh --data R/prep --model M --out R/model --gpus 8
#   two nodes:         on each node: bash scripts/train_sft.sh ... --gpus 8 --nnodes 2 --node-rank $RANK --master-addr $HEAD
#   see the command:   add --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ] && [ -z "${VIRTUAL_ENV:-}" ]; then . .venv/bin/activate; fi
exec python -m upft.openrlhf_launcher "$@"
