"""Reproduce, on the real model, the NaN that collapsed local training on H100 (issue 10).

Forward + backward of a padded micro-batch of real rows (GSM8K questions in the model's chat
template, each followed by its reference solution and the end-of-turn token), padded to several widths,
with torch's cuDNN attention backend allowed (its default) and turned off (what both our
trainers do), and once per row without padding (no attention mask, as micro-batch 1 runs).
cuDNN's SDPA backward returns NaN query gradients when a mask is passed, the padded length is
64 mod 128 and a row's log-sum-exp is below -88.7 (pytorch#196678); Qwen2.5 has such heads.

  python scripts/gpu/attention_nan.py --model M --questions ../shared/data/gsm8k/train.jsonl --out nan.json
"""

from __future__ import annotations

import argparse
import sys

import torch

from upft.models import end_of_turn_id, load_model, load_tokenizer, resolve_model
from upft.prompts import messages, render
from upft.manifests import environment
from upft.runio import read_jsonl, write_json
from upft.local_trainer import collate, loss_fn, tensorise

WIDTHS = (192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024)


def nonfinite_grads(model, batch: dict, cudnn: bool) -> tuple[int, float]:
    """Non-finite gradient entries and the loss of one forward/backward (bf16 autocast, fp32 weights)."""
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    model.zero_grad(set_to_none=True)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    labels = batch.pop("labels")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**batch)
    loss = loss_fn("sample")(out, labels, num_items_in_batch=labels.shape[0])
    loss.backward()
    bad = sum(int((~torch.isfinite(p.grad)).sum()) for p in model.parameters() if p.grad is not None)
    return bad, float(loss)


def pad_to(batch: dict, width: int, pad_id: int) -> dict:
    """Right-pad a collated batch to ``width`` columns (what a longer row in the batch would do)."""
    extra = width - batch["input_ids"].shape[1]
    fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--questions", required=True, help="GSM8K-style JSONL: question, answer (the solution)")
    ap.add_argument("--rows", type=int, default=8, help="rows per micro-batch")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    path = resolve_model(a.model)
    tok = load_tokenizer(path)
    model = load_model(path, "cuda", dtype="float32").train()
    eot = end_of_turn_id(tok)
    rows = tensorise([{"prompt_ids": render(tok, messages(q["question"], "boxed"))[1],
                       "target_ids": tok(q["answer"], add_special_tokens=False).input_ids + [eot]}
                      for q in read_jsonl(a.questions)[:a.rows]], 1024)
    batch = collate(tok.pad_token_id)(rows)
    results = []
    for width in (w for w in WIDTHS if w >= batch["input_ids"].shape[1]):
        for cudnn in (True, False):
            bad, loss = nonfinite_grads(model, pad_to(batch, width, tok.pad_token_id), cudnn)
            results.append({"width": width, "width_mod_128": width % 128, "cudnn_sdp": cudnn,
                            "nonfinite_grad_entries": bad, "loss": loss})
            print(results[-1], file=sys.stderr, flush=True)
    unpadded = 0
    for row in rows:  # micro-batch 1: no padding, so no mask reaches the attention kernel
        one = collate(tok.pad_token_id)([row])
        one.pop("attention_mask")
        unpadded += nonfinite_grads(model, one, True)[0]
    results.append({"width": None, "cudnn_sdp": True, "unpadded_rows": len(rows), "nonfinite_grad_entries": unpadded})
    write_json(a.out, {"model": a.model, "environment": environment(),
                       "cudnn_version": torch.backends.cudnn.version(), "results": results})


if __name__ == "__main__":
    main()
