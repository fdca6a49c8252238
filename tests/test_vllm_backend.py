"""The vLLM backend without a GPU: request -> SamplingParams, prompt ids, results, GPU checks.

The checks against vLLM's own classes run where vllm is installed (CI installs it without its
GPU stack) and skip elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from upft.backends import make_backend
from upft.generation import GenRequest, TransformersBackend
from upft.errors import UserError
from upft.vllm_backend import (engine_args, final_only_sampling_params, gpu_groups, longest_first, prompt_input,
                               sampling_kwargs, to_result)

STOP = [2, 7]
GREEDY = GenRequest("q1#0", (5, 6, 7, 8), max_new_tokens=64, seed=11)
SAMPLED = GenRequest("q1#1", (5, 6), max_new_tokens=32, temperature=0.6, top_p=0.95, top_k=20, seed=12345)
NEUTRAL = {"n": 1, "min_tokens": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
           "frequency_penalty": 0.0, "stop": [], "stop_token_ids": STOP, "ignore_eos": True,
           "detokenize": False, "skip_special_tokens": False}


def test_sampling_kwargs_greedy():
    assert sampling_kwargs(GREEDY, STOP) == {**NEUTRAL, "seed": 11, "max_tokens": 64, "temperature": 0.0,
                                             "top_p": 1.0, "top_k": 0}


def test_sampling_kwargs_sampled():
    assert sampling_kwargs(SAMPLED, STOP) == {**NEUTRAL, "seed": 12345, "max_tokens": 32, "temperature": 0.6,
                                              "top_p": 0.95, "top_k": 20}


def test_prompt_ids_pass_untouched():
    assert prompt_input(GREEDY) == {"prompt_token_ids": [5, 6, 7, 8]}


def test_stop_token_is_dropped_and_text_decoded_from_the_rest(tok):
    ids = tok("The answer is 4.", add_special_tokens=False).input_ids
    r = to_result("k", [*ids, 2], "stop", STOP, tok)
    assert (r.key, r.token_ids, r.text, r.finish_reason) == ("k", ids, "The answer is 4.", "stop")
    r = to_result("k", ids, "length", STOP, tok)
    assert (r.token_ids, r.finish_reason) == (ids, "length")


@pytest.mark.parametrize("ids, reason", [([5, 9], "stop"), ([], "stop"), ([5], "abort"), ([5], "repetition")])
def test_unexpected_endings_are_errors(tok, ids, reason):
    with pytest.raises(RuntimeError):
        to_result("k", ids, reason, STOP, tok)


def test_longest_decodes_reach_the_engine_first_and_finished_draws_stream_back():
    """A UPFT pass in question order (prefixes of 32 tokens around two full draws of 512, two draws of
    q3): the engine gets the full draws first, the rest as given, and finished draws come back while
    the rest still decode, keyed by request id. The engine is a stand-in for vLLM's ``LLMEngine`` (it
    needs a GPU): each step finishes the requests whose budget it has reached, answering each prompt
    with its own id."""
    from types import SimpleNamespace

    from upft.vllm_backend import stream

    reqs = [GenRequest(k, (i,), n, 0.6, seed=i) for i, (k, n) in enumerate(
        [("q1#0", 32), ("q2#0", 512), ("q3#0", 32), ("q3#1", 32), ("q4#0", 512), ("q5#0", 32)])]
    items = [(r.key, prompt_input(r), sampling_kwargs(r, STOP)) for r in reqs]
    assert longest_first(items) == [1, 4, 0, 2, 3, 5]

    class Engine:
        def __init__(self):
            self.sent, self.running, self.steps = [], {}, 0

        def add_request(self, request_id, prompt, params):
            self.sent.append((prompt["prompt_token_ids"][0], params["max_tokens"]))
            self.running[request_id] = (prompt["prompt_token_ids"][0], params["max_tokens"])

        def has_unfinished_requests(self):
            return bool(self.running)

        def step(self):  # 32 tokens a step: the prefixes finish at step 1, the full draws at step 16
            self.steps += 1
            done = [k for k, (_, n) in self.running.items() if n <= 32 * self.steps]
            return [SimpleNamespace(request_id=k, finished=True, outputs=[SimpleNamespace(
                token_ids=[self.running.pop(k)[0], 7], finish_reason="stop")]) for k in done]

    engine = Engine()
    parts = list(stream(engine, dict, items, every_s=0))
    assert engine.sent == [(1, 512), (4, 512), (0, 32), (2, 32), (3, 32), (5, 32)]
    assert parts == [[(r.key, [r.prompt_ids[0], 7], "stop") for r in reqs if r.max_new_tokens == 32],
                     [(r.key, [r.prompt_ids[0], 7], "stop") for r in reqs if r.max_new_tokens == 512]]
    # with a longer interval, finished draws wait for it (here: all in one part at the end)
    assert [len(p) for p in stream(Engine(), dict, items, every_s=60)] == [6]

    class Dropping(Engine):  # an engine that ends a request without an output (as vLLM does an aborted one)
        def step(self):
            self.running.pop("q4#0", None)
            return super().step()

    with pytest.raises(RuntimeError, match="finished without 1 of the draws"):
        list(stream(Dropping(), dict, items))
    class Repeating(Engine):  # an engine that reports a finished draw twice
        def step(self):
            out = super().step()
            self.last = out or self.last
            return out if out else self.last

    with pytest.raises(RuntimeError, match="vLLM returned 'q1#0', not a draw it still had to finish"):
        list(stream(Repeating(), dict, items))
    with pytest.raises(RuntimeError, match="two draws with the key 'q1#0'"):
        list(stream(Engine(), dict, [*items, items[0]]))


def test_gpu_groups(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_groups(2, 2) == ["0,1", "2,3"]
    assert gpu_groups(1, 3) == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    assert gpu_groups(2, 2) == ["3,5", "6,7"]


def test_too_many_gpus_is_refused_before_loading(monkeypatch, model_path, tok):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    with pytest.raises(UserError, match=r"asked for 4 GPUs \(tensor_parallel 2 x data_parallel 2\) but only 2"):
        make_backend("vllm", model_path, tok, STOP, device="cuda", batch_size=8, tensor_parallel_size=2,
                     data_parallel_size=2)
    with pytest.raises(UserError):
        gpu_groups(0, 1)


def test_make_backend_gives_each_backend_its_own_options(model_path, tok):
    gen = make_backend("transformers", model_path, tok, STOP, device="cpu", batch_size=3,
                       tensor_parallel_size=2, data_parallel_size=2, gpu_memory_utilization=0.5,
                       max_num_seqs=8, compile_decode="never", continuous_batching=True)
    assert isinstance(gen, TransformersBackend)
    assert (gen.batch_size, gen.compile_decode, gen.continuous_batching) == (3, "never", True)
    with pytest.raises(UserError, match="known: transformers, vllm"):
        make_backend("sglang", model_path, tok, STOP)


@pytest.mark.parametrize("req", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_vllm_sampling_params_keep_every_field(req):
    vllm = pytest.importorskip("vllm")
    p = vllm.SamplingParams(**sampling_kwargs(req, STOP))
    sample = req.temperature > 0  # vLLM itself resets top_p/top_k when greedy
    assert (p.seed, p.stop_token_ids, p.max_tokens, p.temperature, p.n) == (req.seed, STOP, req.max_new_tokens,
                                                                            req.temperature, 1)
    assert (p.top_p, p.top_k) == ((req.top_p, req.top_k) if sample else (1.0, 0))
    assert (p.skip_special_tokens, p.ignore_eos, p.min_tokens, p.detokenize, p.stop) == (False, True, 0, False, [])
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty, p.min_p) == (1.0, 0.0, 0.0, 0.0)
    assert p.sampling_type.name == ("RANDOM_SEED" if sample else "GREEDY")
    streamed = final_only_sampling_params()(**sampling_kwargs(req, STOP))  # what the workers send
    assert streamed.output_kind == vllm.sampling_params.RequestOutputKind.FINAL_ONLY
    fields = [f for f in p.__struct_fields__ if f != "output_kind"]  # a msgspec Struct
    assert [getattr(streamed, f) for f in fields] == [getattr(p, f) for f in fields]


def test_engine_args_are_vllms_own():
    """What the workers pass to ``vllm.LLM`` goes through vLLM's EngineArgs as named; --max-num-seqs,
    --max-cudagraph-size and --cudagraph-mode reach it, each on its own, and without them vLLM keeps its
    own defaults."""
    vllm = pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs

    default = EngineArgs(**engine_args("m", "bfloat16", 1, 0.9, None, 0, None))
    assert default.max_num_seqs == EngineArgs(model="m").max_num_seqs and default.generation_config == "vllm"
    assert not default.trust_remote_code and default.enable_prefix_caching
    assert EngineArgs(**engine_args("m", "bfloat16", 1, 0.9, None, 0, 2048)).max_num_seqs == 2048
    assert default.compilation_config.max_cudagraph_capture_size is None  # vLLM picks its own
    assert default.compilation_config.cudagraph_mode is None
    mode = EngineArgs(**engine_args("m", "bfloat16", 1, 0.9, None, 0, None, cudagraph_mode="FULL_DECODE_ONLY"))
    assert mode.compilation_config.cudagraph_mode.name == "FULL_DECODE_ONLY"
    assert mode.compilation_config.max_cudagraph_capture_size is None
    graphs = EngineArgs(**engine_args("m", "bfloat16", 1, 0.9, None, 0, None, 1024))
    assert graphs.compilation_config.max_cudagraph_capture_size == 1024
    assert default.speculative_config is None  # speculation only when asked for
    ngram = EngineArgs(**engine_args("m", "bfloat16", 1, 0.9, None, 0, None, speculative_ngram=3)).speculative_config
    assert ngram == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}
    from vllm.config import SpeculativeConfig

    spec = SpeculativeConfig(**ngram)  # vLLM's own reading of it: 4-grams, 3 tokens proposed
    assert (spec.num_speculative_tokens, spec.prompt_lookup_min, spec.prompt_lookup_max) == (3, 4, 4)
    assert not spec.use_ngram_gpu()  # the CPU proposer: the GPU one turns off vLLM's compile cache
    assert vllm.__version__ == "0.24.0"


def _workers_here(monkeypatch, engine) -> None:
    """make_backend("vllm", ...) runs each worker (the real _serve) at once, in this process, with vLLM's
    engine replaced by ``engine`` and an inbox that asks for no work; the spawn, the process group and the
    GPU count are stood in for."""
    import queue

    import vllm

    from upft import vllm_backend

    class Spawn:
        Queue = queue.Queue

        def Pipe(self, duplex):
            return SimpleNamespace(recv=lambda: None), None

        def Process(self, target, args):
            return SimpleNamespace(start=lambda: target(*args))

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # the worker sets it; restored after
    monkeypatch.setitem(vars(vllm), "LLM", engine)  # not setattr: vLLM imports LLM lazily, with its server deps
    monkeypatch.setattr(vllm_backend.mp, "get_context", lambda method: Spawn())
    monkeypatch.setattr(vllm_backend, "_track", lambda backend: None)
    monkeypatch.setattr(vllm_backend.os, "setpgrp", lambda: None)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)


@pytest.mark.parametrize("runner, shell, v2", [("v1", None, False), ("v2", "0", True), (None, "1", None)])
def test_the_model_runner_asked_for_is_the_one_vllm_reads(monkeypatch, model_path, tok, runner, shell, v2):
    """--model-runner goes from make_backend through the worker (the process vLLM starts in; its engine
    process inherits the environment) to the variable vLLM's config reads. Unset, a variable left in the
    caller's shell (SHELL) is dropped: vLLM then picks by the model's architecture, as the run's settings,
    which name no runner, say. vLLM's engine is replaced by a recorder of what the real one would read."""
    pytest.importorskip("vllm")
    import vllm.envs as envs
    from vllm.config import VllmConfig

    read = []

    def engine(**kwargs):  # what vLLM's engine would decide, at the point the worker starts it
        read.append(envs.VLLM_USE_V2_MODEL_RUNNER)
        if envs.VLLM_USE_V2_MODEL_RUNNER is not None:  # set, it decides before the model is looked at
            read.append(VllmConfig.use_v2_model_runner.fget(SimpleNamespace()))

    if shell:  # restored after
        monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", shell)
    else:
        monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    _workers_here(monkeypatch, engine)
    make_backend("vllm", model_path, tok, STOP, model_runner=runner)
    assert read == ([v2, v2] if runner else [None])


