"""The vLLM backend: the same GenRequest -> GenResult contract as TransformersBackend, on GPUs.

Prompts go in as token ids (rendered once by upft.prompts, so no second BOS) and every
SamplingParams field that shapes a draw is set here, so neither vLLM's defaults nor the
model's generation_config.json pick one. Each request is one draw with its own seed.

Each engine runs in its own worker process (spawned, CUDA_VISIBLE_DEVICES set before vLLM is
imported): one per group of ``tensor_parallel_size`` GPUs, ``data_parallel_size`` groups, each
taking a contiguous shard of the requests (draws of one prompt stay together for the prefix
cache). Workers send finished draws back while the rest still decode, so callers can grade and
append them as they come.
Written against vLLM 0.24.0.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing as mp
import multiprocessing.util  # noqa: F401  its exit step joins our workers, which wait until close() ends them
import os
import queue
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

from upft.generation import GenRequest, GenResult
from upft.errors import UserError


def prompt_input(req: GenRequest) -> dict:
    """The request's prompt as a vLLM ``TokensPrompt`` (a TypedDict): the ids, untouched."""
    return {"prompt_token_ids": list(req.prompt_ids)}


def sampling_kwargs(req: GenRequest, stop_ids: Sequence[int], engine_seed: bool = False) -> dict:
    """Keyword arguments for ``vllm.SamplingParams``, every field that shapes a draw explicit.

    A seed per draw makes each draw reproducible whatever shares its batch, but vLLM 0.24 then draws
    the sampling noise request by request (a Python loop per decoding step, see its
    ``random_sample``), which leaves the GPU mostly idle. ``engine_seed`` drops the per-draw seed:
    the engine's seed alone, much faster sampling, but a draw then depends on its batch.
    """
    return {
        "n": 1,  # one request per draw: each draw has its own seed
        "seed": None if engine_seed else req.seed,
        "max_tokens": req.max_new_tokens,
        "min_tokens": 0,
        "temperature": req.temperature,  # 0 = greedy (vLLM then resets top_p/top_k itself)
        "top_p": req.top_p,
        "top_k": req.top_k,  # 0 = off, in vLLM 0.24 as here
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop": [],
        "stop_token_ids": list(stop_ids),
        # stop on our ids only, as the transformers backend does: otherwise vLLM 0.24 also stops on
        # the eos ids of the model's generation_config.json, even with generation_config="vllm"
        "ignore_eos": True,
        "detokenize": False,  # to_result decodes the kept ids itself; vLLM's incremental detokenizer is CPU time
        "skip_special_tokens": False,
    }


def to_result(key: str, token_ids: Sequence[int], finish_reason: str, stop_ids: Sequence[int],
              tokenizer) -> GenResult:
    """Our GenResult from a vLLM completion.

    vLLM keeps the stop token at the end of ``token_ids`` (it leaves it out of its text only),
    so it is dropped here, and the text is decoded from the kept ids as the transformers
    backend does.
    """
    tokens = list(token_ids)
    if finish_reason == "stop":
        if not tokens or tokens[-1] not in stop_ids:
            raise RuntimeError(f"{key}: vLLM stopped on {tokens[-1:]}, not on a stop id {list(stop_ids)}")
        tokens.pop()
    elif finish_reason != "length":
        raise RuntimeError(f"{key}: vLLM finished with '{finish_reason}'")
    return GenResult(key, tokens, tokenizer.decode(tokens, skip_special_tokens=False), finish_reason)


NGRAM_LOOKUP = 4  # the n-gram matched for a proposal (vLLM's documented example)


