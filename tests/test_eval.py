"""The evaluation harness on fixture benchmarks: GPQA protocols, judge grading, limits, resume."""

from __future__ import annotations

import json

import pytest

from conftest import MODEL, REPO, run_cli
from upft.evaluate import EvalSettings, evaluate_benchmark, parse_limits, summarise
from upft.generation import GenResult, TransformersBackend
from upft.judge import Judge, judge_rows, verdict
from upft.models import end_of_turn_id
from upft.errors import UserError
from upft.runio import read_jsonl

FIXTURE = str(REPO / "tests" / "fixtures" / "mirror")
SHORT = ["--max-new-tokens", "12", "--batch-size", "8"]


class Scripted:
    """A stand-in judge that answers from a script, to pin how verdicts combine with the rule."""

    def __init__(self, replies: list[str]):
        self.replies, self.prompts = replies, []

    def generate(self, requests):
        self.prompts = [r.prompt_ids for r in requests]
        yield [GenResult(r.key, [], self.replies[int(r.key)], "stop") for r in requests]


@pytest.mark.parametrize("reply, yes", [("yes", True), ("Yes.", True), ("No", False), ("no, yes", False),
                                        ("I think so", False), ("", False), ("YES - same value", True)])
def test_verdict(reply, yes):
    assert verdict(reply) is yes


def test_judge_or_rule_and_prompt_content(tok):
    rows = [{"id": "a", "gold": "newton", "response": "The unit is the newton.", "correct": False},
            {"id": "b", "gold": "6", "response": "\\boxed{6}", "correct": True},
            {"id": "c", "gold": "6", "response": "\\boxed{7}", "correct": False}]
    backend = Scripted(["yes", "no", "no"])
    judge_rows(rows, {"a": "Unit of force?", "b": "Protons in C?", "c": "Protons in C?"}, Judge("j", tok, backend))
    assert [r["correct"] for r in rows] == [True, True, False]  # judge OR rule, as the paper graded
    assert [r["rule_correct"] for r in rows] == [False, True, False]
    assert [r["judge_correct"] for r in rows] == [True, False, False]
    first = tok.decode(backend.prompts[0])
    assert "Unit of force?" in first and "Reference answer: newton" in first and "the newton." in first
    judge_rows(rows, {}, Judge("j", tok, Scripted([])))  # judged rows are not judged again


def test_per_benchmark_limits():
    assert parse_limits(["gsm8k=512", "math500=1024"]) == {"gsm8k": 512, "math500": 1024}
    s = EvalSettings(max_new_tokens=1024, max_new_tokens_by={"gsm8k": 512})
    assert (s.budget("gsm8k"), s.budget("aime24")) == (512, 1024)
    for bad in ["gsm9k=5", "gsm8k", "gsm8k=-1", "gsm8k=x"]:
        with pytest.raises(UserError, match="bad per-benchmark limit"):
            parse_limits([bad])


def test_summary_metrics():
    rows = [{"id": q, "correct": c, "n_tokens": t, "finish_reason": f}
            for q, c, t, f in [("1", True, 10, "stop"), ("1", False, 20, "length"),
                               ("2", False, 30, "stop"), ("2", False, 40, "stop")]]
    s = summarise(rows, n=2)
    assert s["accuracy"] == 25.0 and s["n_questions"] == 2 and s["n_draws"] == 4
    assert s["mean_length"] == 25.0 and s["truncated_frac"] == 0.25
    assert s["pass_at_k"] == {1: 25.0, 2: 50.0}
    # Wilson over the 2 questions: strictly inside (0, 100) around 25%, not Wald's clipped [0, 74]
    assert 0.0 < s["ci95"][0] < 25.0 < s["ci95"][1] < 100.0


@pytest.fixture(scope="module")
def backend(model_path, tok):
    return TransformersBackend(model_path, tok, [end_of_turn_id(tok)], device="cpu", batch_size=8)


def test_gpqa_records_hold_prompt_permutation_and_letter(tok, backend, tmp_path):
    s = EvalSettings(max_new_tokens=8, style="boxed")
    summary = evaluate_benchmark("gpqa_diamond", tok, backend, tmp_path, s, FIXTURE)
    rows = read_jsonl(tmp_path / "gpqa_diamond.jsonl")
    assert len(rows) == 3 and summary["n_questions"] == 3
    for r in rows:
        assert sorted(r["permutation"]) == [0, 1, 2, 3] and len(r["options"]) == 4
        assert r["gold"] == "ABCD"[r["permutation"].index(0)]  # the letter the correct answer is shown under
        assert "A) " in r["prompt"] and "\\boxed{}" in r["prompt"]  # the rendered prompt is stored
        assert r["pred"] in (None, "A", "B", "C", "D") and r["correct"] == (r["pred"] == r["gold"])
    assert summary["grader"].startswith("letter") and summary["max_new_tokens"] == 8


