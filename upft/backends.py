"""Choosing a generation backend: the decoding flags every generating command shares, and
``make_backend``, which gives each backend the options it takes.

Kept apart from ``upft.generation`` (the request type and the transformers backend), which
``upft.vllm_backend`` imports: this module imports both, so neither imports the other back.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields

from upft.generation import TransformersBackend
from upft.errors import UserError
from upft.schema import add_flags, check_types, from_args


MAX_SPECULATIVE = 128  # vLLM 0.24's rejection sampler asserts no more proposed tokens (its MAX_SPEC_LEN)


@dataclass
class Decoding:
    """How a command generates: the decoding settings and the backend's options. One schema for the
    flags of sampling and evaluation and for the ``sample:`` / ``eval:`` sections of a config."""

    max_new_tokens: int = 1024
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_p: float | None = field(default=None, metadata={
        "help": "default: the model's generation_config (1 if it sets none)"})
    top_k: int | None = field(default=None, metadata={
        "help": "0 = off; default: the model's generation_config (off if it sets none)"})
    seed: int = 0
    engine_seed: bool = field(default=False, metadata={
        "help": "vllm only: seed the engine, not each draw; sampling is several times faster, but a draw "
                "then depends on its batch (off: every draw reproducible on its own)"})
    prompt_style: str = field(default="auto", metadata={"help": "auto, plain, boxed or qwen-math"})
    backend: str = field(default="transformers", metadata={"help": "transformers or vllm"})
    device: str = field(default="auto", metadata={"help": "transformers only"})
    batch_size: int = field(default=32, metadata={"help": "transformers only"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm only: GPUs per engine"})
    data_parallel_size: int = field(default=1, metadata={"help": "vllm only: engines, each on its own GPUs"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm only"})
    max_num_seqs: int | None = field(default=None, metadata={
        "help": "vllm only: most sequences decoded at once (default: vLLM's own, 1024 on an H100)"})
    max_cudagraph_size: int | None = field(default=None, metadata={
        "help": "vllm only: CUDA graphs are captured for decoding steps of up to this many tokens, one a "
                "sequence (1 + K with --speculative-ngram K) (default: vLLM's own, 512; a larger step runs "
                "without one)"})
    cudagraph_mode: str | None = field(default=None, metadata={
        "choices": ("FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "FULL", "PIECEWISE", "NONE"),
        "help": "vllm only: which steps run as CUDA graphs (vLLM's cudagraph_mode; default: vLLM's own, "
                "FULL_AND_PIECEWISE); FULL_DECODE_ONLY captures graphs for decoding steps alone, for a faster "
                "engine start: steps with prompt tokens then run without one (few where --max-num-seqs covers "
                "every prompt)"})
    speculative_ngram: int | None = field(default=None, metadata={
        "help": "vllm only: speculative decoding that proposes this many tokens (at most 128) by matching n-grams "
                "of the prompt and the draw so far (no draft model), checked by the model in one step; the same "
                "distribution of draws, fewer sequential steps where proposals are accepted (default: off)"})
    model_runner: str | None = field(default=None, metadata={
        "choices": ("v1", "v2"),
        "help": "vllm only: vLLM's model runner (default: vLLM's choice, v1 for Qwen2 models in vLLM 0.24); v2 draws "
                "the noise of seeded draws for a whole batch in one kernel, where v1 loops over the draws; each gives "
                "other draws for the same seeds"})
    compile_decode: str = field(default="auto", metadata={
        "choices": ("auto", "always", "never"),
        "help": "transformers on a GPU: a static KV cache and a compiled decoding step (auto: for decodes "
                "of at least 256 tokens); compiling costs tens of seconds per batch shape"})
    attention: str = field(default="grouped", metadata={
        "choices": ("grouped", "sdpa"),
        "help": "transformers only: the decoding steps' attention in grouped-query models. grouped "
                "(upft.attention) reads each key/value head once; sdpa, transformers' own, copies it for each of "
                "its query heads in every step (compiled steps 3-5 times slower on an H100), as upft decoded "
                "before its grouped steps (GPU figures before lease 19). The same attention up to bf16 rounding, "
                "so some greedy answers differ between them; --continuous-batching always runs transformers' "
                "paged sdpa"})
    continuous_batching: bool = field(default=False, metadata={
        "help": "transformers only: one continuous batch (transformers' paged-attention manager) that drops "
                "finished rows and lets waiting ones in, each with its own max_new_tokens; a sampled draw then "
                "depends on its batch, like --engine-seed"})

    def check(self, section: str = "") -> None:
        """Types and ranges; ``section`` ("sample", "eval") prefixes the names in errors."""
        where = f"{section}." if section else ""
        check_types(self, section or "option")
        for key in ("max_new_tokens", "batch_size", "tensor_parallel_size", "data_parallel_size", "max_num_seqs",
                    "max_cudagraph_size", "speculative_ngram"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"{where}{key} must be at least 1, got {getattr(self, key)}")
        if (self.speculative_ngram or 0) > MAX_SPECULATIVE:  # else vLLM fails an assert after its engine start
            raise UserError(f"{where}speculative_ngram must be at most {MAX_SPECULATIVE}, got {self.speculative_ngram}")
        if self.speculative_ngram and self.model_runner == "v2":  # else vLLM refuses it after a worker has started
            raise UserError(f"{where}speculative_ngram needs model_runner v1: "
                            "vLLM 0.24's v2 runner has no n-gram speculation")
        if self.temperature < 0 or not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(f"{where}temperature must be >= 0 and gpu_memory_utilization in (0, 1]")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"{where}top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise UserError(f"{where}top_k must be >= 0 (0 = off), got {self.top_k}")


def add_decoding_args(ap, temperature: float) -> None:
    """The decoding and backend flags shared by sampling and evaluation (``Decoding``'s fields)."""
    add_flags(ap, Decoding)
    ap.set_defaults(temperature=temperature)


def check_decoding(args) -> None:
    """Check parsed decoding flags before a command creates anything."""
    from_args(Decoding, args).check()


BACKEND_OPTIONS = ("device", "batch_size", "tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization",
                   "max_num_seqs", "max_cudagraph_size", "cudagraph_mode", "speculative_ngram", "model_runner",
                   "compile_decode", "attention", "continuous_batching")
DRAW_OPTIONS = ("speculative_ngram", "model_runner")  # the vLLM options that change what a seeded draw is
# compile_decode and attention change only the bf16 rounding of transformers' decoding (some greedy answers
# differ): recorded in each manifest's backend_options, kept out of fingerprints like the other options


def draw_options(backend: str, options: dict) -> dict:
    """Those of ``DRAW_OPTIONS`` that are set, where vLLM runs, else empty. Unlike the other backend
    options they change what a seeded draw is (n-gram speculation: see ``upft.vllm_backend.engine_args``;
    the model runner: each draws its noise its own way), so they go into a stage's settings and a sample
    pool's name: a run with one never passes for one without. Left out when unset, so runs from before
    the options keep their fingerprints."""
    return {k: options[k] for k in DRAW_OPTIONS if options.get(k) and backend == "vllm"}


def used_options(options: dict) -> dict:
    """Every backend option of a run: those given, the rest at ``Decoding``'s defaults (each backend
    reads its own: vLLM none of transformers', continuous batching not ``attention``). A manifest lists
    them all, so it still says how a run decoded after a default changes (attention's did), whatever
    set the options (the CLI passes all, a config only those it names)."""
    defaults = {f.name: f.default for f in fields(Decoding) if f.name in BACKEND_OPTIONS}
    return defaults | options


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
