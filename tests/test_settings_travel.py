"""Settings recorded by one stage are used by the next, never guessed again from names."""

from __future__ import annotations

from pathlib import Path

from conftest import MODEL
from upft.backends import BACKEND_OPTIONS
from upft.data import QuestionSource
from upft.runio import read_json, read_jsonl
from upft.stages import run_prep, run_sample

TRAIN_Q = "data/demo/gsm8k/train.jsonl"


def test_prep_takes_L_from_sampling_and_refuses_a_longer_one(tmp_path, model_path):
    import pytest

    from upft.errors import UserError

    samples = tmp_path / "samples"
    run_sample(MODEL, QuestionSource(TRAIN_Q, answer_field="answer", limit=3), str(samples), L=4, p=0.0,
               max_new_tokens=8, batch_size=8)
    used = read_json(samples / "manifest.json")["backend_options"]  # a config names some options; all are kept
    assert (used["batch_size"], used["attention"], used["compile_decode"], used["continuous_batching"]) == \
        (8, "grouped", "auto", False) and set(used) == set(BACKEND_OPTIONS)
    with pytest.raises(UserError, match="L=8 is longer than the 4 tokens sampled per prefix"):
        run_prep(str(samples), str(tmp_path / "prep8"), L=8)
    assert not (tmp_path / "prep8").exists()
    run_prep(str(samples), str(tmp_path / "prep"))
    stats = read_json(tmp_path / "prep" / "stats.json")
    assert stats["L"] == 4 and all(len(r["target_ids"]) <= 5 for r in read_jsonl(tmp_path / "prep" / "train.jsonl"))


def test_a_full_length_pool_is_shared_by_methods_with_different_L(tmp_path):
    from upft.experiment import load_config, sample_settings

    cfgs = []
    for L in (16, 32):
        path = tmp_path / f"lf{L}.yaml"
        path.write_text(f"model: m\nmethod: label_filter\nL: {L}\nquestions: {{source: q.jsonl, answer_field: a}}\n"
                        "eval: {benchmarks: [gsm8k]}\n")
        cfgs.append(sample_settings(load_config(str(path))))
    assert cfgs[0] == cfgs[1] and "L" not in cfgs[0]
    upft = tmp_path / "upft.yaml"
    upft.write_text("model: m\nmethod: upft\nL: 16\nquestions: {source: q.jsonl}\neval: {benchmarks: [gsm8k]}\n")
    assert sample_settings(load_config(str(upft)))["L"] == 16


def test_sampling_takes_top_p_and_top_k_from_the_model_and_nothing_leaks_into_greedy(tmp_path, model_path, tok):
    """A model folder whose generation_config sets top-p 0.8, top-k 20 and a repetition penalty:
    sampling uses its top-p/top-k unless told otherwise (recorded), and greedy decoding through our
    backend ignores the penalty, which transformers would otherwise fill in behind our back."""
    import json
    import shutil

    import torch

    from upft.generation import GenRequest, TransformersBackend
    from upft.models import end_of_turn_id
    from upft.prompts import messages, render

    folder = tmp_path / "model"
    shutil.copytree(model_path, folder)
    gc = json.loads((folder / "generation_config.json").read_text())
    gc.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=5.0)
    (folder / "generation_config.json").write_text(json.dumps(gc))

    for name, explicit, want in (("s1", {}, (0.8, 20)), ("s2", {"top_p": 0.95, "top_k": 0}, (0.95, 0))):
        run_sample(str(folder), QuestionSource(TRAIN_Q, limit=1), str(tmp_path / name), L=2, p=0.0,
                   max_new_tokens=2, batch_size=8, **explicit)
        settings = read_json(tmp_path / name / "manifest.json")["settings"]
        assert (settings["top_p"], settings["top_k"]) == want

    _, ids = render(tok, messages("Count from one to twenty in words.", "plain"))
    req = [GenRequest("q#0", tuple(ids), 24)]
    stop = [end_of_turn_id(tok)]
    plain = next(TransformersBackend(model_path, tok, stop, "cpu").generate(req))[0].token_ids
    ours = next(TransformersBackend(str(folder), tok, stop, "cpu").generate(req))[0].token_ids
    assert ours == plain
    from transformers import AutoModelForCausalLM

    leaky = AutoModelForCausalLM.from_pretrained(folder).generate(torch.tensor([ids]), max_new_tokens=24,
                                                                   do_sample=False)
    assert leaky[0, len(ids):].tolist()[:len(plain)] != plain  # the penalty does change greedy output


def test_two_runs_sharing_a_sample_pool_never_write_it_at_once(tmp_path, model_path):
    """Two configs started together share one pool: the second waits for the first, then skips."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "samples"
    cmd = [sys.executable, str(REPO / "sample/generate.py"), "--model", MODEL, "--questions", TRAIN_Q,
           "--limit", "4", "--L", "4", "--p", "0.5", "--max-new-tokens", "16", "--batch-size", "2", "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    waited = [e for e in errs if "[wait]" in e]
    assert len(waited) == 1 and "[skip]" in waited[0]
    rows = read_jsonl(out / "samples.jsonl")
    assert sorted(r["id"] for r in rows) == ["0", "1", "2", "3"]


def test_speculation_and_the_model_runner_travel_with_the_draws_they_change():
    """--speculative-ngram and --model-runner change what a seeded vLLM draw is, so a stage's settings carry
    them (a run with one never passes for one without); the other backend options say only how a run ran."""
    from upft.backends import draw_options

    assert draw_options("vllm", {"speculative_ngram": 4, "max_num_seqs": 8, "batch_size": 32}) == {"speculative_ngram": 4}
    assert draw_options("vllm", {"model_runner": "v2", "speculative_ngram": None}) == {"model_runner": "v2"}
    assert draw_options("vllm", {"speculative_ngram": None, "model_runner": None, "max_num_seqs": 8}) == {}  # earlier runs' fingerprints
    assert draw_options("transformers", {"speculative_ngram": 4, "model_runner": "v2"}) == {}  # transformers ignores them
    from upft.experiment import load_config, pool_dir

    def pool(*sets: str) -> Path:
        return pool_dir(load_config("configs/demo/upft.yaml", list(sets)), Path("runs"))

    vllm = "sample.backend=vllm"
    assert pool(vllm, "sample.speculative_ngram=4") != pool(vllm)  # other draws: another pool
    assert len({pool(vllm), pool(vllm, "sample.model_runner=v1"), pool(vllm, "sample.model_runner=v2")}) == 3
    assert pool(vllm, "sample.max_num_seqs=8") == pool(vllm)  # how a pool was drawn does not name it
    assert pool("sample.speculative_ngram=4") == pool()  # the transformers backend draws the same pool
