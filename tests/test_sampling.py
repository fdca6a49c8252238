"""The full fraction, prefix-only decoding and resume, on the real model and backend."""

from __future__ import annotations

import json

import pytest

from upft.data import Question
from upft.generation import GenRequest, TransformersBackend
from upft.models import end_of_turn_id
from upft.errors import UserError
from upft.runio import read_jsonl
from upft.draws import choose_full
from upft.sampling import sample


@pytest.mark.parametrize("n", [1, 7, 10, 33, 100])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_full_fraction_size_and_stability(n, p):
    ids = [str(i) for i in range(n)]
    chosen = choose_full(ids, p, seed=3)
    assert len(chosen) == round(p * n)  # round, not int: 0.1 x 33 gives 3, 0.3 x 7 gives 2
    assert chosen == choose_full(list(reversed(ids)), p, seed=3)  # order-independent, same seed
    assert chosen <= set(ids)


def test_full_fraction_depends_on_seed():
    ids = [str(i) for i in range(200)]
    assert choose_full(ids, 0.1, 0) != choose_full(ids, 0.1, 1)


def test_p_outside_unit_interval_is_refused():
    with pytest.raises(UserError):
        choose_full(["a"], 1.5, 0)


@pytest.fixture(scope="module")
def backend(model_path, tok):
    return TransformersBackend(model_path, tok, [end_of_turn_id(tok)], device="cpu", batch_size=2)


QUESTIONS = [Question(str(i), f"What is {i} + {i + 1}?", str(2 * i + 1)) for i in range(6)]


def test_prefix_draws_decode_only_L_tokens(tok, backend, tmp_path):
    out = tmp_path / "samples.jsonl"
    rows = sample(QUESTIONS, tok, backend, str(out), L=5, p=1 / 3, max_new_tokens=16, seed=1, style="boxed")
    assert sorted(r["id"] for r in rows) == [q.id for q in QUESTIONS]
    assert sum(r["draw"] == "full" for r in rows) == 2
    for r in rows:
        limit = 5 if r["draw"] == "prefix" else 16
        assert len(r["response_ids"]) <= limit
        assert r["finish_reason"] in ("stop", "length")
        assert r["n_tokens"] == len(r["response_ids"]) + (r["finish_reason"] == "stop")
        assert r["prompt_ids"] == tok(r["prompt"], add_special_tokens=False).input_ids
    assert any(r["draw"] == "prefix" and r["finish_reason"] == "length" for r in rows)
    assert read_jsonl(out) == rows and not (tmp_path / "samples.jsonl.partial").exists()


def test_only_long_gpu_decodes_are_compiled():
    """A static KV cache makes transformers compile generate's forward on a GPU, once per batch
    shape: worth it for a long decode, mostly compile time for UPFT's L-token prefixes."""
    from upft.generation import generation_config

    prefix = generation_config(32, 0.6, 0.95, 0, [2], 0, "cuda")
    assert prefix.cache_implementation is None and prefix.disable_compile
    full = generation_config(512, 0.6, 0.95, 0, [2], 0, "cuda")
    assert full.cache_implementation == "static" and not full.disable_compile
    assert generation_config(512, 0.0, 1.0, 0, [2], 0, "cpu").cache_implementation is None
    assert (full.do_sample, full.temperature, full.top_p, full.top_k) == (True, 0.6, 0.95, None)
    # --compile-decode always/never overrides the length rule on a GPU, never on a CPU
    assert generation_config(32, 0.6, 0.95, 0, [2], 0, "cuda", "always").cache_implementation == "static"
    off = generation_config(512, 0.6, 0.95, 0, [2], 0, "cuda", "never")
    assert off.cache_implementation is None and off.disable_compile
    assert generation_config(512, 0.6, 0.95, 0, [2], 0, "cpu", "always").cache_implementation is None


def test_compiled_decodes_get_batches_of_one_shape():
    """A compiled step is compiled again for each new batch shape (rows, and the static cache's length:
    prompt width + max_new_tokens): a compiled group's batches share one, topped up and padded."""
    from upft.generation import batches

    reqs = [GenRequest(f"q{i}#0", tuple(range(30 - i)), 512) for i in range(10)]  # longest prompt first
    shaped = batches(reqs, 4, uniform=True)  # 10 rows, at most 4 a batch: 3 batches of 4, not 4 + 4 + 2
    assert [len(b) for b, _ in shaped] == [4, 4, 4] and {w for _, w in shaped} == {30}
    assert [r.key for b, _ in shaped for r in b] == [r.key for r in reqs] + ["q9#0", "q9#0"]
    assert [[r.key for r in b] for b, _ in batches(reqs, 5, uniform=True)] == [
        [r.key for r in reqs[:5]], [r.key for r in reqs[5:]]]  # nothing to top up
    plain = batches(reqs, 4, uniform=False)
    assert [len(b) for b, _ in plain] == [4, 4, 2] and [w for _, w in plain] == [30, 26, 22]
    assert len(batches(reqs[:1], 4, uniform=True)) == 1