def engine_args(model_path: str, dtype: str, tensor_parallel_size: int, gpu_memory_utilization: float,
                max_model_len: int | None, seed: int, max_num_seqs: int | None,
                max_cudagraph_size: int | None = None, speculative_ngram: int | None = None,
                cudagraph_mode: str | None = None) -> dict:
    """Keyword arguments for ``vllm.LLM`` (its ``EngineArgs``): the model's generation_config.json
    is ignored (every draw's settings are explicit), no remote code, and vLLM's own defaults for
    ``max_num_seqs`` and the CUDA graph sizes unless given. vLLM 0.24 on an H100 decodes up to 1024
    sequences at once but captures graphs only up to 512 tokens a step: a larger step runs without one.

    ``speculative_ngram`` K turns on vLLM's n-gram speculation: where the last 4 tokens occurred before
    (in the prompt or the draw), the K that followed are proposed, checked in one step of the model and
    kept by rejection sampling, so the draws' distribution stays the model's; they differ from the
    draws without speculation, and the scheduler may cut a draw's proposals to fit a step's token
    budget, so a seeded draw is then no longer independent of its batch. Aimed at UPFT's pass, whose
    few full-length draws decode hundreds of steps after its prefixes are done: a small batch, where a
    step costs little more for K extra tokens and fewer steps would count. The proposer is vLLM's CPU
    one (``ngram``), which turns off vLLM's asynchronous scheduling; its GPU one (``ngram_gpu``) keeps
    that but, in vLLM 0.24, also turns off the compile cache, so every engine start would compile
    anew (about 175 s on one H200 with 16 CPU cores). Each speculating sequence takes up to 1+K tokens
    of a step, and graph sizes become multiples of 1+K: the default sizes (up to 512 tokens) cover
    about 100 sequences at K=4, 2048 about 400.

    ``cudagraph_mode`` is vLLM's: by default it captures every graph size twice, a whole-step graph for
    steps that only decode and a piecewise one (attention left out) for steps with prompt tokens; the
    capture took 15-22 s of a warm engine start on an H100 with sizes up to 2048 (leases 16-17), the
    piecewise half the slower. ``FULL_DECODE_ONLY`` captures the first kind alone, aimed at a faster
    start. Where ``max_num_seqs`` covers every prompt of a pass (all admitted at once), prompt tokens
    come only in its first steps, most of them larger than any graph, and the decoding steps after them
    keep their graphs; with fewer, prompts enter as draws finish, and those mixed steps lose theirs."""
    engine = dict(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed,
                  tensor_parallel_size=tensor_parallel_size, generation_config="vllm",
                  gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                  enable_prefix_caching=True, trust_remote_code=False)
    if max_num_seqs is not None:
        engine["max_num_seqs"] = max_num_seqs
    graphs = {k: v for k, v in (("max_cudagraph_capture_size", max_cudagraph_size),
                                ("cudagraph_mode", cudagraph_mode)) if v is not None}
    if graphs:  # else vLLM's own defaults
        engine["compilation_config"] = graphs
    if speculative_ngram is not None:
        engine["speculative_config"] = {"method": "ngram", "num_speculative_tokens": speculative_ngram,
                                        "prompt_lookup_max": NGRAM_LOOKUP}  # vLLM 0.24: min = max
    return engine