def test_a_slow_grader_pool_start_is_pool_time_not_grading(tok, backend, tmp_path, monkeypatch):
    """The grader's pool starts beside decoding; where the first batch still waits for it (a busy GPU
    host: 3.0-3.4 s, lease 12), the wait is grader_pool_s only, so the parts never add up past the wall.
    The stand-in pool starts 1 s after the first batch is decoded, however long decoding takes."""
    import multiprocessing
    import threading
    import time

    ctx = multiprocessing.get_context("forkserver")
    real, decoded, generate = ctx.Pool, threading.Event(), backend.generate

    def first_batch_then_the_rest(requests):
        try:
            for batch in generate(requests):
                decoded.set()
                yield batch
        finally:  # a failing decode must not leave the pool's thread waiting
            decoded.set()

    def slow_pool(workers):
        if not decoded.wait(120):
            raise TimeoutError("the grader's pool started before anything was decoded")
        time.sleep(1.0)
        return real(workers)

    monkeypatch.setattr(backend, "generate", first_batch_then_the_rest)
    monkeypatch.setattr(ctx, "Pool", slow_pool)
    b = evaluate_benchmark("gsm8k", tok, backend, tmp_path, EvalSettings(max_new_tokens=2, limit=2), FIXTURE)
    parts = [b[k] for k in ("generate_s", "grade_s", "write_s", "grader_pool_s")]
    assert b["grader_pool_s"] > 0.9 and sum(parts) <= b["wall_s"] < sum(parts) + 0.5


def test_eval_resumes_a_killed_run_without_regenerating(tok, backend, tmp_path):
    s = EvalSettings(max_new_tokens=6, style="boxed")
    evaluate_benchmark("math500", tok, backend, tmp_path, s, FIXTURE)
    rows = read_jsonl(tmp_path / "math500.jsonl")
    partial = tmp_path / "math500.jsonl.partial"  # as a crash after the first batch leaves it
    partial.write_text(json.dumps(rows[0]) + "\n" + '{"id": "torn')
    (tmp_path / "math500.jsonl").unlink()

    class Counting:
        def __init__(self):
            self.keys = []

        def generate(self, requests):
            self.keys += [r.key for r in requests]
            yield from backend.generate(requests)

    counting = Counting()
    evaluate_benchmark("math500", tok, counting, tmp_path, s, FIXTURE)
    assert counting.keys == [f"{rows[1]['id']}#0"]  # only the unfinished question runs again
    assert read_jsonl(tmp_path / "math500.jsonl") == rows


def test_cli_all_benchmarks_with_a_real_judge_and_table(tmp_path, model_path):
    out = str(tmp_path / "eval")
    r = run_cli("eval/run_eval.py", "--model", MODEL, "--data-dir", FIXTURE, *SHORT,
                "--benchmarks", "gsm8k,math500,aime24,gpqa_diamond,gpqa_open", "--max-new-tokens-for", "gsm8k=4",
                "--judge", MODEL, "--out", out)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    b = summary["benchmarks"]
    assert set(b) == {"gsm8k", "math500", "aime24", "gpqa_diamond", "gpqa_open"}
    assert b["gsm8k"]["max_new_tokens"] == 4 and b["math500"]["max_new_tokens"] == 12
    assert b["gpqa_open"]["grader"] == f"judge OR rule (judge: {MODEL})"
    assert {"accuracy_rule", "accuracy_judge"} <= set(b["gpqa_open"])
    judged = read_jsonl(tmp_path / "eval" / "gpqa_open.jsonl")
    assert all({"judge", "judge_correct", "rule_correct"} <= set(x) for x in judged)
    for name in b:
        assert b[name]["wall_s"] > 0 and b[name]["tokens_per_s"] > 0
        # where the wall time went: nothing but loop bookkeeping is left out
        parts = [b[name][k] for k in ("generate_s", "grade_s", "write_s", "grader_pool_s")]
        assert min(parts) > 0 and sum(parts) <= b[name]["wall_s"] < sum(parts) + 0.5
    assert summary["environment"]["packages"]["math-verify"] and summary["settings"]["style"] == "boxed"
    man = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert man["backend_start_s"] > 0  # how it ran travels with the results, apart from what it measured:
    opts = man["backend_options"]
    assert (opts["compile_decode"], opts["attention"], opts["max_num_seqs"], opts["continuous_batching"]) == \
        ("auto", "grouped", None, False)

    r = run_cli("eval/make_table.py", out, "--benchmarks", "gsm8k,aime24")
    assert r.returncode == 0, r.stderr
    cells = r.stdout.splitlines()[-1].split("|")
    assert float(cells[2]) == round(b["gsm8k"]["accuracy"], 1)


@pytest.mark.parametrize("case", ["unknown benchmark", "mirror missing file", "table of another benchmark",
                                  "bad limit"])
def test_eval_bad_input(tmp_path, case):
    if case == "table of another benchmark":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "summary.json").write_text(json.dumps(
            {"model": "m", "benchmarks": {"math500": {"accuracy": 1.0}}}))
        r = run_cli("eval/make_table.py", str(tmp_path / "run"), "--benchmarks", "gsm8k")
    else:
        bench = {"unknown benchmark": "gsm9k", "mirror missing file": "gpqa_diamond"}.get(case, "gsm8k")
        extra = ["--max-new-tokens-for", "gsm8k=0"] if case == "bad limit" else []
        r = run_cli("eval/run_eval.py", "--model", MODEL, "--benchmarks", bench, "--data-dir", str(tmp_path),
                    *extra, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert not (tmp_path / "out").exists()
