"""Choosing a generation backend: the decoding flags every generating command shares, and
``make_backend``, which gives each backend the options it takes.

Kept apart from ``upft.generation`` (the request type and the transformers backend), which
``upft.vllm_backend`` imports: this module imports both, so neither imports the other back.
"""

from __future__ import annotations

import inspect

from upft.generation import TransformersBackend
from upft.runio import UserError


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
