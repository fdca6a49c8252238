"""The entry points as a user runs them: all four stages end to end, reruns, and bad input."""

from __future__ import annotations

import json

import pytest

from conftest import MODEL, run_cli
from upft.grading import Grader
from upft.prompts import BOXED
from upft.runio import read_json, read_jsonl

TRAIN_Q = "data/demo/gsm8k/train.jsonl"


def test_four_stages_end_to_end_on_the_real_model(tmp_path, model_path):
    """Sampled with the plain prompt (as a Llama run is), trained into a folder whose name says
    nothing of it: evaluation of the tuned model must use the plain prompt too, carried by the
    manifests (the base model, asked for nothing, gets boxed: test_eval's command test)."""
    s, p, m, e = (str(tmp_path / x) for x in ("samples", "prep", "model", "eval"))
    gen = ["--max-new-tokens", "24", "--batch-size", "8"]
    sample = ["--model", MODEL, "--questions", TRAIN_Q, "--answer-field", "answer", "--limit", "6", "--L", "5",
              "--p", "0.34", "--prompt-style", "plain", *gen, "--out", s]
    r = run_cli("sample/generate.py", *sample)
    assert r.returncode == 0, r.stderr
    samples = read_jsonl(tmp_path / "samples" / "samples.jsonl")
    assert len(samples) == 6 and sum(x["draw"] == "full" for x in samples) == 2

    r = run_cli("data_prep/build.py", "--samples", s, "--out", p, "--keep-truncated")  # L: the sampled 5
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "prep" / "stats.json").read_text())
    assert (stats["n_prefix"], stats["n_full"], stats["n_rows"], stats["L"]) == (4, 2, 6, 5)
    assert stats["n_truncated_full_draws"] == 2 and stats["keep_truncated"]  # 24 tokens cut both full draws
    assert read_json(tmp_path / "prep" / "manifest.json")["settings"]["style"] == "plain"

    r = run_cli("train/train_local.py", "--data", p, "--model", MODEL, "--out", m,
                "--lr", "1e-5", "--batch-size", "2", "--micro-batch", "2")
    assert r.returncode == 0, r.stderr
    log = read_jsonl(tmp_path / "model" / "train_log.jsonl")
    assert len(log) == 3 and all(x["loss"] > 0 for x in log)
    assert not (tmp_path / "model.tmp").exists()
    assert read_json(tmp_path / "model" / "manifest.json")["settings"]["style"] == "plain"

    r = run_cli("eval/run_eval.py", "--model", m, "--benchmarks", "gsm8k", "--data-dir", "data/demo",
                "--limit", "3", *gen, "--out", e)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    g = summary["benchmarks"]["gsm8k"]
    rows = read_jsonl(tmp_path / "eval" / "gsm8k.jsonl")
    assert all({"prompt", "response", "pred", "gold", "correct"} <= set(x) for x in rows)
    assert g["style"] == "plain" and all(BOXED not in x["prompt"] for x in rows)
    assert g["n_questions"] == 3 and g["accuracy"] == pytest.approx(100 * sum(x["correct"] for x in rows) / 3)
    with Grader() as grader:  # each stored verdict is what grading the stored response gives
        again = grader.grade([("math", x["response"], x["gold"]) for x in rows])
    assert [a["correct"] for a in again] == [x["correct"] for x in rows]
    r = run_cli("eval/make_table.py", e)
    assert r.returncode == 0 and "| gsm8k |" in r.stdout

    # a finished stage rerun with the same settings does no work
    before = (tmp_path / "samples" / "samples.jsonl").stat().st_mtime_ns
    r = run_cli("sample/generate.py", *sample)
    assert r.returncode == 0 and "[skip]" in r.stderr
    assert (tmp_path / "samples" / "samples.jsonl").stat().st_mtime_ns == before
    # ... and a folder holding a different run is refused, not mixed
    r = run_cli("eval/run_eval.py", "--model", m, "--benchmarks", "gsm8k", "--data-dir", "data/demo",
                "--limit", "2", *gen, "--out", e)
    assert r.returncode == 2 and "different settings" in r.stderr


def _bad(tmp_path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize("case", ["missing field", "empty file", "unknown model", "bad gguf", "L<=0", "p>1"])
def test_bad_input_gives_one_error_line_and_no_output(tmp_path, case):
    args = {"--model": MODEL, "--questions": TRAIN_Q}
    extra: list[str] = []
    if case == "missing field":
        extra = ["--question-field", "prompt"]
    elif case == "empty file":
        args["--questions"] = _bad(tmp_path, "empty.jsonl", "")
    elif case == "unknown model":
        args["--model"] = "./no/such/model"
    elif case == "bad gguf":
        args["--model"] = _bad(tmp_path, "model.gguf", b"GGUF")
        extra = ["--gguf-sha256", "0" * 64]
    elif case == "L<=0":
        extra = ["--L", "0"]
    else:
        extra = ["--p", "1.5"]
    out = tmp_path / "out"
    r = run_cli("sample/generate.py", *[x for kv in args.items() for x in kv], *extra, "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not out.exists()


def test_console_entry_points_and_script_paths_run_the_same_commands():
    """Every `upft-*` entry point in pyproject.toml resolves to a package function, and each
    design-card script path is a thin launcher of that same function."""
    import importlib
    import tomllib

    from conftest import REPO

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
        targets[module] = name
    for path, module in [("sample/generate.py", "upft.commands.sample"), ("data_prep/build.py", "upft.commands.prep"),
                         ("data_prep/split_dev.py", "upft.commands.split_dev"),
                         ("train/train_local.py", "upft.commands.train_local"),
                         ("eval/run_eval.py", "upft.commands.evaluate"), ("eval/make_table.py", "upft.commands.table"),
                         ("data_prep/build_prm12k.py", "upft.commands.prm12k"),
                         ("eval/report.py", "upft.commands.report")]:
        assert module in targets and f"from {module} import entry" in (REPO / path).read_text(), path
    r = run_cli("data_prep/build.py", "--help")
    assert r.returncode == 0 and "--samples" in r.stdout