def test_the_graph_flags_reach_the_engine_and_its_start_is_logged(monkeypatch, capsys, model_path, tok):
    """--max-cudagraph-size and --cudagraph-mode go from make_backend (which passes a backend only the
    options it names) through the worker to vLLM's compilation config; the worker logs how long vLLM's
    import and its engine's start took, the parts of a stage's backend_start_s that are vLLM's."""
    pytest.importorskip("vllm")
    from vllm.config import CompilationConfig, CUDAGraphMode

    got = []
    _workers_here(monkeypatch, lambda **kwargs: got.append(kwargs))
    make_backend("vllm", model_path, tok, STOP, max_cudagraph_size=2048, cudagraph_mode="FULL_DECODE_ONLY")
    config = CompilationConfig(**got[0]["compilation_config"])  # as vLLM's EngineArgs reads the dict
    assert (config.max_cudagraph_capture_size, config.cudagraph_mode) == (2048, CUDAGraphMode.FULL_DECODE_ONLY)
    assert re.search(r"\[vllm\] engine on GPU 0 ready: vLLM imported in \d+\.\d s, its engine started in "
                     r"\d+\.\d s", capsys.readouterr().err)


def test_every_backend_flag_reaches_a_backend():
    """Each decoding flag is a draw setting the stages take by name or a backend option: parsed into
    backend_options and taken by a backend's constructor (make_backend passes each backend only the
    options it names, so a flag missing from either would be parsed and then silently dropped)."""
    import argparse
    import inspect
    from dataclasses import fields

    from upft.backends import BACKEND_OPTIONS, Decoding, add_decoding_args, backend_options
    from upft.vllm_backend import VLLMBackend

    settings = {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "engine_seed", "prompt_style", "backend"}
    assert {f.name for f in fields(Decoding)} == settings | set(BACKEND_OPTIONS)
    takes = {*inspect.signature(VLLMBackend).parameters, *inspect.signature(TransformersBackend).parameters}
    assert set(BACKEND_OPTIONS) <= takes
    ap = argparse.ArgumentParser()
    add_decoding_args(ap, 0.0)
    args = ap.parse_args(["--backend", "vllm", "--cudagraph-mode", "FULL_DECODE_ONLY", "--max-cudagraph-size", "2048"])
    assert (backend_options(args)["cudagraph_mode"], backend_options(args)["max_cudagraph_size"]) == (
        "FULL_DECODE_ONLY", 2048)


