"""scripts/gpu/perf.py: issue 14's perf.json from bench.sh's run folders (fixture manifests here;
the figures themselves come from a GPU lease)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "gpu"))
from perf import collect  # noqa: E402

from upft.errors import UserError  # noqa: E402


def _w(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _bench(root: Path) -> None:
    for i, backend in enumerate(("vllm-draw", "vllm-engine", "transformers", "transformers-eager", "transformers-cb")):
        _w(root / f"upft-{backend}" / "manifest.json", {"wall_s": 10.0 + i, "backend_start_s": 60.0, "sampling_tokens": 120_000})
        _w(root / f"full-{backend}" / "manifest.json", {"wall_s": 100.0, "backend_start_s": 60.0, "sampling_tokens": 600_000})
    for name, start in (("eval-vllm-cold", 150.0), ("eval-vllm-warm", 40.0), ("eval-transformers-cold", 30.0),
                        ("eval-transformers-eager", 5.0), ("eval-vllm-seqs2048", 150.0),
                        ("eval-transformers-cb", 5.0), ("eval-vllm-seqs512", 150.0), ("eval-vllm-graphs1024", 150.0)):
        _w(root / name / "gsm8k.summary.json", {"wall_s": 20.0, "tokens_per_s": 20_000.0, "accuracy": 62.0})
        _w(root / name / "manifest.json", {"backend_start_s": start, "finished": "2026-11-28T04:25:00"})
    _w(root / "eval-vllm-cold" / "summary.json", {"environment": {"hardware": {"gpu": "NVIDIA H100 80GB HBM3"}}})
    for i, tps in ((1, 21_000), (2, 21_000), ("fast", 30_000), ("fast16", 40_000)):
        _w(root / f"openrlhf-{i}" / "manifest.json", {"wall_s": 200.0, "timing": {
            "tokens_per_s_per_gpu": tps, "op_load_s": 30.0 if i == 1 else 0.5}})
        (root / f"openrlhf-{i}" / "train_log.jsonl").write_text("".join(
            json.dumps({"step": s, "loss_mean": 1.0 / s + (0.01 if i == "fast" and s == 2 else 0)}) + "\n"
            for s in (1, 2, 3)))


def test_perf_json_from_bench_runs(tmp_path):
    _bench(tmp_path)
    p = collect(tmp_path)
    assert p["device"] == "NVIDIA H100 80GB HBM3" and p["missing"] == []
    assert p["upft_over_full"] == {"vllm": 0.1, "vllm_engine_seed": 0.11, "transformers": 0.12,
                                   "transformers_eager": 0.13, "transformers_continuous": 0.14}
    assert p["eval_variants"]["transformers_gsm8k_eager"] == {"s": 20.0, "start_s": 5.0, "tokens_per_s": 20_000,
                                                              "accuracy": 62.0, "finished": "2026-11-28T04:25:00"}
    assert set(p["eval_variants"]) == {"transformers_gsm8k_eager", "vllm_gsm8k_max_num_seqs_2048",
                                       "vllm_gsm8k_max_num_seqs_512", "vllm_gsm8k_cudagraphs_1024",
                                       "transformers_gsm8k_continuous"}
    assert p["vllm_engine_start_s"] == {"cold": 150.0, "warm": 40.0}
    assert p["transformers_gsm8k_cold_s"] == 50.0  # decoding + the backend's start: a cold start in full
    assert p["openrlhf"]["tokens_per_s_per_gpu"] == 21_000 and p["openrlhf"]["second_run_phases_s"]["op_load_s"] == 0.5
    fast = p["openrlhf"]["fast"]
    assert (fast["tokens_per_s_per_gpu"], fast["steps"], fast["max_abs_loss_diff"]) == (30_000, [3, 3], 0.01)
    fast16 = p["openrlhf"]["fast_micro_batch_16"]
    assert (fast16["tokens_per_s_per_gpu"], fast16["max_abs_loss_diff"]) == (40_000, 0.0)


def test_partial_bench_lists_what_is_missing(tmp_path):
    """A lease that ends mid-bench: the finished stages' figures, nulls and a list for the rest."""
    _bench(tmp_path)
    gone = ["full-transformers", "eval-transformers-cold", "eval-vllm-seqs2048", "openrlhf-2", "openrlhf-fast",
            "openrlhf-fast16"]
    for name in gone:
        (tmp_path / name / "manifest.json").unlink()
    p = collect(tmp_path)
    assert p["missing"] == gone and list(p["eval_variants"]) == [
        "transformers_gsm8k_eager", "vllm_gsm8k_max_num_seqs_512", "vllm_gsm8k_cudagraphs_1024",
        "transformers_gsm8k_continuous"]
    assert p["openrlhf"]["fast"] is None and p["openrlhf"]["fast_micro_batch_16"] is None
    assert p["upft_over_full"] == {"vllm": 0.1, "vllm_engine_seed": 0.11,  # no ratio without both halves
                                   "transformers_eager": 0.13, "transformers_continuous": 0.14}
    assert p["upft_sampling_s"]["transformers"] == 12.0
    assert p["transformers_gsm8k_cold_s"] is None and p["gsm8k_accuracy"]["transformers"] is None
    assert p["openrlhf"]["second_run_phases_s"] is None and p["openrlhf"]["wall_s"] == [200.0]


