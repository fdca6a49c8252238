"""Collect scripts/gpu/bench.sh's runs into results/gpu/perf.json (issue 14's figures).

  python scripts/gpu/perf.py RUNS results/gpu/perf.json

Sampling and evaluation times are the stages' own (decoding and grading), with the backend's start
(model load; for vLLM the engine's compile and warm-up) reported apart from its manifest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from upft.errors import UserError, cli
from upft.runio import read_json, write_json


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} is missing: run scripts/gpu/bench.sh to the end")
    return read_json(path)


def _sample(runs: Path, name: str) -> dict:
    m = _read(runs / name / "manifest.json")
    return {"s": round(m["wall_s"], 1), "start_s": round(m.get("backend_start_s", 0.0), 1),
            "tokens": m["sampling_tokens"], "tokens_per_s": round(m["sampling_tokens"] / m["wall_s"])}


def _eval(runs: Path, name: str) -> dict:
    s = _read(runs / name / "gsm8k.summary.json")
    start = _read(runs / name / "manifest.json").get("backend_start_s")
    return {"s": round(s["wall_s"], 1), "start_s": round(start, 1) if start is not None else None,
            "tokens_per_s": round(s["tokens_per_s"]), "accuracy": round(s["accuracy"], 2)}


def collect(runs: Path) -> dict:
    backends = {"vllm": "vllm-draw", "vllm_engine_seed": "vllm-engine", "transformers": "transformers"}
    upft = {k: _sample(runs, f"upft-{v}") for k, v in backends.items()}
    full = {k: _sample(runs, f"full-{v}") for k, v in backends.items()}
    cold, warm, tf = _eval(runs, "eval-vllm-cold"), _eval(runs, "eval-vllm-warm"), _eval(runs, "eval-transformers-cold")
    trains = [_read(runs / f"openrlhf-{i}" / "manifest.json") for i in (1, 2)]
    env = _read(runs / "eval-vllm-cold" / "summary.json").get("environment", {})
    return {
        "device": env.get("hardware", {}).get("gpu"), "environment": env,
        "commands": ["MODEL=<qwen2.5-coder-1.5b-instruct.gguf> DATA=<mirror> RUNS=<dir> bash scripts/gpu/bench.sh"],
        "upft_sampling_s": {k: v["s"] for k, v in upft.items()},
        "full_sampling_s": {k: v["s"] for k, v in full.items()},
        "upft_over_full": {k: round(upft[k]["s"] / full[k]["s"], 3) for k in upft},
        "sampling_detail": {"upft": upft, "full": full},
        "vllm_gsm8k_s": warm["s"], "vllm_gsm8k_tokens_per_s": warm["tokens_per_s"],
        "vllm_engine_start_s": {"cold": cold["start_s"], "warm": warm["start_s"]},
        "transformers_gsm8k_cold_s": round(tf["s"] + (tf["start_s"] or 0), 1),
        "gsm8k_accuracy": {"vllm_cold": cold["accuracy"], "vllm_warm": warm["accuracy"], "transformers": tf["accuracy"]},
        "openrlhf": {"tokens_per_s_per_gpu": trains[0]["timing"]["tokens_per_s_per_gpu"],
                     "phases_s": trains[0]["timing"], "second_run_phases_s": trains[1]["timing"],
                     "wall_s": [round(t["wall_s"], 1) for t in trains]},
    }


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    write_json(a.out, collect(a.runs))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    cli(main)