def test_vllm_takes_prompt_ids_as_given():
    pytest.importorskip("vllm")
    from vllm.inputs import TokensPrompt
    from vllm.renderers.inputs.preprocess import parse_dec_only_prompt
    from vllm.renderers.params import TokenizeParams

    prompt = prompt_input(GREEDY)
    assert prompt == TokensPrompt(prompt_token_ids=list(GREEDY.prompt_ids))
    # what the renderer does with a token prompt: no tokenizing, so no BOS, and no truncation
    parsed = parse_dec_only_prompt(prompt)
    params = TokenizeParams(max_total_tokens=2048, max_output_tokens=GREEDY.max_new_tokens)
    assert params.apply_post_tokenization(None, parsed)["prompt_token_ids"] == [5, 6, 7, 8]


def test_engine_seed_drops_the_per_draw_seed():
    """With --engine-seed a draw carries no seed of its own (vLLM's fast batched sampling path)."""
    assert sampling_kwargs(SAMPLED, STOP, engine_seed=True)["seed"] is None
    assert sampling_kwargs(SAMPLED, STOP)["seed"] == 12345
    vllm = pytest.importorskip("vllm")
    assert vllm.SamplingParams(**sampling_kwargs(SAMPLED, STOP, engine_seed=True)).sampling_type.name == "RANDOM"


