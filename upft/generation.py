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


def compiles(max_new: int, device_type: str, compile_decode: str = "auto") -> bool:
    """Whether a decode of ``max_new`` tokens gets a static KV cache and a compiled step (see
    generation_config): on a GPU, for long decodes, unless ``compile_decode`` says otherwise."""
    wanted = compile_decode == "always" or (compile_decode == "auto" and max_new >= COMPILE_MIN_STEPS)
    return device_type == "cuda" and wanted


def batches(reqs: list[GenRequest], size: int, uniform: bool) -> list[tuple[list[GenRequest], int]]:
    """``reqs`` (sorted longest prompt first) in batches of at most ``size``, each with the width its
    prompts are left-padded to (``decode``'s ``width``).

    A compiled decode step is compiled for its shapes: the batch's rows and its static KV cache's length
    (prompt width + max_new_tokens). A batch of another shape compiles the step again, tens of seconds on
    a GPU, once per new shape (a run of 2000 rows in batches of 512 compiled for 512 rows, then for the
    last 464). ``uniform`` batches share one shape: as many batches as ``size`` needs, of equal rows (the
    last one topped up with copies of its last request, whose results the caller drops) and all padded
    to the group's longest prompt. Otherwise each batch is as wide as its own longest prompt."""
    if not uniform or not reqs:
        return [(reqs[i:i + size], len(reqs[i].prompt_ids)) for i in range(0, len(reqs), size)]
    n = -(-len(reqs) // size)
    rows, width = -(-len(reqs) // n), len(reqs[0].prompt_ids)
    out = [reqs[i:i + rows] for i in range(0, len(reqs), rows)]
    out[-1] = out[-1] + [out[-1][-1]] * (rows - len(out[-1]))
    return [(b, width) for b in out]


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

    sample, static = temperature > 0, compiles(max_new, device_type, compile_decode)
    return GenerationConfig(
        max_new_tokens=max_new, do_sample=sample, num_beams=1,
        temperature=temperature if sample else None, top_p=top_p if sample else None,
        top_k=(top_k or None) if sample else None, eos_token_id=stop_ids, pad_token_id=pad,
        cache_implementation="static" if static else None, disable_compile=not static)


def split_at_stop(tokens: list[int], stop: set[int]) -> tuple[list[int], bool]:
    """New ids up to the first stop id, and whether one came (else the decode ran out of tokens)."""
    cut = next((i for i, t in enumerate(tokens) if t in stop), None)
    return (tokens, False) if cut is None else (tokens[:cut], True)


def decode(model, prompts: list[list[int]], config, width: int = 0, **generate_kwargs) -> list[tuple[list[int], bool]]:
    """One batch through ``generate``, left-padded to ``width`` (at least its longest prompt), so all
    prompts end at the same column: each answer's new ids up to its first stop id
    (``config.eos_token_id``), and whether it stopped. ``generate_kwargs`` go to ``generate`` too
    (scripts/gpu/decode_steps.py's clock and stopping rule)."""
    import torch

    from upft.models import plain_generation_config

    stop, pad, width = set(config.eos_token_id), config.pad_token_id, max(width, *map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.inference_mode(), plain_generation_config(model):  # nothing unset comes from the model's config
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **generate_kwargs)
    return [split_at_stop(row, stop) for row in out[:, width:].tolist()]


class TransformersBackend:
    """Batched ``generate`` on CPU or one GPU, or one continuous batch.

    Requests are grouped by decoding settings and sorted by prompt length (least padding).
    Sampled batches are seeded from their requests' seeds, so a rerun over the same requests
    reproduces them; per-request seeds are exact only on the vLLM backend.

    ``continuous_batching`` hands each group (same sampling settings, any ``max_new_tokens``) to
    transformers' continuous-batching manager instead: a row leaves as soon as it ends and a waiting
    one takes its place, so UPFT's prefixes (L tokens) and its full draws share one pass and no batch
    waits for its longest row. Results come in the order rows finish; the group shares one seed, so a
    sampled draw depends on the other requests of its group (a rerun over the same ones reproduces it).

    ``attention`` "grouped" loads the model with ``upft.attention``'s decoding steps, "sdpa" with
    transformers' own: the same attention, rounded differently in bf16 (``Decoding.attention``).
    """

    def __init__(self, model_path: str, tokenizer, stop_ids: list[int], device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, compile_decode: str = "auto",
                 attention: str = "grouped", continuous_batching: bool = False):
        from upft.models import load_model

        grouped = attention == "grouped" and not continuous_batching  # the paged manager needs a name it knows
        self.model = load_model(model_path, device, dtype, grouped_decoding=grouped).eval()
        self.tokenizer = tokenizer
        self.stop_ids = sorted(set(stop_ids))
        self.batch_size = batch_size
        self.compile_decode = compile_decode
        self.continuous_batching = continuous_batching

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[list[GenResult]]:
        groups: dict[tuple, list[GenRequest]] = {}
        for r in requests:
            key = r.params()[1:] if self.continuous_batching else r.params()  # [1:]: any max_new_tokens
            groups.setdefault(key, []).append(r)
        total = sum(len(g) for g in groups.values())
        done, new_tokens, t0 = 0, 0, time.time()
        for params, reqs in groups.items():
            reqs.sort(key=lambda r: -len(r.prompt_ids))
            if self.continuous_batching:
                chunks = self._run_continuous(reqs, *params)
            else:  # decode() runs under inference_mode
                uniform = compiles(params[0], self.model.device.type, self.compile_decode)
                chunks = (self._run(batch, width, *params)
                          for batch, width in batches(reqs, self.batch_size, uniform))
            for results in chunks:
                done += len(results)
                new_tokens += sum(len(r.token_ids) for r in results)
                rate = new_tokens / max(time.time() - t0, 1e-9)
                print(f"[generate] {done}/{total} sequences, {new_tokens} new tokens, {rate:.0f} tok/s",
                      file=sys.stderr, flush=True)
                yield results

    def _result(self, r: GenRequest, tokens: list[int], ended: bool) -> GenResult:
        return GenResult(r.key, tokens, self.tokenizer.decode(tokens, skip_special_tokens=False),
                         "stop" if ended else "length")

    def _run_continuous(self, reqs: list[GenRequest], temperature: float, top_p: float,
                        top_k: int) -> Iterator[list[GenResult]]:
        """One continuous batch over ``reqs``, yielded in chunks of ``batch_size`` finished rows
        (so callers write and can resume as they go)."""
        from transformers import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.utils import WorkloadHints

        from upft.models import plain_generation_config

        longest = max(r.max_new_tokens for r in reqs)
        config = generation_config(longest, temperature, top_p, top_k, self.stop_ids, self.tokenizer.pad_token_id,
                                   self.model.device.type, "never")  # the manager brings its own cache and graphs
        hints = WorkloadHints(max_prompt_length=max(len(r.prompt_ids) for r in reqs), max_generated_length=longest,
                              num_requests=len(reqs))
        cb = ContinuousBatchingConfig(seed=request_seed(*(r.seed for r in reqs)))  # else it draws its own
        if self.model.device.type == "cpu":  # else its cache and buffers take 90% of free RAM, as of a GPU's memory
            cb.num_blocks = sum(-(-(len(r.prompt_ids) + r.max_new_tokens) // cb.block_size) for r in reqs)
            cb.max_batch_tokens = min(2048, sum(len(r.prompt_ids) + 1 for r in reqs))
        waiting, stop, chunk = {r.key: r for r in reqs}, set(self.stop_ids), []
        with plain_generation_config(self.model), self.model.continuous_batching_context_manager(
                generation_config=config, continuous_batching_config=cb, block=True, workload_hints=hints,
                warmup=self.model.device.type == "cuda") as manager:  # warm-up captures CUDA graphs
            for r in reqs:
                manager.add_request(list(r.prompt_ids), request_id=r.key, max_new_tokens=r.max_new_tokens,
                                    eos_token_id=self.stop_ids)
            while waiting:
                out = manager.get_result(timeout=1)
                if out is None:
                    if not manager.is_running():
                        raise RuntimeError(f"continuous batching stopped with {len(waiting)} rows unfinished")
                    continue
                if out.error:
                    raise RuntimeError(f"continuous batching failed on {out.request_id}: {out.error}")
                if out.is_finished() and out.request_id in waiting:
                    r = waiting.pop(out.request_id)
                    chunk.append(self._result(r, *split_at_stop(list(out.generated_tokens)[:r.max_new_tokens], stop)))
                    if len(chunk) >= self.batch_size or not waiting:
                        yield chunk
                        chunk = []

    def _run(self, batch: list[GenRequest], width: int, max_new: int, temperature: float, top_p: float,
             top_k: int) -> list[GenResult]:
        """One batch (see ``batches``: a topped-up batch repeats a request, whose copies are dropped)."""
        import torch

        config = generation_config(max_new, temperature, top_p, top_k, self.stop_ids, self.tokenizer.pad_token_id,
                                   self.model.device.type, self.compile_decode)
        if temperature > 0:
            torch.manual_seed(request_seed(*(r.seed for r in batch)))
        out = decode(self.model, [r.prompt_ids for r in batch], config, width)
        results: dict[str, GenResult] = {}
        for r, (tokens, ended) in zip(batch, out):
            results.setdefault(r.key, self._result(r, tokens, ended))  # a top-up copy's result is dropped
        return list(results.values())
