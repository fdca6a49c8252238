"""Generation backends behind one request type.

A ``GenRequest`` carries prompt token ids (rendered once by upft.prompts) and every decoding
setting explicitly, so no backend silently applies a model's generation_config defaults.
Backends yield results batch by batch, letting callers write and resume incrementally.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from upft.draws import request_seed


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


COMPILE_MIN_STEPS = 256  # decodes at least this long use a static KV cache (compiled on a GPU)


def generation_config(max_new: int, temperature: float, top_p: float, top_k: int, stop_ids: list[int],
                      pad: int, device_type: str, compile_decode: str = "auto"):
    """The decoding settings of one batch, and nothing else (no model default leaks in).

    On a GPU a long decode gets a static KV cache, which transformers compiles the forward for
    (``_valid_auto_compile_criteria``) once per batch shape: GSM8K's 1319 questions in one batch
    took 90-130 s that way on an H100, vs 175 s for plain batched ``generate`` in a workplace probe.
    A short decode (UPFT's prefixes, L steps) would spend most of its time compiling (prefix
    sampling ran at about 500 tokens/s, no faster than full-length sampling), so below
    ``COMPILE_MIN_STEPS`` the cache stays dynamic and nothing is compiled. ``compile_decode`` "always" or
    "never" overrides that rule on a GPU (a batch too small to repay its compile, say; not "on"/"off",
    which YAML reads as booleans)."""
    from transformers import GenerationConfig

    wanted = compile_decode == "always" or (compile_decode == "auto" and max_new >= COMPILE_MIN_STEPS)
    sample, static = temperature > 0, device_type == "cuda" and wanted
    return GenerationConfig(
        max_new_tokens=max_new, do_sample=sample, num_beams=1,
        temperature=temperature if sample else None, top_p=top_p if sample else None,
        top_k=(top_k or None) if sample else None, eos_token_id=stop_ids, pad_token_id=pad,
        cache_implementation="static" if static else None, disable_compile=not static)


def decode(model, prompts: list[list[int]], config) -> list[tuple[list[int], bool]]:
    """One left-padded batch through ``generate`` (all prompts end at the same column): each
    answer's new ids up to its first stop id (``config.eos_token_id``), and whether it stopped."""
    import torch

    from upft.models import plain_generation_config

    stop, pad, width = set(config.eos_token_id), config.pad_token_id, max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.inference_mode(), plain_generation_config(model):  # nothing unset comes from the model's config
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), None)
        answers.append((row, False) if cut is None else (row[:cut], True))
    return answers


class TransformersBackend:
    """Batched ``generate`` on CPU or one GPU.

    Requests are grouped by decoding settings and sorted by prompt length (least padding).
    Sampled batches are seeded from their requests' seeds, so a rerun over the same requests
    reproduces them; per-request seeds are exact only on the vLLM backend.
    """

    def __init__(self, model_path: str, tokenizer, stop_ids: list[int], device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, compile_decode: str = "auto"):
        from upft.models import load_model

        self.model = load_model(model_path, device, dtype).eval()
        self.tokenizer = tokenizer
        self.stop_ids = sorted(set(stop_ids))
        self.batch_size = batch_size
        self.compile_decode = compile_decode

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[list[GenResult]]:
        groups: dict[tuple, list[GenRequest]] = {}
        for r in requests:
            groups.setdefault(r.params(), []).append(r)
        total = sum(len(g) for g in groups.values())
        done, new_tokens, t0 = 0, 0, time.time()
        for params, reqs in groups.items():
            reqs.sort(key=lambda r: -len(r.prompt_ids))
            for i in range(0, len(reqs), self.batch_size):
                batch = reqs[i:i + self.batch_size]
                results = self._run(batch, *params)  # decode() runs under inference_mode
                done += len(batch)
                new_tokens += sum(len(r.token_ids) for r in results)
                rate = new_tokens / max(time.time() - t0, 1e-9)
                print(f"[generate] {done}/{total} sequences, {new_tokens} new tokens, {rate:.0f} tok/s",
                      file=sys.stderr, flush=True)
                yield results

    def _run(self, batch: list[GenRequest], max_new: int, temperature: float, top_p: float,
             top_k: int) -> list[GenResult]:
        import torch

        config = generation_config(max_new, temperature, top_p, top_k, self.stop_ids, self.tokenizer.pad_token_id,
                                   self.model.device.type, self.compile_decode)
        if temperature > 0:
            torch.manual_seed(request_seed(*(r.seed for r in batch)))
        return [GenResult(r.key, tokens, self.tokenizer.decode(tokens, skip_special_tokens=False),
                          "stop" if ended else "length")
                for r, (tokens, ended) in zip(batch, decode(self.model, [r.prompt_ids for r in batch], config))]