PARENT = '''
import os, subprocess, sys, time
from upft import vllm_backend as vb  # first, as in our entry points: before multiprocessing.util
import multiprocessing as mp

def serve(pidfile, inbox):  # what _serve does: its own process group, vLLM's engine process, its inbox
    os.setpgrp()
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(str(engine.pid))
    os.replace(pidfile + ".tmp", pidfile)
    while inbox.recv() is not None:
        pass
    engine.terminate()

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    backend = vb.VLLMBackend.__new__(vb.VLLMBackend)
    inbox, outbox = ctx.Pipe(duplex=False)
    backend.workers = []
    vb._track(backend)
    worker = ctx.Process(target=serve, args=(sys.argv[1], inbox))
    worker.start()
    backend.workers.append((worker, outbox))
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.1)
    if sys.argv[2] == "wait":
        time.sleep(60)
'''


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["sigterm", "exit"])
def test_a_job_stops_its_engines_when_terminated_or_done(tmp_path, how):
    """SIGTERM to a job (a scheduler stopping it, `kill -- -PGID`) must not leave vLLM's engine
    processes holding their GPUs: they live in the workers' own process groups, out of reach of a
    kill of the job's group, so the job stops them before it exits. A job that ends normally must
    stop them too, and not hang in multiprocessing's exit step joining workers that wait for work."""
    script, pidfile = tmp_path / "parent.py", tmp_path / "engine.pid"
    script.write_text(PARENT)
    job = subprocess.Popen([sys.executable, str(script), str(pidfile), "wait" if how == "sigterm" else "exit"],
                           start_new_session=True)
    for _ in range(300):
        if pidfile.exists():
            break
        time.sleep(0.1)
    engine = int(pidfile.read_text())
    if how == "sigterm":
        os.killpg(job.pid, signal.SIGTERM)
    try:
        rc = job.wait(20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    assert rc == (128 + signal.SIGTERM if how == "sigterm" else 0)
    for _ in range(100):
        if _gone(engine):
            break
        time.sleep(0.1)
    assert _gone(engine)
