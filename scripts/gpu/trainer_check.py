"""Collect the runs of scripts/gpu/trainer_check.sh into results/gpu/trainer_check.json.

  python scripts/gpu/trainer_check.py RUNS results/gpu/trainer_check.json

Takes every trained run in RUNS (folders local-* and openrlhf-*, with their eval-* folders).
Fails (exit 2) unless each trained with finite losses, passed the model check of its time and was
evaluated, and the four runs of issue 10 are there: the file is the proof that both trainers train,
not a table of whatever happened. A run whose GSM8K answers mostly end within 3 x L tokens (L=32)
is flagged "stops_early": a model that learned the prefixes' end-of-turn (see upft.health).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from statistics import mean

from upft.errors import UserError, cli
from upft.health import EARLY_STOP_FACTOR
from upft.runio import read_json, read_jsonl, write_json

REQUIRED = ("local-upft-mb8", "local-sft-mb8", "openrlhf-upft", "openrlhf-sft")  # issue 10's four runs
SHORT = EARLY_STOP_FACTOR * 32  # the model check's limit for L=32: an answer ending within it stopped early


def curve(model_dir: Path, trainer: str) -> list[float]:
    """The training loss per optimizer step: the local trainer logs it as 'loss'; OpenRLHF's
    'loss_mean' is the mean of its micro-batch losses over the step (the same quantity)."""
    key = "loss" if trainer == "local" else "loss_mean"
    return [row[key] for row in read_jsonl(model_dir / "train_log.jsonl") if key in row]


def gsm8k(runs: Path, name: str) -> dict:
    """The run's GSM8K summary plus the share of its answers that ended within ``SHORT`` tokens."""
    folder = runs / f"eval-{name}"
    if not (folder / "summary.json").is_file():
        raise UserError(f"{folder / 'summary.json'} is missing: run scripts/gpu/trainer_check.sh to the end")
    rows = read_jsonl(folder / "gsm8k.jsonl")
    short = sum(r["finish_reason"] == "stop" and r["n_tokens"] <= SHORT for r in rows) / len(rows)
    return {**read_json(folder / "summary.json")["benchmarks"]["gsm8k"], "short_share": short}


def run_entry(runs: Path, name: str, base_short: float) -> dict:
    trainer, method = name.split("-")[:2]
    model = runs / name
    man = read_json(model / "manifest.json")
    losses = curve(model, trainer)
    nonfinite = sum(not math.isfinite(x) for x in losses)
    if not losses or nonfinite or not man.get("model_check", {}).get("passed"):
        raise UserError(f"{name}: no finite loss curve or no passing model check")
    ev = gsm8k(runs, name)
    settings = man["settings"]
    if trainer == "local":
        lr, loss_avg, micro = settings["lr"], settings["loss_avg"], settings["micro_batch"]
    else:
        cmd = settings["command"]
        lr, loss_avg = float(cmd[cmd.index("--adam.lr") + 1]), cmd[cmd.index("--upft.loss_avg") + 1]
        micro = int(cmd[cmd.index("--train.micro_batch_size") + 1])
    return {"name": name, "trainer": trainer, "method": method, "lr": lr, "micro_batch": micro,
            "loss_avg": loss_avg, "gsm8k": ev["accuracy"], "gsm8k_ci95": ev["ci95"],
            "mean_length": ev["mean_length"], "truncated_frac": ev["truncated_frac"],
            "short_answer_share": ev["short_share"], "stops_early": ev["short_share"] > 0.5 > base_short,
            "nonfinite_steps": nonfinite, "optimizer_steps": len(losses), "train_wall_s": man.get("wall_s"),
            "loss_curve": losses, "probe_answers": man["model_check"]["answers"]}


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("out")
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    base = gsm8k(runs, "base")
    names = sorted(d.parent.name for d in runs.glob("*/manifest.json") if d.parent.name.split("-")[0] in
                   ("local", "openrlhf"))
    entries = [run_entry(runs, name, base["short_share"]) for name in names]
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise UserError(f"runs missing: {', '.join(missing)}")
    by = {e["name"]: e for e in entries}
    out = {
        "device": read_json(runs / "eval-base" / "summary.json")["environment"],
        "commands": ["MODEL=/root/qwen2.5-coder-1.5b-instruct.gguf DATA=../shared/data RUNS=/root/runs "
                     "bash scripts/gpu/trainer_check.sh start",
                     f"python scripts/gpu/trainer_check.py RUNS {a.out}"],
        "settings": {"model": "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF dequantised to bf16)",
                     "questions": "GSM8K train, first 2000", "upft": "L=32, p=0.1, T=0.6",
                     "epochs": 1, "batch_size": 64, "eval": "GSM8K test (1319), greedy, 512 new tokens",
                     "short_answer": f"ended by itself within {SHORT} tokens"},
        "base": {"gsm8k": base["accuracy"], "gsm8k_ci95": base["ci95"], "mean_length": base["mean_length"],
                 "short_answer_share": base["short_share"]},
        "runs": entries,
    }
    if "local-upft-mb1" in by:
        a8, a1 = by["local-upft-mb8"]["loss_curve"], by["local-upft-mb1"]["loss_curve"]
        diffs = [abs(x - y) for x, y in zip(a8, a1)]
        out["micro_batch_1_vs_8"] = {"steps": len(diffs), "mean_abs_diff": mean(diffs), "max_abs_diff": max(diffs),
                                     "mean_loss_mb8": mean(a8), "mean_loss_mb1": mean(a1)}
    nan = runs / "attention_nan.json"
    if nan.is_file():
        out["attention_nan"] = read_json(nan)
    write_json(a.out, out)
    for e in entries:
        print(f"{e['name']} (lr {e['lr']:g}, {e['loss_avg']}): GSM8K {e['gsm8k']:.1f}% (base {base['accuracy']:.1f}%), "
              f"loss {e['loss_curve'][0]:.3f} -> {e['loss_curve'][-1]:.3f} over {e['optimizer_steps']} steps"
              + (", STOPS EARLY" if e["stops_early"] else ""))


if __name__ == "__main__":
    cli(main)
