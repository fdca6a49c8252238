"""One command per experiment: the whole pipeline on the embedded model, skipping and rerunning."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, run_cli
from upft.experiment import load_config
from upft.errors import UserError

COMMON = {
    "model": "smollm2-135m-instruct",
    "questions": {"source": str(REPO / "data/demo/gsm8k/train.jsonl"), "answer_field": "answer", "limit": 4},
    "sample": {"max_new_tokens": 12, "batch_size": 8},
    "train": {"trainer": "local", "lr": 1e-5, "batch_size": 2, "micro_batch": 2},
    "eval": {"benchmarks": ["gsm8k"], "data_dir": str(REPO / "data/demo"), "max_new_tokens": 8, "limit": 2,
             "batch_size": 8},
}


def write(path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def mtimes(run) -> dict[str, int]:
    files = ["prep/train.jsonl", "model/model.safetensors", "eval/summary.json"]
    return {f: (run / f).stat().st_mtime_ns for f in files}


def test_config_runs_end_to_end_skips_when_done_and_reruns_only_what_changed(tmp_path, model_path):
    write(tmp_path / "_common.yaml", COMMON)
    cfg = write(tmp_path / "upft.yaml", {"defaults": "_common.yaml", "method": "upft", "L": 4, "p": 0.25})
    runs = str(tmp_path / "runs")
    r = run_cli("upft/experiment.py", cfg, "--runs-dir", runs)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "upft-s0"
    info = json.loads((run / "run.json").read_text())
    assert (info["method"], info["L"], info["p"], info["label"]) == ("upft", 4, 0.25, "UPFT (L=4)")
    samples = (run / info["stages"]["sample"]).resolve()
    assert samples.parent == (tmp_path / "runs").resolve() and (samples / "samples.jsonl").is_file()
    stats = json.loads((run / "prep" / "stats.json").read_text())
    # the one full draw hit max_new_tokens (12): it stays out of the training set, counted
    assert (stats["n_prefix"], stats["n_full"], stats["n_truncated_full_draws"]) == (3, 0, 1)
    assert json.loads((run / "eval" / "summary.json").read_text())["model"] == "UPFT (L=4)"
    before = mtimes(run)

    r = run_cli("upft/experiment.py", cfg, "--runs-dir", runs)  # nothing changed: every stage skips
    assert r.returncode == 0 and r.stderr.count("[skip]") == 4, r.stderr
    assert mtimes(run) == before

    changed = {**COMMON, "eval": {**COMMON["eval"], "max_new_tokens": 6}}
    write(tmp_path / "_common.yaml", changed)  # an eval setting changed: only eval reruns
    r = run_cli("upft/experiment.py", cfg, "--runs-dir", runs)
    assert r.returncode == 0 and r.stderr.count("[skip]") == 3, r.stderr
    after = mtimes(run)
    assert after["prep/train.jsonl"] == before["prep/train.jsonl"]
    assert after["model/model.safetensors"] == before["model/model.safetensors"]
    assert after["eval/summary.json"] != before["eval/summary.json"]

    changed["train"] = {**COMMON["train"], "lr": 2e-5}  # a training setting: train and eval rerun
    write(tmp_path / "_common.yaml", changed)
    r = run_cli("upft/experiment.py", cfg, "--runs-dir", runs)
    assert r.returncode == 0 and r.stderr.count("[skip]") == 2, r.stderr
    again = mtimes(run)
    assert again["prep/train.jsonl"] == before["prep/train.jsonl"]
    assert again["model/model.safetensors"] != after["model/model.safetensors"]
    assert again["eval/summary.json"] != after["eval/summary.json"]

    # the report reads the run folder as the pipeline left it
    r = run_cli("eval/report.py", runs, "--out", str(tmp_path / "report"), "--figs", str(tmp_path / "figs"))
    assert r.returncode == 0, r.stderr
    acc = json.loads((run / "eval" / "summary.json").read_text())["benchmarks"]["gsm8k"]["accuracy"]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| UPFT (L=4) |"))
    assert row.split("|")[2].strip() == f"{acc:.1f}"
    assert (tmp_path / "figs" / "accuracy_vs_tuning_tokens.png").stat().st_size > 0


def test_shipped_configs_are_valid():
    paths = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(paths) > 10
    for path in paths:
        if not path.name.startswith("_"):
            cfg = load_config(str(path))
            assert cfg["method"] in ("base", "upft", "sft", "rft", "label_filter"), path


@pytest.mark.parametrize("case, message", [
    ("unknown key", "unknown key 'train.learning_rate'"),
    ("missing key", "missing required key 'model'"),
    ("missing questions", "missing required key 'questions.source'"),
    ("rft without answers", "rft needs reference answers: set questions.answer_field"),
    ("bad method", "method must be one of"),
])
def test_bad_configs_give_one_error_line_naming_the_key(tmp_path, case, message):
    cfg = json.loads(json.dumps({**COMMON, "method": "upft"}))
    if case == "unknown key":
        cfg["train"]["learning_rate"] = 1e-6
    elif case == "missing key":
        del cfg["model"]
    elif case == "missing questions":
        del cfg["questions"]
    elif case == "rft without answers":
        cfg["method"] = "rft"
        del cfg["questions"]["answer_field"]
    else:
        cfg["method"] = "ppo"
    path = write(tmp_path / "bad.yaml", cfg)
    with pytest.raises(UserError, match=message):
        load_config(path)
    r = run_cli("upft/experiment.py", path, "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message.split(":")[0] in r.stderr
    assert not (tmp_path / "runs").exists()


def test_the_configs_seed_reaches_evaluation(tmp_path):
    """One seed for every stage: a config's seed is the seed of its sampled evaluation (avg@n)."""
    from upft.experiment import run

    cfg = write(tmp_path / "base.yaml", {**COMMON, "method": "base", "seed": 3,
                                         "eval": {**COMMON["eval"], "max_new_tokens": 2, "limit": 1}})
    summary = json.loads((run(cfg, str(tmp_path / "runs")) / "eval" / "summary.json").read_text())
    assert summary["settings"]["seed"] == 3
