"""Bad input is one clear error naming what is wrong, before anything is written."""

from __future__ import annotations

import json

import pytest

from conftest import MODEL, run_cli
from upft.data import load_questions
from upft.experiment import load_config
from upft.configs import read_config
from upft.errors import UserError
from upft.runio import JsonlAppender, read_jsonl

TRAIN_Q = "data/demo/gsm8k/train.jsonl"


@pytest.mark.parametrize("content, match", [
    ('{"question": "a"}\n{"question": "b"', "line 2 is not valid JSON"),  # torn last line: not dropped
    ('{"question": "a"}\ngarbage\n{"question": "b"}', "line 2 is not valid JSON"),
    ('{"question": "a"}\n[1, 2]\n', "line 2 is not a JSON object"),
    ('"just a string"\n', "line 1 is not a JSON object"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, content, match):
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        read_jsonl(path)


def test_only_our_own_partial_files_may_end_torn(tmp_path):
    w = JsonlAppender(tmp_path / "rows.jsonl")
    w.append([{"a": 1}, {"a": 2}])
    with w.partial.open("a") as f:
        f.write('{"a": 3')  # a writer killed mid-line
    assert w.done_rows() == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("question", [42, None, ["a", "b"], "   "])
def test_a_question_that_is_not_text_is_an_error(tmp_path, question):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "fine"}) + "\n" + json.dumps({"question": question}) + "\n")
    with pytest.raises(UserError, match="row 2: 'question' is not a non-empty string"):
        load_questions(str(path))


@pytest.mark.parametrize("content, match", [("5", "holds a list of rows"), ("{not json", "not valid JSON")])
def test_a_json_question_file_must_hold_rows(tmp_path, content, match):
    path = tmp_path / "q.json"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        load_questions(str(path))


@pytest.mark.parametrize("limit", [0, -1])
def test_limits_below_one_are_refused_not_read_as_all_or_from_the_end(limit):
    with pytest.raises(UserError, match="limit must be at least 1"):
        load_questions(TRAIN_Q, limit=limit)


def _cfg(tmp_path, text: str, name: str = "c.yaml") -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


BASE = "model: m\nmethod: upft\nquestions: {source: q.jsonl}\neval: {benchmarks: [gsm8k]}\n"


def test_yaml_numbers_in_any_notation_are_numbers(tmp_path):
    cfg = load_config(_cfg(tmp_path, BASE + "train: {lr: 1e-5, warmup_ratio: 3E-2}\n"))
    assert cfg["train"]["lr"] == 1e-5 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["warmup_ratio"] == 0.03


