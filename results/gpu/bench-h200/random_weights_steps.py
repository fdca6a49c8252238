"""Lease 8b: scripts/gpu/decode_steps.py's timing on a model of Qwen2.5-1.5B's shape with random
bf16 weights (no model to stage: the timing of a step depends on shapes, not on weights; a stop id
outside the vocabulary keeps every row decoding). Eager (dynamic cache) vs compiled (static cache),
then compiled steps of a second batch size and a second prompt width, which compile again.
  cd scripts/gpu && PYTHONPATH=../.. python ../../results/gpu/bench-h200/random_weights_steps.py
"""
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from decode_steps import run

cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="sdpa")
torch.manual_seed(0)
with torch.device("cuda"):
    torch.set_default_dtype(torch.bfloat16)
    model = Qwen2ForCausalLM(cfg).eval()
print(torch.cuda.get_device_name(), flush=True)


def prompts(rows: int, width: int) -> list[list[int]]:
    return [[100 + (i * 7 + j) % 1000 for j in range(width - i % 50)] for i in range(rows)]


for compile_decode, rows, width in (("never", 200, 200), ("never", 512, 200), ("always", 200, 200),
                                    ("always", 200, 200), ("always", 512, 200), ("always", 464, 200),
                                    ("always", 512, 180)):
    t = time.time()
    r = run(model, prompts(rows, width), compile_decode, 64, [cfg.vocab_size + 7], 0)
    print(json.dumps({**r, "width": width, "call_s": round(time.time() - t, 1)}), flush=True)