def test_a_padded_topped_up_batch_answers_each_request_once_as_alone(backend):
    """A batch as ``batches`` makes it for a compiled decode (a request repeated, all prompts padded to a
    wider width): one result per request, the greedy tokens of the same request decoded on its own."""
    reqs = [GenRequest(q.id, tuple(backend.tokenizer(q.text).input_ids), 6) for q in QUESTIONS[:2]]
    alone = [backend._run([r], len(r.prompt_ids), 6, 0.0, 1.0, 0)[0] for r in reqs]
    generate, shapes = backend.model.generate, []

    def watched(input_ids, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return generate(input_ids=input_ids, **kwargs)

    backend.model.generate = watched
    try:
        both = backend._run([*reqs, reqs[1]], 40, 6, 0.0, 1.0, 0)
    finally:
        del backend.model.generate  # the model's own method again
    assert shapes == [(3, 40)]  # three rows, padded to the width asked for
    assert [(r.key, r.token_ids) for r in both] == [(r.key, r.token_ids) for r in alone]


def test_a_compiled_group_is_decoded_in_batches_of_one_shape(backend, monkeypatch):
    """The backend's path for a compiled decode (a GPU's; here forced on the CPU, uncompiled): five
    requests at batch size 2 decode as three batches of two rows, all as wide as the longest prompt,
    and each request is answered once."""
    import upft.generation as generation

    seen = []
    real_decode = generation.decode

    def watched(model, prompts, config, width=0):
        seen.append((len(prompts), width))
        return real_decode(model, prompts, config, width)

    monkeypatch.setattr(generation, "compiles", lambda *args: True)
    monkeypatch.setattr(generation, "decode", watched)
    reqs = [GenRequest(q.id, tuple(backend.tokenizer(q.text).input_ids), 4) for q in QUESTIONS[:5]]
    chunks = list(backend.generate(reqs))
    longest = max(len(r.prompt_ids) for r in reqs)
    assert seen == [(2, longest)] * 3 and [len(c) for c in chunks] == [2, 2, 1]
    assert sorted(r.key for c in chunks for r in c) == sorted(r.key for r in reqs)


def test_continuous_batching_decodes_what_batches_do(model_path, tok, backend):
    """--continuous-batching hands the rows to transformers' manager (a row leaves when it ends, each
    with its own max_new_tokens, so UPFT's prefixes and full draws share one pass): greedy, it must give
    the ids batched generate gives, cut at each row's own limit, in chunks of batch_size."""
    cb = TransformersBackend(model_path, tok, [end_of_turn_id(tok)], device="cpu", batch_size=2,
                             continuous_batching=True)
    reqs = [GenRequest(q.id, tuple(tok(f"Q: {q.text}\nA:").input_ids), 6 if i % 2 else 2)
            for i, q in enumerate(QUESTIONS[:3])]
    chunks = list(cb.generate(reqs))
    assert [len(c) for c in chunks] == [2, 1]
    got = {r.key: r for c in chunks for r in c}
    assert got == {r.key: r for c in backend.generate(reqs) for r in c}
    assert [len(got[r.key].token_ids) for r in reqs] == [2, 6, 2]  # no stop that early: each ran to its limit
    assert {r.finish_reason for r in got.values()} == {"length"}


def test_killed_run_resumes_without_duplicates_or_losses(tok, backend, tmp_path):
    out = tmp_path / "samples.jsonl"
    first = sample(QUESTIONS, tok, backend, str(out), L=4, p=0.0, seed=2, style="boxed")
    # the state a kill leaves: 3 rows flushed, a torn 4th line, no final file
    partial = tmp_path / "samples.jsonl.partial"
    partial.write_text("".join(json.dumps(r) + "\n" for r in first[:3]) + '{"id": "3", "resp')
    out.unlink()
    resumed = sample(QUESTIONS, tok, backend, str(out), L=4, p=0.0, seed=2, style="boxed")
    keys = [(r["id"], r["sample_index"]) for r in resumed]
    assert len(keys) == len(set(keys)) == len(QUESTIONS)
    assert resumed[:3] == first[:3]  # flushed rows are kept as they were
    assert read_jsonl(out) == resumed


def test_a_resumed_stage_reports_the_time_of_every_run(tmp_path):
    """A killed sampling run worked 1000 s (its clock beside the .partial file); the resumed run's
    manifest must count those seconds too, and the finished folder keeps no clock."""
    from conftest import MODEL, REPO
    from upft.runio import read_json
    from upft.data import QuestionSource
    from upft.stages import run_sample

    out = tmp_path / "s"
    run_sample(MODEL, QuestionSource(str(REPO / "data/demo/gsm8k/train.jsonl"), answer_field="answer", limit=2),
               str(out), L=4, p=0.0, max_new_tokens=8, seed=0)
    first = read_jsonl(out / "samples.jsonl")
    (out / "samples.jsonl").unlink()
    (out / "manifest.json").unlink()
    (out / "samples.jsonl.partial").write_text(json.dumps(first[0]) + "\n")
    (out / "samples.jsonl.partial.wall_s").write_text("1000.0")
    run_sample(MODEL, QuestionSource(str(REPO / "data/demo/gsm8k/train.jsonl"), answer_field="answer", limit=2),
               str(out), L=4, p=0.0, max_new_tokens=8, seed=0)
    assert read_jsonl(out / "samples.jsonl")[0] == first[0]
    man = read_json(out / "manifest.json")
    assert 1000.0 < man["wall_s"] < 1100.0
    assert 0 < man["backend_start_s"] < 1000.0  # the model load, reported apart from decoding
    assert not (out / "samples.jsonl.partial.wall_s").exists()


def test_compile_decode_from_a_config_is_a_word_yaml_keeps():
    """``compile_decode: never`` in a config section stays a string; YAML's on/off would arrive as
    booleans, which is why the choices are auto/always/never, and such a value is one clear error."""
    import yaml

    from upft.backends import Decoding
    from upft.errors import UserError

    section = yaml.safe_load("compile_decode: never\nmax_num_seqs: 2048")
    Decoding(**section).check("eval")
    with pytest.raises(UserError, match="eval.compile_decode must be str, got False"):
        Decoding(**yaml.safe_load("compile_decode: off")).check("eval")