@pytest.mark.parametrize("extra, match", [
    ("L: abc\n", "L must be a whole number >= 1"),
    ("L: 0\n", "L must be a whole number >= 1"),
    ("p: 1.5\n", r"p must be a number in \[0, 1\]"),
    ("train: {lr: fast}\n", "train.lr must be float"),
    ("train: {lr: 0}\n", "lr and epochs must be positive"),
    ("train: {micro_batch: 0}\n", "at least 1"),
    ("train: {trainer: openrlhf, lr: fast}\n", "train.lr must be float, got 'fast'"),
    ("train: {trainer: openrlhf, gpus: 0}\n", "train.gpus must be at least 1, got 0"),
    ("train: {trainer: openrlhf, gpus: true}\n", "train.gpus must be int, got True"),
    ("train: {trainer: openrlhf, loss_avg: mean}\n", "train.loss_avg must be one of sample, token"),
    ("train: {trainer: openrlhf, gpus: 3, batch_size: 64}\n", "must be a multiple of micro-batch x GPUs = 3"),
    ("sample: {batch_size: 0}\n", "sample.batch_size must be at least 1, got 0"),
    ("sample: {top_p: 1.5}\n", r"sample.top_p must be in \(0, 1\], got 1.5"),
    ("sample: {cudagraph_mode: full_decode_only}\n", "sample.cudagraph_mode must be one of FULL_AND_PIECEWISE, "
     "FULL_DECODE_ONLY, FULL, PIECEWISE, NONE, got 'full_decode_only'"),
    ("eval: {benchmarks: [gsm8k], attention: flash}\n", "eval.attention must be one of grouped, sdpa, got 'flash'"),
    ("eval: {benchmarks: [gsm8k], tensor_parallel_size: 0}\n", "eval.tensor_parallel_size must be at least 1"),
    ("eval: {benchmarks: []}\n", "eval.benchmarks is empty"),
])
def test_config_values_are_checked_up_front(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        load_config(_cfg(tmp_path, BASE + extra))


def test_yaml_errors_cycles_and_bad_overrides_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml: not valid YAML \(line 2\)"):
        read_config(_cfg(tmp_path, "model: m\n  bad: [\n"))
    _cfg(tmp_path, "defaults: b.yaml\n", "a.yaml")
    _cfg(tmp_path, "defaults: a.yaml\n", "b.yaml")
    with pytest.raises(UserError, match="loops back to itself"):
        read_config(tmp_path / "a.yaml")
    with pytest.raises(UserError, match="'L' is not a section"):
        load_config(_cfg(tmp_path, BASE + "L: 8\n"), ["L.x=1"])


def test_a_bad_second_config_stops_the_run_before_the_first_starts(tmp_path):
    good = _cfg(tmp_path, BASE.replace("m\n", f"{MODEL}\n", 1), "good.yaml")
    bad = _cfg(tmp_path, BASE + "p: 1.5\n", "bad.yaml")
    r = run_cli("upft/experiment.py", good, bad, "--runs-dir", str(tmp_path / "runs"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "bad.yaml" in lines[0] and "p must be" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_benchmark_with_unreadable_golds_is_refused_before_anything_runs(tmp_path):
    """An empty gold would make every answer wrong: 0% with exit 0 once hid such a data bug."""
    (tmp_path / "mirror" / "gsm8k").mkdir(parents=True)
    rows = [{"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
            {"question": "How many pens are in 5 boxes of 12?", "answer": "12 * 5 = 60\n#### "}]
    (tmp_path / "mirror" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_cli("eval/run_eval.py", "--model", MODEL, "--benchmarks", "gsm8k", "--data-dir", str(tmp_path / "mirror"),
                "--out", str(tmp_path / "eval"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1
    assert "gsm8k: 1 of 2 gold answers cannot be parsed (first: question 1, '')" in lines[0]
    assert "--allow-unparsed-gold" in lines[0] and not (tmp_path / "eval").exists()


def test_rft_refuses_unreadable_reference_answers_unless_allowed(tmp_path, tok):
    from test_prefix import fake_sample
    from upft.stages import run_prep

    samples = [{**fake_sample(tok, i, "The answer is \\boxed{7}", "full"), "answer": a} for i, a in enumerate(["7", ""])]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    with pytest.raises(UserError, match="1 of 2 samples have a reference answer math-verify cannot parse"):
        run_prep(str(tmp_path / "s"), str(tmp_path / "prep"), method="rft", model=MODEL)
    assert not (tmp_path / "prep").exists()
    run_prep(str(tmp_path / "s"), str(tmp_path / "prep"), method="rft", model=MODEL, allow_unparsed_gold=True)
    assert json.loads((tmp_path / "prep" / "stats.json").read_text())["n_rows"] == 1


def test_an_output_path_under_a_file_is_one_error_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run_cli("data_prep/split_dev.py", "--questions", "data/demo/gsm8k/train.jsonl", "--n-dev", "2",
                "--out", str(tmp_path / "afile" / "split"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: Not a directory: {tmp_path / 'afile' / 'split' / 'gsm8k'}"]


@pytest.mark.parametrize("flags, message", [
    (["--n", "0"], "n and limit must be at least 1, got n=0, limit=None"),
    (["--benchmarks", ","], "no benchmarks given (e.g. --benchmarks gsm8k,math500)"),
    (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
    (["--max-num-seqs", "0"], "max_num_seqs must be at least 1, got 0"),
    (["--max-cudagraph-size", "0"], "max_cudagraph_size must be at least 1, got 0"),
    (["--speculative-ngram", "0"], "speculative_ngram must be at least 1, got 0"),
    (["--speculative-ngram", "129"], "speculative_ngram must be at most 128, got 129"),
    (["--speculative-ngram", "4", "--model-runner", "v2"], "speculative_ngram needs model_runner v1: vLLM 0.24's v2 runner has no n-gram speculation"),
])
def test_eval_values_out_of_range_are_one_error_line_and_nothing_written(tmp_path, flags, message):
    r = run_cli("eval/run_eval.py", "--model", MODEL, "--benchmarks", "gsm8k", "--data-dir", "data/demo",
                "--out", str(tmp_path / "e"), *flags)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "e").exists()


# Every command, bad input the way a new user types it: (script, arguments; "{t}" is the test's folder).
# Each must exit 2 with one "error:" line that says what is wrong, and leave {t}/out absent.
Q = "data/demo/gsm8k/train.jsonl"
COMMAND_TABLE = [
    ("sample/generate.py", ["--model", MODEL, "--questions", "{t}/none.jsonl", "--out", "{t}/out"], "not found"),
    ("sample/generate.py", ["--model", "no-such-model", "--questions", Q, "--out", "{t}/out"], "model not found"),
    ("sample/generate.py", ["--model", MODEL, "--questions", Q, "--limit", "0", "--out", "{t}/out"],
     "limit must be at least 1"),
    ("sample/generate.py", ["--model", MODEL, "--questions", Q, "--temperature", "-1", "--out", "{t}/out"],
     "temperature must be >= 0"),
    ("sample/generate.py", ["--model", MODEL, "--questions", Q, "--top-k", "-2", "--out", "{t}/out"],
     "top_k must be >= 0"),
    ("data_prep/build.py", ["--samples", "{t}/nothing", "--out", "{t}/out"], "samples.jsonl not found"),
    ("data_prep/build.py", ["--samples", "{t}", "--method", "upft", "--L", "-3", "--out", "{t}/out"],
     "samples.jsonl not found"),
    ("train/train_local.py", ["--data", "{t}/none.jsonl", "--model", MODEL, "--out", "{t}/out"], "not found"),
    ("train/train_local.py", ["--data", "{t}/none.jsonl", "--model", MODEL, "--out", "{t}/out", "--batch-size", "6",
                              "--micro-batch", "4"], "must be a multiple of micro_batch"),
    ("train/train_local.py", ["--data", "{t}/none.jsonl", "--model", MODEL, "--out", "{t}/out", "--lr", "0"],
     "lr and epochs must be positive"),
    ("train/train_local.py", ["--data", "{t}/none.jsonl", "--model", MODEL, "--out", "{t}/out", "--loss-avg", "mean"],
     "loss_avg must be 'sample' or 'token'"),
    ("upft/openrlhf_launcher.py", ["--data", "{t}/none.jsonl", "--model", "m", "--out", "{t}/out", "--gpus", "0"],
     "train.gpus must be at least 1, got 0"),
    ("upft/openrlhf_launcher.py", ["--data", "{t}/none.jsonl", "--model", "m", "--out", "{t}/out", "--micro-batch",
                                   "0"], "train.micro_batch must be at least 1"),
    ("upft/openrlhf_launcher.py", ["--data", "{t}/none.jsonl", "--model", "m", "--out", "{t}/out", "--data-procs",
                                   "-1"], "train.data_procs must be at least 0"),
    ("upft/openrlhf_launcher.py", ["--data", "{t}/none.jsonl", "--model", "m", "--out", "{t}/out"],
     "training data not found"),
    ("eval/run_eval.py", ["--model", MODEL, "--benchmarks", "gsm9k", "--out", "{t}/out"], "unknown benchmark 'gsm9k'"),
    ("eval/run_eval.py", ["--model", MODEL, "--benchmarks", "gsm8k", "--data-dir", "{t}", "--out", "{t}/out"],
     "has no gsm8k/test.jsonl"),
    ("eval/run_eval.py", ["--model", MODEL, "--benchmarks", "gsm8k", "--max-new-tokens-for", "gsm8k=lots", "--out",
                          "{t}/out"], "bad per-benchmark limit 'gsm8k=lots'"),
    ("eval/make_table.py", ["{t}/none", "--out", "{t}/out"], "no summary.json"),
    ("eval/report.py", ["{t}/none", "--out", "{t}/out"], "missing run.json"),
    ("data_prep/split_dev.py", ["--questions", Q, "--n-dev", "0", "--out", "{t}/out"], "--n-dev must be between 1"),
    ("data_prep/split_dev.py", ["--questions", Q, "--as", "gpqa_diamond", "--out", "{t}/out"],
     "--as must be a math benchmark"),
    ("data_prep/build_prm12k.py", ["--math", Q, "--math500", Q, "--out", "{t}/out"],
     "rows need a 'problem' field"),
    ("upft/experiment.py", ["{t}/none.yaml", "--runs-dir", "{t}/out"], "none.yaml"),
]


@pytest.mark.parametrize("script, args, message", COMMAND_TABLE,
                         ids=[f"{s.split('/')[-1]}-{i}" for i, (s, _, _) in enumerate(COMMAND_TABLE)])
def test_every_command_refuses_bad_input_in_one_line_and_leaves_nothing(tmp_path, script, args, message):
    r = run_cli(script, *[a.replace("{t}", str(tmp_path)) for a in args])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert message in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
