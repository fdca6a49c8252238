"""Where the transformers backend's decoding time goes: the wall time of one decoding step of
``generate``, by batch size, with the dynamic KV cache (no compile) and with the static cache that
our backend compiles for long decodes (``upft.generation.generation_config``), with the backend's
grouped decoding steps (``upft.attention``) and with transformers' own sdpa attention, which copies
each key/value head for its query heads in every step.

If a step of 200 rows costs about what a step of 1319 rows costs, decoding is bound by a per-step
cost (Python, kernel launches, a sync) and not by the GPU's work, and UPFT's few full-length draws
cost nearly as much as a batch of all of them. GSM8K test prompts, greedy, as the evaluation runs;
each run stops after ``--steps`` steps (a stopping criterion, so the static cache keeps the shape of
a 512-token decode) and a logits processor stamps the time of every step. Each run is then repeated
for a few steps under torch's profiler (compiled already), whose costliest operations say where a
step's time goes.

  python scripts/gpu/decode_steps.py --model M --data ../shared/data --out decode_steps.json
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from transformers import LogitsProcessor, StoppingCriteria

from upft.data import load_benchmark
from upft.errors import cli
from upft.generation import decode, generation_config
from upft.manifests import environment
from upft.models import end_of_turn_id, load_model, load_tokenizer, resolve_model
from upft.prompts import messages, render
from upft.runio import write_json


class Clock(LogitsProcessor):
    """Stamps the time each step's logits arrive (``generate`` has synchronised by then; ``sync`` waits
    for the GPU first, as scripts/gpu/compile_probe.py's clock does)."""

    def __init__(self, sync: bool = False):
        self.stamps: list[float] = []
        self.sync = sync

    def __call__(self, input_ids, scores):
        if self.sync:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


class StopAfter(StoppingCriteria):
    def __init__(self, steps: int):
        self.steps, self.seen = steps, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.seen += 1
        return torch.full((input_ids.shape[0],), self.seen >= self.steps, dtype=torch.bool, device=input_ids.device)


def run(model, prompts: list[list[int]], compile_decode: str, steps: int, stop_ids: list[int], pad: int) -> dict:
    """One greedy decode of ``prompts`` as the backend runs it (``upft.generation.decode``), stopped
    after ``steps`` steps."""
    config = generation_config(512, 0.0, 1.0, 0, stop_ids, pad, model.device.type, compile_decode)
    clock, t0 = Clock(), time.perf_counter()
    decode(model, prompts, config, logits_processor=[clock], stopping_criteria=[StopAfter(steps)])
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    gaps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][len(clock.stamps) // 4:]  # past warm-up
    return {"rows": len(prompts), "cache": "static, compiled" if compile_decode == "always" else "dynamic",
            "steps": len(clock.stamps), "wall_s": round(time.perf_counter() - t0, 2),
            "first_step_s": round(clock.stamps[0] - t0, 2), "step_ms": round(1000 * statistics.median(gaps), 1) if gaps else None}


def profile(model, prompts: list[list[int]], compile_decode: str, stop_ids: list[int], pad: int,
            top: int = 15) -> list[dict]:
    """The ``top`` operations by their own CPU time over a short repeat of ``run`` (prefill and 12 steps)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        run(model, prompts, compile_decode, 12, stop_ids, pad)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
             "cpu_total_ms": round(e.cpu_time_total / 1000, 1),
             "device_ms": round(getattr(e, "device_time_total", 0.0) / 1000, 1)} for e in rows]


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the benchmark mirror (its gsm8k/ folder)")
    ap.add_argument("--rows", type=int, nargs="+", default=[200, 1319])
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--out", required=True)
    ap.add_argument("--attention", nargs="+", choices=["grouped", "sdpa"], default=["grouped", "sdpa"],
                    help="upft.attention's grouped decoding steps (the backend's), transformers' own sdpa, or both")
    a = ap.parse_args(argv)
    path = resolve_model(a.model)
    tok = load_tokenizer(path)
    questions = load_benchmark("gsm8k", a.data)
    prompts = sorted((render(tok, messages(q.text, "boxed"))[1] for q in questions), key=len, reverse=True)
    results, stop = [], [end_of_turn_id(tok)]
    for attention in a.attention:
        model = load_model(path, "cuda", "auto", grouped_decoding=attention == "grouped").eval()
        for compile_decode in ("never", "always"):
            for rows in a.rows:
                results.append({"attention": attention,
                                **run(model, prompts[:rows], compile_decode, a.steps, stop, tok.pad_token_id)})
                print(results[-1], flush=True)
                results[-1]["profile"] = profile(model, prompts[:rows], compile_decode, stop, tok.pad_token_id)
        del model  # and its compiled graphs and their memory, before the next model loads
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    write_json(a.out, {"environment": environment(), "model": a.model, "results": results})


if __name__ == "__main__":
    cli(main)