def test_no_finished_stage_is_one_error(tmp_path):
    with pytest.raises(UserError, match="no finished stage"):
        collect(tmp_path)


@pytest.mark.parametrize("stages, expected", [
    ("openrlhf", ["full-vllm-draw", "prep-sft", "openrlhf-1", "openrlhf-2", "openrlhf-fast", "openrlhf-fast16"]),
    ("transformers,openrlhf", ["full-vllm-draw", "upft-transformers", "full-transformers", "eval-transformers-cold",
                               "prep-sft", "openrlhf-1", "openrlhf-2", "openrlhf-fast", "openrlhf-fast16"]),
    ("continuous", ["upft-transformers-cb", "full-transformers-cb", "eval-transformers-cb"]),
    ("variants", ["upft-transformers-eager", "full-transformers-eager", "eval-transformers-eager"]),
    ("vllm-variants", ["eval-vllm-seqs2048-cold", "eval-vllm-seqs2048", "eval-vllm-seqs512-cold", "eval-vllm-seqs512",
                       "eval-vllm-graphs1024-cold", "eval-vllm-graphs1024"]),
    (None, ["eval-vllm-cold", "eval-vllm-warm", "upft-vllm-draw", "full-vllm-draw", "upft-vllm-engine",
            "full-vllm-engine", "upft-transformers", "full-transformers", "eval-transformers-cold",
            "upft-transformers-eager", "full-transformers-eager", "eval-transformers-eager",
            "eval-vllm-seqs2048-cold", "eval-vllm-seqs2048", "eval-vllm-seqs512-cold", "eval-vllm-seqs512",
            "eval-vllm-graphs1024-cold", "eval-vllm-graphs1024", "upft-transformers-cb", "full-transformers-cb",
            "eval-transformers-cb", "prep-sft", "openrlhf-1", "openrlhf-2", "openrlhf-fast",
            "openrlhf-fast16"]),
])
def test_bench_runs_the_stages_asked_for(tmp_path, stages, expected):
    """bench.sh's STAGES: a lease with little time left runs one group (the OpenRLHF runs first draw
    the full samples their training set is built from). The GPU programs are stand-ins that log
    their output folder; the figures come from a lease."""
    import os
    import subprocess

    log, bin_ = tmp_path / "log", tmp_path / "bin"
    bin_.mkdir()
    for name in ("python", "bash"):  # each logs the folder it would write: the value after --out
        (bin_ / name).write_text(f'#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = --out ] && echo "$2" >> {log}; '
                                 f'shift; done\nexit 0\n')
        (bin_ / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "MODEL": "m.gguf", "DATA": "d",
           "RUNS": str(tmp_path / "runs")}
    if stages:
        env["STAGES"] = stages
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["/bin/bash", str(repo / "scripts" / "gpu" / "bench.sh")], env=env, check=True, cwd=tmp_path)
    assert [Path(x).name for x in log.read_text().split()] == expected