def gpu_groups(tensor_parallel_size: int, data_parallel_size: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each engine: consecutive groups of the GPUs visible here."""
    import torch

    tp, dp = tensor_parallel_size, data_parallel_size
    if tp < 1 or dp < 1:
        raise UserError(f"tensor and data parallel sizes must be at least 1, got {tp} and {dp}")
    have = torch.cuda.device_count()
    if tp * dp > have:
        raise UserError(f"asked for {tp * dp} GPUs (tensor_parallel {tp} x data_parallel {dp}) "
                        f"but only {have} are visible")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(have)]
    return [",".join(ids[r * tp:(r + 1) * tp]) for r in range(dp)]


def longest_first(items: list[tuple]) -> list[int]:
    """The order in which an engine should receive ``(key, prompt, sampling kwargs)`` items, as indices:
    the longest decodes (``max_tokens``) first, otherwise as given.

    vLLM admits requests first come, first served. UPFT's pass mixes a few full-length draws with many
    L-token prefixes, and it lasts at least as long as its longest draw: submitted in question order, a
    full draw behind a thousand prefixes starts only once slots free up, and its hundreds of sequential
    steps then run after the prefixes are done instead of beside them. On one H200 (lease 8) the pass
    took 8.8 s this way, at about the full pass's tokens/s (15.4K against 16.5K): there it was bound by
    throughput, and this order can shorten only a pass whose longest draw is the limit."""
    return sorted(range(len(items)), key=lambda i: -items[i][2]["max_tokens"])


RUNNER_VAR = "VLLM_USE_V2_MODEL_RUNNER"  # the only switch vLLM 0.24 reads


def use_runner(model_runner: str | None) -> None:
    """Pick vLLM's model runner for this process and the engine process it starts (they inherit the
    environment). None leaves the pick to vLLM, dropping a value from the caller's shell so that the run's
    settings, which then name no runner, stay true: vLLM picks by the model's architecture (v1 for Qwen2,
    v2 for Llama and Qwen3, among others), falling back to v1 where v2 lacks a feature the engine asks
    for (n-gram speculation, say).

    The reason to pick: with a seed per draw, v1 draws each draw's sampling noise in a Python loop, one
    kernel launch per draw and step (its ``random_sample``), so the GPU waits on the CPU; v2 draws all of
    a step's noise in one kernel, from each draw's seed and the token's position (its ``gumbel.py``).
    The two give different draws for the same seeds."""
    os.environ.pop(RUNNER_VAR, None)
    if model_runner is not None:
        os.environ[RUNNER_VAR] = "1" if model_runner == "v2" else "0"


def _serve(gpus: str, engine: dict, model_runner: str | None, inbox, results) -> None:
    """A worker: one engine on ``gpus``, streaming each shard it is sent back as its draws finish.

    It logs how long importing vLLM and starting its engine took: the rest of a stage's
    ``backend_start_s`` is mostly this process's own start (an interpreter, the entry point's imports)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # before vLLM (and CUDA) start in this process
    use_runner(model_runner)
    os.setpgrp()  # so the parent can stop this worker and vLLM's own processes as one group
    t0 = time.monotonic()
    from vllm import LLM

    imported = time.monotonic()
    llm = LLM(**engine)
    print(f"[vllm] engine on GPU {gpus} ready: vLLM imported in {imported - t0:.1f} s, "
          f"its engine started in {time.monotonic() - imported:.1f} s", file=sys.stderr, flush=True)
    results.put(("ready", None))
    while (items := inbox.recv()) is not None:  # EOFError (and exit) if the parent is gone
        for rows in stream(llm.llm_engine, final_only_sampling_params(), items):
            results.put(("chunk", rows))
        results.put(("done", None))


