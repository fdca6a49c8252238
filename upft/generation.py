"""Generation backends behind one request type.

A ``GenRequest`` carries prompt token ids (rendered once by upft.prompts) and every decoding
setting explicitly, so no backend silently applies a model's generation_config defaults.
Backends yield results batch by batch, letting callers write and resume incrementally.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from upft.runio import UserError


@dataclass(frozen=True)
class GenRequest:
    key: str  # unique id of this draw, e.g. "<question id>#<sample index>"
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    seed: int = 0

    def params(self) -> tuple:
        return (self.max_new_tokens, self.temperature, self.top_p, self.top_k)


@dataclass
class GenResult:
    key: str
    token_ids: list[int]  # generated ids, without the stop token
    text: str
    finish_reason: str  # "stop" (end-of-turn produced) or "length" (hit max_new_tokens)


def request_seed(base_seed: int, *parts: object) -> int:
    """A per-draw seed derived from (base seed, question id, sample index): reruns draw alike."""
    blob = ":".join(map(str, (base_seed, *parts))).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


class TransformersBackend:
    """Batched ``generate`` on CPU or one GPU.

    Requests are grouped by decoding settings and sorted by prompt length (least padding).
    Sampled batches are seeded from their requests' seeds, so a rerun over the same requests
    reproduces them; per-request seeds are exact only on the vLLM backend.
    """

    def __init__(self, model_path: str, tokenizer, stop_ids: list[int], device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32):
        from upft.models import load_model

        self.model = load_model(model_path, device, dtype).eval()
        self.tokenizer = tokenizer
        self.stop_ids = sorted(set(stop_ids))
        self.batch_size = batch_size

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[list[GenResult]]:
        import torch

        groups: dict[tuple, list[GenRequest]] = {}
        for r in requests:
            groups.setdefault(r.params(), []).append(r)
        total = sum(len(g) for g in groups.values())
        done, new_tokens, t0 = 0, 0, time.time()
        for params, reqs in groups.items():
            reqs.sort(key=lambda r: -len(r.prompt_ids))
            for i in range(0, len(reqs), self.batch_size):
                batch = reqs[i:i + self.batch_size]
                with torch.inference_mode():
                    results = self._run(batch, *params)
                done += len(batch)
                new_tokens += sum(len(r.token_ids) for r in results)
                rate = new_tokens / max(time.time() - t0, 1e-9)
                print(f"[generate] {done}/{total} sequences, {new_tokens} new tokens, {rate:.0f} tok/s",
                      file=sys.stderr, flush=True)
                yield results

    def _run(self, batch: list[GenRequest], max_new: int, temperature: float, top_p: float,
             top_k: int) -> list[GenResult]:
        import torch
        from transformers import GenerationConfig

        from upft.models import plain_generation_config

        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(batch):  # left padding: all prompts end at the same column
            ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids):] = 1
        sample = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new, do_sample=sample, num_beams=1,
            temperature=temperature if sample else None, top_p=top_p if sample else None,
            top_k=(top_k or None) if sample else None, eos_token_id=self.stop_ids, pad_token_id=pad,
            # on a GPU a preallocated KV cache avoids re-copying a growing cache at every step
            cache_implementation="static" if self.model.device.type == "cuda" else None,
        )
        if sample:
            torch.manual_seed(request_seed(*(r.seed for r in batch)))
        device = self.model.device
        with plain_generation_config(self.model):  # nothing unset is filled from the model's config
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      generation_config=config)
        results = []
        for row, r in enumerate(batch):
            new = out[row, width:].tolist()
            stop = next((j for j, t in enumerate(new) if t in self.stop_ids), None)
            tokens = new if stop is None else new[:stop]
            text = self.tokenizer.decode(tokens, skip_special_tokens=False)
            results.append(GenResult(r.key, tokens, text, "length" if stop is None else "stop"))
        return results


def add_decoding_args(ap, temperature: float) -> None:
    """The decoding and backend flags shared by sampling and evaluation (one definition)."""
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    ap.add_argument("--top-p", type=float, help="default: the model's generation_config (1 if it sets none)")
    ap.add_argument("--top-k", type=int, help="0 = off; default: the model's generation_config (off if it sets none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-style", default="auto", help="auto, plain, boxed or qwen-math")
    ap.add_argument("--backend", default="transformers", help="transformers or vllm")
    ap.add_argument("--device", default="auto", help="transformers only")
    ap.add_argument("--batch-size", type=int, default=32, help="transformers only")
    ap.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm only: GPUs per engine")
    ap.add_argument("--data-parallel-size", type=int, default=1, help="vllm only: engines, each on its own GPUs")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm only")


BACKEND_OPTIONS = ("device", "batch_size", "tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization")


def backend_options(args) -> dict:
    """The backend flags of parsed arguments (see add_decoding_args), for make_backend."""
    return {k: getattr(args, k) for k in BACKEND_OPTIONS}


def make_backend(name: str, model_path: str, tokenizer, stop_ids: list[int], **options):
    """The backend ``name``, given those of ``options`` it takes.

    Callers pass every backend option (all the CLI flags); each backend has its own, e.g.
    --device means nothing to vLLM and --tensor-parallel-size nothing to transformers.
    """
    if name == "transformers":
        cls = TransformersBackend
    elif name == "vllm":
        from upft.vllm_backend import VLLMBackend as cls  # vllm itself loads only in its workers
    else:
        raise UserError(f"unknown backend '{name}' (known: transformers, vllm)")
    takes = inspect.signature(cls).parameters
    return cls(model_path, tokenizer, stop_ids, **{k: v for k, v in options.items() if k in takes})