def final_only_sampling_params() -> functools.partial:
    """``vllm.SamplingParams`` for draws reported once, when finished (as ``LLM.generate`` asks for):
    vLLM's default output kind builds an output for every running request at every step."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return functools.partial(SamplingParams, output_kind=RequestOutputKind.FINAL_ONLY)


def stream(engine, sampling_params, items: list[tuple], every_s: float = 1.0) -> Iterator[list[tuple]]:
    """Run ``items`` on a vLLM ``LLMEngine`` (longest decodes first) and yield ``(key, token ids, finish
    reason)`` for the draws that finished, at most every ``every_s`` seconds.

    ``LLM.generate`` returns only when its last draw is done, so a caller can grade and write nothing
    until then: on one H200 (lease 10) a GSM8K evaluation took 15.7 s, of which 12.4 s decoding and
    0.85 s grading after it. Stepping the engine here, as ``LLM.generate`` does inside, hands finished
    draws over while the rest still decode, so that work overlaps decoding, and a killed run keeps what
    had finished. Each item's key is its request id; every key must come back exactly once (vLLM itself
    accepts a repeated id, and drops an aborted request without an output)."""
    pending = set()
    for i in longest_first(items):
        key, prompt, kwargs = items[i]
        if key in pending:
            raise RuntimeError(f"two draws with the key {key!r} in one pass")
        pending.add(key)
        engine.add_request(key, prompt, sampling_params(**kwargs))
    rows, last = [], time.monotonic()
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                if o.request_id not in pending:
                    raise RuntimeError(f"vLLM returned {o.request_id!r}, not a draw it still had to finish")
                pending.remove(o.request_id)
                rows.append((o.request_id, list(o.outputs[0].token_ids), o.outputs[0].finish_reason))
        if rows and time.monotonic() - last >= every_s:
            yield rows
            rows, last = [], time.monotonic()
    if rows:
        yield rows
    if pending:
        raise RuntimeError(f"vLLM finished without {len(pending)} of the draws (one: {min(pending)!r})")


class VLLMBackend:
    """vLLM engines over ``tensor_parallel_size`` x ``data_parallel_size`` GPUs.

    Per-request seeds make a sampled draw independent of which requests share its batch (up to
    the batch-dependent numerics of GPU kernels).
    """

    def __init__(self, model_path: str, tokenizer, stop_ids: list[int], dtype: str = "bfloat16",
                 tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 seed: int = 0, engine_seed: bool = False, max_num_seqs: int | None = None,
                 max_cudagraph_size: int | None = None, speculative_ngram: int | None = None,
                 model_runner: str | None = None, cudagraph_mode: str | None = None):
        groups = gpu_groups(tensor_parallel_size, data_parallel_size)
        self.stop_ids = sorted(set(stop_ids))
        self.tokenizer = tokenizer
        self.engine_seed = engine_seed
        engine = engine_args(model_path, dtype, tensor_parallel_size, gpu_memory_utilization, max_model_len, seed,
                             max_num_seqs, max_cudagraph_size, speculative_ngram, cudagraph_mode)
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.workers = []
        _track(self)  # before the first worker starts: a SIGTERM from here on stops what has started
        for gpus in groups:
            inbox, outbox = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_serve, args=(gpus, engine, model_runner, inbox, self.results))
            proc.start()
            self.workers.append((proc, outbox))
        for _ in groups:
            self._receive()  # "ready", once the engine has loaded

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[list[GenResult]]:
        items = [(r.key, prompt_input(r), sampling_kwargs(r, self.stop_ids, self.engine_seed)) for r in requests]
        if not self.workers:
            raise RuntimeError("this vLLM backend is closed")
        n, total = len(self.workers), len(items)
        for rank, (_, outbox) in enumerate(self.workers):
            outbox.send(items[rank * total // n:(rank + 1) * total // n])
        busy, done, new_tokens, t0 = n, 0, 0, time.time()
        try:
            while busy:
                kind, rows = self._receive()
                if kind == "done":
                    busy -= 1
                    continue
                results = [to_result(*row, self.stop_ids, self.tokenizer) for row in rows]
                done += len(results)
                new_tokens += sum(len(r.token_ids) for r in results)
                elapsed = max(time.time() - t0, 1e-9)
                print(f"[generate] {done}/{total} sequences, {new_tokens} new tokens, "
                      f"{done / elapsed:.1f} prompts/s, {new_tokens / elapsed:.0f} tok/s",
                      file=sys.stderr, flush=True)
                yield results
        finally:
            if busy:  # stopped early (an error, or the caller gave up): the engines are mid-shard
                self.close(wait=0)

    def _receive(self) -> tuple:
        """The next worker message; a worker that died (its traceback is on stderr) raises."""
        while True:
            try:
                return self.results.get(timeout=5)
            except queue.Empty:
                dead = [p.exitcode for p, _ in self.workers if not p.is_alive()]
                if dead:
                    self.close(wait=0)
                    raise RuntimeError(f"a vLLM worker exited (code {dead[0]}); see its log above")

    def close(self, wait: float = 30.0) -> None:
        """Stop the engines (also run at exit): ask each worker to finish, then stop what is left."""
        for _, outbox in self.workers:
            with contextlib.suppress(OSError):
                outbox.send(None)
        for proc, _ in self.workers:
            proc.join(wait)
            with contextlib.suppress(ProcessLookupError):  # the worker and vLLM's processes left
                os.killpg(proc.pid, signal.SIGTERM)
            proc.join(5)
            if proc.is_alive():  # still starting, not yet in its own process group
                proc.kill()
        self.workers = []
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)


_LIVE: list[VLLMBackend] = []
_OWNER = os.getpid()  # a process forked from this one (a grader, say) must not stop our engines


def _track(backend: VLLMBackend) -> None:
    """Stop ``backend``'s engines at exit, and on SIGTERM too. The workers run in their own
    process groups (so that close() stops vLLM's processes with them); a parent killed by the
    default SIGTERM action would leave them holding their GPUs, as a killed campaign job once did."""
    global _OWNER
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        with contextlib.suppress(ValueError):  # not the main thread: leave the handler alone
            signal.signal(signal.SIGTERM, _on_sigterm)
    _OWNER = os.getpid()
    _LIVE.append(backend)


def _close_all(wait: float = 30.0) -> None:
    if os.getpid() == _OWNER:
        for backend in list(_LIVE):
            backend.close(wait)


atexit.register(_close_all)  # after multiprocessing.util's exit step (imported above), so before it runs


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if os.getpid() == _OWNER:
        _close_all(wait=0)
        raise SystemExit(128 + signum)
    os.kill(os.getpid(), signum)  # a forked child: the default action, as if the handler were not there
