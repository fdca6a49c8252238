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
    for i, backend in enumerate(("vllm-draw", "vllm-engine", "transformers", "transformers-eager", "transformers-cb",
                                 "vllm-graphs1024", "vllm-seqs2048-graphs2048", "vllm-seqs2048-graphs2048-engine",
                                 "vllm-seqs2048-graphs2048-ngram4", "vllm-seqs2048-graphs2048-v2",
                                 "vllm-seqs2048-graphs2048-v2-decode-graphs")):
        start = 200.0 if backend == "vllm-seqs2048-graphs2048-v2" else 60.0  # runner-v2's first start: cold
        _w(root / f"upft-{backend}" / "manifest.json", {"wall_s": 10.0 + i, "backend_start_s": start, "sampling_tokens": 120_000})
        _w(root / f"full-{backend}" / "manifest.json", {"wall_s": 100.0, "backend_start_s": 60.0, "sampling_tokens": 600_000})
    for part, wall, tokens in (("prefill", 2.0, 2_000), ("prefixes", 3.0, 64_000)):  # the upft-parts group
        _w(root / f"upft-vllm-seqs2048-graphs2048-v2-{part}" / "manifest.json",
           {"wall_s": wall, "backend_start_s": 40.0, "sampling_tokens": tokens, "finished": "2026-12-06T17:00:00"})
    for name, start in (("eval-vllm-cold", 150.0), ("eval-vllm-warm", 40.0), ("eval-transformers-cold", 30.0),
                        ("eval-transformers-eager", 5.0), ("eval-transformers-sdpa-cold", 30.0),
                        ("eval-transformers-sdpa-eager", 5.0), ("eval-vllm-seqs2048", 150.0),
                        ("eval-transformers-cb", 5.0), ("eval-vllm-seqs512", 150.0), ("eval-vllm-graphs1024", 150.0),
                        ("eval-vllm-seqs2048-graphs2048", 150.0), ("eval-vllm-seqs2048-graphs2048-ngram4", 150.0),
                        ("eval-vllm-seqs2048-graphs2048-v2", 150.0),
                        ("eval-vllm-seqs2048-graphs2048-v2-decode-graphs", 150.0)):
        split = {"generate_s": 18.123, "grade_s": 0.456} if name == "eval-vllm-seqs2048-graphs2048" else {}  # newer
        v2 = name == "eval-vllm-seqs2048-graphs2048-v2"  # runner-v2's: figures of its own
        start = 45.0 if v2 else start
        _w(root / name / "gsm8k.summary.json", {"wall_s": 19.0 if v2 else 20.0, "tokens_per_s": 20_000.0,
                                                "accuracy": 61.5 if v2 else 62.0, **split})
        _w(root / name / "manifest.json", {"backend_start_s": start, "finished": "2026-11-28T04:25:00"})
    _w(root / "eval-vllm-cold" / "summary.json", {"environment": {"hardware": {"gpu": "NVIDIA H100 80GB HBM3"}}})
    for i, tps in ((1, 21_000), (2, 21_000), ("fast", 30_000), ("fast16", 40_000), ("profile", 20_000),
                   ("liger16", 45_000), ("liger16-zero0", 47_000), ("liger32", 48_000), ("causal16", 50_000),
                   ("trained16", 55_000), ("trained32", 60_000), ("zero3", 3_000), ("zero3-trained", 3_600),
                   ("upft-causal16", 40_000), ("upft-trained16", 52_000), ("upft-zero3", 2_000),
                   ("upft-zero3-trained", 2_600), ("trained16-repeat", 54_000), ("trained16-expandable", 56_000)):
        _w(root / f"openrlhf-{i}" / "manifest.json", {"wall_s": 200.0, "timing": {
            "tokens_per_s_per_gpu": tps, "op_load_s": 30.0 if i == 1 else 0.5}})
        (root / f"openrlhf-{i}" / "train_log.jsonl").write_text("".join(
            json.dumps({"step": s, "loss_mean": 1.0 / s + (0.01 if i == "fast" and s == 2 else 0)}) + "\n"
            for s in (1, 2, 3)))


def test_perf_json_from_bench_runs(tmp_path):
    _bench(tmp_path)
    steps = [{"rows": 200, "cache": "dynamic", "step_ms": 30.0}, {"rows": 1319, "cache": "dynamic", "step_ms": 40.0}]
    _w(tmp_path / "decode_steps.json", {"results": steps})
    p = collect([tmp_path], note="two GPUs, one group each")
    assert p["note"] == "two GPUs, one group each" and "note" not in collect([tmp_path])
    assert p["transformers_decode_steps"] == steps
    assert p["device"] == "NVIDIA H100 80GB HBM3" and p["missing"] == []
    assert p["upft_over_full"] == {"vllm": 0.1, "vllm_engine_seed": 0.11, "transformers": 0.12,
                                   "transformers_eager": 0.13, "transformers_continuous": 0.14,
                                   "vllm_cudagraphs_1024": 0.15, "vllm_max_num_seqs_2048_cudagraphs_2048": 0.16,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_engine_seed": 0.17,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_speculative_ngram_4": 0.18,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_model_runner_v2": 0.19,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_model_runner_v2_full_decode_only": 0.2}
    assert p["eval_variants"]["transformers_gsm8k_eager"] == {"s": 20.0, "start_s": 5.0, "tokens_per_s": 20_000,
                                                              "accuracy": 62.0, "generate_s": None, "grade_s": None,
                                                              "grader_pool_s": None,
                                                              "finished": "2026-11-28T04:25:00"}
    split = p["eval_variants"]["vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048"]
    assert (split["generate_s"], split["grade_s"]) == (18.12, 0.46)
    assert set(p["eval_variants"]) == {"transformers_gsm8k_eager", "transformers_gsm8k_sdpa",
                                       "transformers_gsm8k_sdpa_eager", "vllm_gsm8k_max_num_seqs_2048",
                                       "vllm_gsm8k_max_num_seqs_512", "vllm_gsm8k_cudagraphs_1024",
                                       "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048",
                                       "transformers_gsm8k_continuous",
                                       "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_speculative_ngram_4",
                                       "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_model_runner_v2",
                                       "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_model_runner_v2_full_decode_only"}
    assert p["vllm_engine_start_s"] == {"cold": 150.0, "warm": 40.0}
    assert p["vllm_runs"] == {"settings": "default", "cold": "eval-vllm-cold", "warm": "eval-vllm-warm"}
    # runner-v2's settings: its UPFT pass starts the first engine (cold), its evaluation a warm one
    v2 = collect([tmp_path], "two GPUs, one group each", "v2")
    assert v2["vllm_runs"] == {"settings": "v2", "cold": "upft-vllm-seqs2048-graphs2048-v2",
                               "warm": "eval-vllm-seqs2048-graphs2048-v2"}
    assert v2["vllm_engine_start_s"] == {"cold": 200.0, "warm": 45.0} and v2["vllm_gsm8k_s"] == 19.0
    assert v2["gsm8k_accuracy"] == {"vllm_cold": None, "vllm_warm": 61.5, "transformers": 62.0}
    assert {k: v for k, v in v2.items() if not k.startswith(("vllm_", "gsm8k_"))} == \
        {k: v for k, v in p.items() if not k.startswith(("vllm_", "gsm8k_"))}  # the rest as with vLLM's defaults
    # the upft-parts group: each part over runner-v2's full pass (100 s in the fixture)
    assert p["upft_parts_model_runner_v2"] == {
        "prefill_only": {"s": 2.0, "start_s": 40.0, "tokens": 2_000, "tokens_per_s": 1_000,
                         "finished": "2026-12-06T17:00:00", "over_full": 0.02},
        "prefixes_only": {"s": 3.0, "start_s": 40.0, "tokens": 64_000, "tokens_per_s": 21_333,
                          "finished": "2026-12-06T17:00:00", "over_full": 0.03}}
    assert p["eval_repeats"] == {}
    _w(tmp_path / "eval-vllm-warm-repeat" / "gsm8k.summary.json", {"wall_s": 19.0, "tokens_per_s": 21_000.0,
                                                                   "accuracy": 61.5, "generate_s": 16.0, "grade_s": 1.0})
    _w(tmp_path / "eval-vllm-warm-repeat" / "manifest.json", {"backend_start_s": 41.0, "finished": "2026-11-28T16:00:00"})
    assert collect([tmp_path])["eval_repeats"] == {"eval-vllm-warm": {
        "s": 19.0, "start_s": 41.0, "tokens_per_s": 21_000, "accuracy": 61.5, "generate_s": 16.0, "grade_s": 1.0,
        "grader_pool_s": None,
        "finished": "2026-11-28T16:00:00"}}
    assert p["transformers_gsm8k_cold_s"] == 50.0  # decoding + the backend's start: a cold start in full
    assert p["openrlhf"]["tokens_per_s_per_gpu"] == 21_000 and p["openrlhf"]["second_run_phases_s"]["op_load_s"] == 0.5
    fast = p["openrlhf"]["fast"]
    assert (fast["tokens_per_s_per_gpu"], fast["steps"], fast["max_abs_loss_diff"]) == (30_000, [3, 3], 0.01)
    fast16 = p["openrlhf"]["fast_micro_batch_16"]
    assert (fast16["tokens_per_s_per_gpu"], fast16["max_abs_loss_diff"]) == (40_000, 0.0)
    assert "openrlhf-profile" not in json.dumps(p)  # a profiled run's times are not figures
    assert p["openrlhf"]["fast_micro_batch_16_liger_zero_stage_0_causal"]["tokens_per_s_per_gpu"] == 50_000
    assert {k: (v["tokens_per_s_per_gpu"], v["loss_reference"]) for k, v in p["openrlhf"].items() if "liger" in k} == {
        "fast_micro_batch_16_liger": (45_000, "openrlhf-1"), "fast_micro_batch_16_liger_zero_stage_0":
        (47_000, "openrlhf-1"), "fast_micro_batch_32_liger": (48_000, "openrlhf-1"),
        "fast_micro_batch_16_liger_zero_stage_0_causal": (50_000, "openrlhf-1"),
        "fast_micro_batch_16_liger_zero_stage_0_causal_trained_logits": (55_000, "openrlhf-1"),
        "fast_micro_batch_32_liger_zero_stage_0_causal_trained_logits": (60_000, "openrlhf-1"),
        "fast_micro_batch_16_liger_zero_stage_0_causal_trained_logits_expandable_segments": (56_000, "openrlhf-1")}
    # bench.sh's trained-logits group: each run beside the same run without the flag
    assert {k: (v["tokens_per_s_per_gpu"], v["reference_tokens_per_s_per_gpu"], v["loss_reference"])
            for k, v in p["openrlhf"]["trained_logits"].items()} == {
        "zero_stage_3": (3_600, 3_000, "openrlhf-zero3"),
        "upft_fast_micro_batch_16_liger_zero_stage_0_causal": (52_000, 40_000, "openrlhf-upft-causal16"),
        "upft_zero_stage_3": (2_600, 2_000, "openrlhf-upft-zero3")}
    assert p["openrlhf"]["fast"]["reference_tokens_per_s_per_gpu"] == 21_000


def test_ratios_come_from_the_manifests_seconds_not_the_rounded_ones(tmp_path):
    _bench(tmp_path)
    _w(tmp_path / "upft-vllm-draw" / "manifest.json", {"wall_s": 6.249, "sampling_tokens": 120_000})
    _w(tmp_path / "full-vllm-draw" / "manifest.json", {"wall_s": 30.049, "sampling_tokens": 600_000})
    p = collect([tmp_path])
    assert (p["upft_sampling_s"]["vllm"], p["full_sampling_s"]["vllm"]) == (6.2, 30.0)  # 6.2 / 30.0 = 0.207
    assert p["upft_over_full"]["vllm"] == 0.208


def test_a_lease_without_a_first_run_compares_its_fast_runs_with_its_fast16(tmp_path):
    """Lease 12 ran no plain first run: its Liger runs follow its own micro-batch 16 run, never another
    lease's first run (each lease draws its own training set); micro-batch 16 itself needs a first run."""
    lease12, earlier = tmp_path / "lease12", tmp_path / "lease11"
    _bench(earlier)
    for name, tps in (("openrlhf-fast16", 14_000), ("openrlhf-liger16-zero0", 16_000)):
        _w(lease12 / name / "manifest.json", {"timing": {"tokens_per_s_per_gpu": tps}})
        (lease12 / name / "train_log.jsonl").write_text("".join(
            json.dumps({"step": s, "loss_mean": 1.0 / s + (0.002 if "liger" in name else 0)}) + "\n" for s in (1, 2)))
    o = collect([lease12, earlier])["openrlhf"]
    liger = o["fast_micro_batch_16_liger_zero_stage_0"]
    assert (liger["tokens_per_s_per_gpu"], liger["loss_reference"], liger["max_abs_loss_diff"]) == (16_000, "openrlhf-fast16", 0.002)
    assert o["fast_micro_batch_16"]["tokens_per_s_per_gpu"] == 40_000  # lease 12's has no first run beside it
    assert o["fast_micro_batch_16"]["loss_reference"] == "openrlhf-1"


def test_partial_bench_lists_what_is_missing(tmp_path):
    """A lease that ends mid-bench: the finished stages' figures, nulls and a list for the rest."""
    _bench(tmp_path)
    gone = ["full-transformers", "eval-transformers-cold", "eval-vllm-seqs2048", "openrlhf-2", "openrlhf-fast",
            "openrlhf-fast16"]
    for name in gone:
        (tmp_path / name / "manifest.json").unlink()
    p = collect([tmp_path])
    assert p["missing"] == gone and list(p["eval_variants"]) == [
        "transformers_gsm8k_eager", "transformers_gsm8k_sdpa", "transformers_gsm8k_sdpa_eager",
        "vllm_gsm8k_max_num_seqs_512", "vllm_gsm8k_cudagraphs_1024",
        "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048", "transformers_gsm8k_continuous",
        "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_speculative_ngram_4",
        "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_model_runner_v2",
        "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_model_runner_v2_full_decode_only"]
    assert p["openrlhf"]["fast"] is None and p["openrlhf"]["fast_micro_batch_16"] is None
    assert p["upft_over_full"] == {"vllm": 0.1, "vllm_engine_seed": 0.11,  # no ratio without both halves
                                   "transformers_eager": 0.13, "transformers_continuous": 0.14,
                                   "vllm_cudagraphs_1024": 0.15, "vllm_max_num_seqs_2048_cudagraphs_2048": 0.16,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_engine_seed": 0.17,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_speculative_ngram_4": 0.18,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_model_runner_v2": 0.19,
                                   "vllm_max_num_seqs_2048_cudagraphs_2048_model_runner_v2_full_decode_only": 0.2}
    assert p["upft_sampling_s"]["transformers"] == 12.0
    assert p["transformers_gsm8k_cold_s"] is None and p["gsm8k_accuracy"]["transformers"] is None
    assert p["openrlhf"]["second_run_phases_s"] is None and p["openrlhf"]["wall_s"] == [200.0]
    assert p["transformers_decode_steps"] is None


def test_no_finished_stage_is_one_error(tmp_path):
    with pytest.raises(UserError, match="no finished stage"):
        collect([tmp_path])


OPENRLHF = ["full-vllm-sft", "prep-sft", "openrlhf-1", "openrlhf-trained16", "openrlhf-causal16",
            "openrlhf-trained32", "openrlhf-profile", "openrlhf-2", "openrlhf-fast16", "openrlhf-liger16",
            "openrlhf-liger16-zero0", "openrlhf-fast"]
TRAINED_LOGITS = ["full-vllm-sft", "prep-sft", "upft-vllm-sft", "prep-upft", "openrlhf-zero3",
                  "openrlhf-zero3-trained", "openrlhf-upft-causal16", "openrlhf-upft-trained16",
                  "openrlhf-upft-zero3", "openrlhf-upft-zero3-trained"]
VLLM_VARIANTS = ["eval-vllm-seqs2048-graphs2048-cold", "eval-vllm-seqs2048-graphs2048",
                 "upft-vllm-seqs2048-graphs2048", "full-vllm-seqs2048-graphs2048",
                 "upft-vllm-seqs2048-graphs2048-engine", "full-vllm-seqs2048-graphs2048-engine"]

SPECULATIVE = ["upft-vllm-seqs2048-graphs2048-ngram4", "full-vllm-seqs2048-graphs2048-ngram4",
               "eval-vllm-seqs2048-graphs2048-ngram4"]
RUNNER_V2 = ["upft-vllm-seqs2048-graphs2048-v2", "full-vllm-seqs2048-graphs2048-v2", "eval-vllm-seqs2048-graphs2048-v2"]
UPFT_PARTS = ["upft-vllm-seqs2048-graphs2048-v2-prefill", "upft-vllm-seqs2048-graphs2048-v2-prefixes"]
DECODE_GRAPHS = ["upft-vllm-seqs2048-graphs2048-v2-decode-graphs", "full-vllm-seqs2048-graphs2048-v2-decode-graphs",
                 "eval-vllm-seqs2048-graphs2048-v2-decode-graphs"]
REPEATS = ["eval-vllm-seqs2048-graphs2048-repeat", "eval-vllm-warm-repeat"]
ALLOC = ["openrlhf-trained16-expandable", "openrlhf-trained16-repeat"]
# what a stand-in leaves in the folder it was to write: a manifest, as a finished stage does
FINISH = 'finish() { case "$1" in *.json) ;; *) mkdir -p "$1" && : > "$1/manifest.json" ;; esac; }'


def _bench_sh(tmp_path: Path, stages: str | None, fail: str = "@", **extra: str):
    """bench.sh with stand-ins for the GPU programs, each logging the folder it would write (the value
    after --out) to tmp_path/log and leaving a manifest there; the one named FAIL exits 3 instead.
    ``extra``: more of bench.sh's environment."""
    import os
    import subprocess

    log, bin_ = tmp_path / "log", tmp_path / "bin"
    bin_.mkdir()
    for name in ("python", "bash"):
        (bin_ / name).write_text(f'#!/bin/sh\n{FINISH}\nwhile [ $# -gt 0 ]; do [ "$1" = --out ] && echo "$2" >> {log} '
                                 f'&& case "$2" in */{fail}) exit 3;; esac && finish "$2"; shift; done\nexit 0\n')
        (bin_ / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "MODEL": "m.gguf", "DATA": "d",
           "RUNS": str(tmp_path / "runs"), **extra}
    if stages:
        env["STAGES"] = stages
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(["/bin/bash", str(repo / "scripts" / "gpu" / "bench.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True)


@pytest.mark.parametrize("fail", ["openrlhf-trained16", "openrlhf-trained32", "openrlhf-profile", "openrlhf-1",
                                  "openrlhf-causal16", "openrlhf-2"])
def test_bench_goes_on_after_a_failed_trained_logits_or_causal16_run_only(tmp_path, fail):
    """A trained-logits run that fails (new code, or out of memory at micro-batch 32) is logged and the
    openrlhf group goes on, as does causal16 (out of memory on an 80 GB card); any other run that fails
    stops the group with its exit status."""
    done = _bench_sh(tmp_path, "openrlhf", fail)
    ran = [Path(line).name for line in (tmp_path / "log").read_text().splitlines()]
    if "trained" in fail or "profile" in fail or "causal16" in fail:
        assert done.returncode == 0 and ran == OPENRLHF and f"## {fail} failed: 3" in done.stdout
    else:
        assert done.returncode == 3 and ran == OPENRLHF[:OPENRLHF.index(fail) + 1]


@pytest.mark.parametrize("fail", ["openrlhf-1", "openrlhf-trained16"])
def test_openrlhf_short_stops_on_a_failed_plain_run_and_goes_on_after_a_failed_fast_one(tmp_path, fail):
    """openrlhf-short, the openrlhf group's first two runs, fails as that group does: the plain run's
    failure stops it with its status, the fastest run's is logged and the next group runs, openrlhf-alloc
    included (its runs are logged the same way)."""
    done = _bench_sh(tmp_path, "openrlhf-short transformers", fail)
    ran = [Path(line).name for line in (tmp_path / "log").read_text().splitlines()]
    if fail == "openrlhf-1":
        assert done.returncode == 3 and ran == OPENRLHF[:3]
    else:
        assert done.returncode == 0 and "## openrlhf-trained16 failed: 3" in done.stdout
        assert ran == [*OPENRLHF[:4], "upft-transformers", "full-transformers", "eval-transformers-cold"]
    # openrlhf-alloc after it: its runs too once the plain run has finished, and the chain goes on
    (tmp_path / "alloc").mkdir()
    again = _bench_sh(tmp_path / "alloc", "openrlhf-short openrlhf-alloc transformers", fail)
    ran = [Path(line).name for line in (tmp_path / "alloc" / "log").read_text().splitlines()]
    assert again.returncode == done.returncode
    assert ran == (OPENRLHF[:3] if fail == "openrlhf-1" else [*OPENRLHF[:4], *ALLOC, "upft-transformers",
                                                               "full-transformers", "eval-transformers-cold"])


@pytest.mark.parametrize("stages, trained", [("runner-v2 openrlhf", OPENRLHF[1:]),
                                             ("runner-v2 upft-parts transformers openrlhf-short", OPENRLHF[1:4])])
def test_the_sft_set_can_come_from_an_earlier_groups_full_draw(tmp_path, stages, trained):
    """SFT_DRAW: the openrlhf groups build their set from that finished draw and draw none of their own
    (runner-v2's full draw, in a lease too short for another engine start; the second chain is the
    README's one-lease plan); a draw that has not finished stops the group before any training, with
    one line."""
    v2, group = "full-vllm-seqs2048-graphs2048-v2", stages.split()[-1]
    done = _bench_sh(tmp_path, stages, SFT_DRAW=v2)
    ran = [Path(line).name for line in (tmp_path / "log").read_text().splitlines()]
    assert done.returncode == 0 and "full-vllm-sft" not in ran and ran.index(v2) < ran.index("prep-sft")
    assert ran[ran.index("prep-sft"):] == trained
    (tmp_path / "commands").mkdir(), (tmp_path / "early").mkdir()
    runs = _bench_commands(tmp_path / "commands", stages, "VLLM_CACHE_ROOT", SFT_DRAW=v2)
    prep = runs["prep-sft"]
    assert prep[prep.index("--samples") + 1] == str(tmp_path / "commands" / "runs" / v2) and "sft" in prep

    (tmp_path / "early" / "runs" / v2).mkdir(parents=True)  # begun, no manifest yet
    done = _bench_sh(tmp_path / "early", group, SFT_DRAW=v2)
    assert done.returncode == 2 and not (tmp_path / "early" / "log").exists()
    assert done.stderr.strip().splitlines()[-1] == f"error: SFT_DRAW={v2} has not finished in " \
        f"{tmp_path / 'early' / 'runs'} (run the group that draws it first)"


@pytest.mark.parametrize("fail", ["openrlhf-zero3-trained", "openrlhf-upft-trained16",
                                  "openrlhf-upft-zero3-trained", "openrlhf-zero3", "openrlhf-upft-causal16"])
def test_the_trained_logits_group_goes_on_after_a_failed_trained_logits_run_only(tmp_path, fail):
    """As in the openrlhf group: a --trained-logits run that fails is logged and the next runs; a
    reference run that fails (the run without the flag) stops the group."""
    done = _bench_sh(tmp_path, "trained-logits", fail)
    ran = [Path(line).name for line in (tmp_path / "log").read_text().splitlines()]
    if "trained" in fail:
        assert done.returncode == 0 and ran == TRAINED_LOGITS and f"## {fail} failed: 3" in done.stdout
    else:
        assert done.returncode == 3 and ran == TRAINED_LOGITS[:TRAINED_LOGITS.index(fail) + 1]


@pytest.mark.parametrize("stages, expected", [
    ("openrlhf", OPENRLHF),
    ("openrlhf-short", OPENRLHF[:4]),  # the plain run and the fastest alone: a chain that ends on its own
    ("openrlhf-short openrlhf-alloc", [*OPENRLHF[:4], *ALLOC]),
    ("trained-logits", TRAINED_LOGITS),
    ("openrlhf trained-logits", [*OPENRLHF, *TRAINED_LOGITS]),  # (the real draw stages skip a second draw)
    ("transformers,openrlhf", ["upft-transformers", "full-transformers", "eval-transformers-cold", *OPENRLHF]),
    ("openrlhf transformers", [*OPENRLHF, "upft-transformers", "full-transformers", "eval-transformers-cold"]),
    ("continuous", ["upft-transformers-cb", "full-transformers-cb", "eval-transformers-cb"]),
    ("variants", ["upft-transformers-eager", "full-transformers-eager", "eval-transformers-eager"]),
    ("sdpa", ["eval-transformers-sdpa-cold", "eval-transformers-sdpa-eager"]),
    ("vllm-variants", VLLM_VARIANTS),
    ("speculative", SPECULATIVE),
    ("runner-v2", RUNNER_V2),
    ("runner-v2 upft-parts", [*RUNNER_V2, *UPFT_PARTS]),
    ("decode-graphs", DECODE_GRAPHS),
    ("decode-steps", ["decode_steps.json"]),
    ("vllm vllm-variants repeat", ["eval-vllm-cold", "eval-vllm-warm", "upft-vllm-draw", "full-vllm-draw",
                                   *VLLM_VARIANTS, *REPEATS]),
    (None, ["eval-vllm-cold", "eval-vllm-warm", "upft-vllm-draw", "full-vllm-draw",
            "upft-transformers", "full-transformers", "eval-transformers-cold",
            "upft-vllm-engine", "full-vllm-engine", *VLLM_VARIANTS, *SPECULATIVE, *RUNNER_V2, *UPFT_PARTS, *DECODE_GRAPHS,
            *OPENRLHF, *ALLOC,
            *TRAINED_LOGITS,
            "upft-transformers-eager", "full-transformers-eager", "eval-transformers-eager",
            "eval-transformers-sdpa-cold", "eval-transformers-sdpa-eager", "upft-transformers-cb", "full-transformers-cb", "eval-transformers-cb", "decode_steps.json",
            *REPEATS]),
])
def test_bench_runs_the_stages_asked_for(tmp_path, stages, expected):
    """bench.sh's STAGES: a lease with little time left runs the groups it names, in that order (the
    OpenRLHF runs first draw the full samples their training set is built from)."""
    assert _bench_sh(tmp_path, stages).returncode == 0
    assert [Path(x).name for x in (tmp_path / "log").read_text().split()] == expected


def _bench_commands(tmp_path: Path, stages: str, cache: str, **extra: str) -> dict[str, list[str]]:
    """bench.sh's STAGES with a stand-in python that logs each command it is given: the folder each
    command writes (its --out) -> the command's words after the value of the environment variable
    ``cache`` it ran with (the compile cache it would fill or find). ``extra``: more of bench.sh's
    environment."""
    import os
    import subprocess

    bin_, log = tmp_path / "bin", tmp_path / "log"
    bin_.mkdir()
    (bin_ / "python").write_text(f'#!/bin/sh\necho "${{{cache}:-none}} $*" >> {log}\n{FINISH}\n'
                                 'while [ $# -gt 0 ]; do [ "$1" = --out ] && finish "$2"; shift; done\n')
    (bin_ / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "MODEL": "m.gguf", "DATA": "d",
           "RUNS": str(tmp_path / "runs"), "STAGES": stages,
           "VIRTUAL_ENV": "set", **extra}  # train_sft.sh then leaves a checkout's .venv alone: the stand-in runs
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["/bin/bash", str(repo / "scripts" / "gpu" / "bench.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = map(str.split, log.read_text().splitlines())
    return {Path(w[w.index("--out") + 1]).name: w for w in lines if "--out" in w}


@pytest.mark.parametrize("stages, settings", [("vllm transformers", "default"), ("vllm runner-v2", "v2"),
                                              ("runner-v2 upft-parts", "v2")])
def test_bench_ends_by_collecting_perf_json_with_runner_v2s_vllm_keys_where_it_ran(tmp_path, stages, settings):
    """perf.json's vLLM evaluation and engine-start keys come from runner-v2's runs (the settings the
    README's figures use) where the bench ran that group, else from the vllm group's."""
    _bench_commands(tmp_path, stages, "VLLM_CACHE_ROOT")
    last = (tmp_path / "log").read_text().splitlines()[-1].split()
    assert last[1:] == ["scripts/gpu/perf.py", str(tmp_path / "runs"), "results/gpu/perf.json",
                        "--vllm-settings", settings]


def test_the_sdpa_group_is_the_transformers_evaluations_with_transformers_attention(tmp_path):
    """The control of the grouped decoding steps: the transformers group's cold evaluation and variants'
    eager one, each the same command with --attention sdpa, the cold one in an empty compile cache of
    its own (else it would find the transformers group's graphs and not be cold)."""
    runs = _bench_commands(tmp_path, "transformers variants sdpa", "TORCHINDUCTOR_CACHE_DIR")
    for control, grouped in (("eval-transformers-sdpa-cold", "eval-transformers-cold"),
                             ("eval-transformers-sdpa-eager", "eval-transformers-eager")):
        flags = runs[control][1:]
        assert " ".join(flags).count("--attention sdpa") == 1 and "--attention" not in runs[grouped]
        assert [w for w in flags if w not in ("--attention", "sdpa") and not w.endswith(control)] == \
            [w for w in runs[grouped][1:] if not w.endswith(grouped)]
    caches = [runs[name][0] for name in ("eval-transformers-sdpa-cold", "eval-transformers-cold")]
    assert caches == [str(tmp_path / "runs" / "inductor-sdpa"), str(tmp_path / "runs" / "inductor-cold")]


def test_the_repeat_group_needs_the_runs_it_repeats(tmp_path):
    """In a fresh RUNS the repeat group would time cold starts as repeats of warm ones: refused."""
    done = _bench_sh(tmp_path, "repeat")
    assert done.returncode == 2 and not (tmp_path / "log").exists()
    assert "error: the repeat group repeats eval-vllm-seqs2048-graphs2048, which has not run" in done.stderr


UPFT_PARTS_REFUSED = ("the upft-parts group is compared with runner-v2's passes, which have not run in {runs} "
                      "(run runner-v2 first)")
ALLOC_REFUSED = ("the openrlhf-alloc group is compared with openrlhf-short's runs, which have not run in {runs} "
                 "(run openrlhf-short first)")


@pytest.mark.parametrize("group, finished, error", [
    ("upft-parts", [], UPFT_PARTS_REFUSED), ("upft-parts", ["upft-vllm-seqs2048-graphs2048-v2"], UPFT_PARTS_REFUSED),
    ("openrlhf-alloc", [], ALLOC_REFUSED), ("openrlhf-alloc", ["prep-sft"], ALLOC_REFUSED)])
def test_a_group_compared_with_an_earlier_ones_runs_needs_them(tmp_path, group, finished, error):
    """upft-parts' parts are read against runner-v2's full pass, and its engines should start warm in that
    group's compile cache; openrlhf-alloc's runs against openrlhf-short's of the same lease (its plain run
    is their loss reference). Without those (a fresh RUNS; runner-v2 stopped after its UPFT pass;
    openrlhf-short before its plain run) the group is refused before anything runs."""
    for name in finished:
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "manifest.json").write_text("{}")
    done = _bench_sh(tmp_path, group)
    assert done.returncode == 2 and not (tmp_path / "log").exists()
    assert done.stderr.strip() == "error: " + error.format(runs=tmp_path / "runs")


def test_the_openrlhf_alloc_group_is_the_fastest_run_with_expandable_segments_then_without(tmp_path):
    """The expandable-segments run is openrlhf-short's fastest command with only PyTorch's allocator
    setting added; the repeat after it is that command again, without the setting."""
    runs = _bench_commands(tmp_path, "openrlhf-short openrlhf-alloc", "PYTORCH_CUDA_ALLOC_CONF")

    def renamed(name: str, to: str) -> list[str]:  # NAME's command writing to TO instead
        return [w.replace(name, to) if w.endswith(name) else w for w in runs[name]]

    fast = runs["openrlhf-trained16"]
    assert fast[0] == "none" and "--trained-logits" in fast
    assert runs["openrlhf-trained16-expandable"] == ["expandable_segments:True", *renamed(
        "openrlhf-trained16", "openrlhf-trained16-expandable")[1:]]
    assert runs["openrlhf-trained16-repeat"] == renamed("openrlhf-trained16", "openrlhf-trained16-repeat")


def test_bench_refuses_an_unknown_group_before_running_any(tmp_path):
    done = _bench_sh(tmp_path, "vllm,transformer")
    assert done.returncode == 2 and done.stderr.startswith("error: unknown STAGES group 'transformer'")
    assert not (tmp_path / "log").exists() and not (tmp_path / "runs").exists()


def test_decode_steps_times_every_step_of_a_stopped_generate(model_path, tok):
    """scripts/gpu/decode_steps.py's measurement on the real model (CPU, dynamic cache): the run stops
    after the steps asked for, however far the decode could go, and times each of them."""
    from decode_steps import profile, run

    from upft.models import end_of_turn_id, load_model

    model = load_model(model_path, "cpu").eval()
    prompts = [tok("What is 2 + 3?").input_ids, tok("Name a prime number above ten.").input_ids]
    never = len(tok) - 1  # a stop id the model does not produce here, so nothing ends the decode early
    assert never != end_of_turn_id(tok)
    r = run(model, prompts, "never", 6, [never], tok.pad_token_id)
    assert (r["rows"], r["cache"], r["steps"]) == (2, "dynamic", 6) and 0 < r["step_ms"] < 1000 * r["wall_s"]
    ops = profile(model, prompts, "never", [never], tok.pad_token_id, top=40)
    assert len(ops) == 40 and ops[0]["self_cpu_ms"] >= ops[-1]["self_cpu_ms"] > 0
    assert {"aten::mm", "aten::bmm"} & {op["op"] for op in ops}  # the model's own matrix products are in it


def test_pack_takes_the_figures_and_leaves_samples_weights_and_caches(tmp_path):
    """scripts/gpu/pack.sh, run in every progress call of a lease: what comes back is what perf.py
    and the README read, small enough for the trip (no samples, model files or compile caches)."""
    import subprocess
    import tarfile

    runs = tmp_path / "runs"
    keep = ["eval-vllm-cold/manifest.json", "eval-vllm-cold/summary.json", "eval-vllm-cold/gsm8k.summary.json",
            "prep-sft/stats.json", "openrlhf-1/train_log.jsonl", "openrlhf-2.tmp/openrlhf.log", "chain.log",
            "decode_steps.json"]
    leave = ["upft-vllm-draw/samples.jsonl", "openrlhf-1/tokenizer.json", "openrlhf-1/model.safetensors",
             "vllm-cache/torch_compile_cache/manifest.json", "inductor-cold/x/summary.json"]
    for name in keep + leave:
        (runs / name).parent.mkdir(parents=True, exist_ok=True)
        (runs / name).write_text("{}")
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "pack.sh"
    (tmp_path / "out").mkdir()
    done = subprocess.run(["bash", str(script), str(runs), "out/bench.tgz"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "out" / "bench.tgz") as tar:
        assert sorted(n.removeprefix("./") for n in tar.getnames()) == sorted(keep)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.tgz"]
    missing = subprocess.run(["bash", str(script), str(tmp_path / "nowhere"), "b.tgz"], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no run folder")


@pytest.mark.parametrize("tar_rc, rc", [(1, 0), (2, 2)])
def test_pack_survives_a_file_changing_under_it_and_reports_worse(tmp_path, tar_rc, rc):
    """tar exits 1 when a running stage's log grows while it reads it: the archive is still good and
    replaces the last one. Anything worse is an error line, exit status, and nothing half-made left."""
    import os
    import shutil
    import subprocess

    runs, out, bin_ = tmp_path / "runs", tmp_path / "out", tmp_path / "bin"
    for d in (runs / "eval", out, bin_):
        d.mkdir(parents=True)
    (runs / "eval" / "manifest.json").write_text("{}")
    (bin_ / "tar").write_text(f'#!/bin/sh\n{shutil.which("tar")} "$@"\nexit {tar_rc}\n')
    (bin_ / "tar").chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "pack.sh"
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script), str(runs), str(out / "b.tgz")], env=env, capture_output=True,
                          text=True)
    assert done.returncode == rc
    if rc:
        assert done.stderr.startswith("error: tar failed (2)") and list(out.iterdir()) == []
    else:
        assert [p.name for p in out.iterdir()] == ["b.tgz"]


def test_several_leases_read_as_one(tmp_path):
    """Each stage from the first folder that finished it: a later lease fills in what the first did
    not run, and never replaces a figure the first one measured."""
    first, later = tmp_path / "lease1", tmp_path / "lease2"
    _bench(later)
    _w(later / "decode_steps.json", {"results": [{"rows": 200}]})
    for name in ("upft-vllm-draw", "full-vllm-draw", "openrlhf-1"):  # what the first lease finished
        _w(first / name / "manifest.json", {"wall_s": 5.0, "sampling_tokens": 100_000,
                                            "timing": {"tokens_per_s_per_gpu": 9_000}})
    (first / "openrlhf-1" / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss_mean": 1.0}) + "\n")
    p = collect([first, later])
    assert p["upft_sampling_s"]["vllm"] == 5.0 and p["upft_sampling_s"]["transformers"] == 12.0
    # a fast run is compared with the first run of its own lease (each lease draws its own training set)
    assert p["openrlhf"]["tokens_per_s_per_gpu"] == 9_000 and p["openrlhf"]["fast"]["steps"] == [3, 3]
    lone = tmp_path / "lease0"  # a fast run without its lease's first run: `later`'s pair is taken
    _w(lone / "openrlhf-fast" / "manifest.json", {"timing": {"tokens_per_s_per_gpu": 1}})
    for folder, upft_s in ((first, 7.0), (later, 11.0)):  # the trained-logits group's draws, in every folder
        for mode, wall in (("upft", upft_s), ("full", 40.0)):
            _w(folder / f"{mode}-vllm-sft" / "manifest.json", {"wall_s": wall, "sampling_tokens": 1, "finished": "t"})
    assert collect([first, later])["upft_over_full_trainer_sets"] == {
        "lease1": {"upft_s": 7.0, "full_s": 40.0, "upft_over_full": 0.175, "finished": ["t", "t"]},
        "lease2": {"upft_s": 11.0, "full_s": 40.0, "upft_over_full": 0.275, "finished": ["t", "t"]}}
    fast = collect([lone, first, later])["openrlhf"]["fast"]
    assert fast["tokens_per_s_per_gpu"] == 30_000
    runs = collect([lone, first, later])["openrlhf"]["runs"]  # every folder's figure, by folder
    assert runs["openrlhf-fast"] == {"lease0": 1, "lease2": 30_000} and runs["openrlhf-1"] == {"lease1": 9_000, "lease2": 21_000}
    (later / "openrlhf-1" / "manifest.json").unlink()
    o = collect([first, later])["openrlhf"]  # no first run beside them: fast16 is the loss reference
    assert o["fast"]["loss_reference"] == "openrlhf-fast16" and o["fast_micro_batch_16"] is None
    assert p["device"] == "NVIDIA H100 80GB HBM3" and p["transformers_decode_steps"] == [{"rows": 200}]
    for name in ("eval-vllm-cold", "eval-vllm-warm", "eval-transformers-cold"):  # only variants in the folders
        for f in (later / name).iterdir():
            f.rename(later / "eval-vllm-graphs1024" / f.name) if f.name == "summary.json" else f.unlink()
        (later / name).rmdir()
    assert collect([first, later])["device"] == "NVIDIA H100 80GB HBM3"  # from a variant's summary


@pytest.mark.parametrize("runs, committed", [(["results/gpu/bench-h100/lease23", "results/gpu/bench-h100/lease22",
                                                "results/gpu/bench-h100/lease21",
                                                "results/gpu/bench-h100/lease19",
                                                "results/gpu/bench-h100/lease18", "results/gpu/bench-h100/lease17",
                                                "results/gpu/bench-h100/lease16", "results/gpu/bench"],
                                               "results/gpu/perf-h100.json"),
                                             (["results/gpu/bench-h100/lease23"], "results/gpu/perf.json"),
                                             ([f"results/gpu/bench-h200/lease{n}"
                                               for n in ("11", "14", "13", "12", "9c", "10", "15b", "15a")],
                                              "results/gpu/perf-h200.json")])
def test_committed_perf_files_are_what_perf_py_writes(runs, committed):
    """The README's speed tables quote these files: each must be what perf.py collects from the run
    folders committed beside it (its note and vLLM settings aside, which only the command line gives)."""
    root = Path(__file__).resolve().parents[1]
    kept = json.loads((root / committed).read_text())
    assert collect([root / r for r in runs], kept.get("note"), kept["vllm_runs"]["settings"]) == kept
    # the issue's file: its vLLM keys are runner-v2's, the settings of the README's figures
    assert kept["vllm_runs"]["settings"] == ("v2" if committed == "results/gpu/perf.json" else "default")


def _lease(tmp_path: Path, *args: str, **env_extra: str):
    """scripts/gpu/lease.sh with a stand-in for python (the GPU programs): it logs the folder it
    would write and fails for an --out named in FAIL, sleeping SLOW seconds on any --out named there."""
    import os
    import subprocess

    bin_ = tmp_path / "bin"
    if not bin_.exists():
        bin_.mkdir()
        (bin_ / "python").write_text(
            '#!/bin/sh\nwhile [ $# -gt 0 ]; do if [ "$1" = --out ]; then echo "$2" >> "$RUNS/ran";\n'
            'case "$2" in *"${SLOW:-@}"*) sleep 3;; esac; case "$2" in *"${FAIL:-@}"*) exit 1;; esac; fi; shift; done\n')
        (bin_ / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "MODEL": "m.gguf", "DATA": "d",
           "RUNS": str(tmp_path / "runs"), "LEASE_POLL_S": "0.2", **env_extra}
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(["/bin/bash", str(repo / "scripts" / "gpu" / "lease.sh"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_lease_runs_a_chain_per_gpu_and_packs_what_ran(tmp_path):
    """lease.sh: one detached chain per GPU; a failed group is logged and the next one runs; `wait`
    packs the logs each round and says when every chain has ended (3 while one still runs)."""
    import tarfile

    started = _lease(tmp_path, "start", "transformers decode-steps", "vllm", FAIL="eval-transformers-cold", SLOW="eval-vllm")
    assert started.returncode == 0, started.stderr
    again = _lease(tmp_path, "start", "vllm")
    assert again.returncode == 2 and again.stderr.startswith("error: the chains of an earlier start still run")
    assert _lease(tmp_path, "wait", "out", "0").returncode == 3  # eval-vllm-* sleep: not ended yet
    done = _lease(tmp_path, "wait", "out", "60")
    assert done.returncode == 0 and "every chain ended" in done.stdout, done.stderr
    gpu0 = (tmp_path / "runs" / "chain-gpu0.log").read_text()
    assert "## transformers failed: 1" in gpu0 and "## decode-steps" in gpu0 and "## end" in gpu0
    ran = (tmp_path / "runs" / "ran").read_text().split()
    assert {Path(r).name for r in ran} >= {"eval-transformers-cold", "decode_steps.json", "eval-vllm-warm", "full-vllm-draw"}
    with tarfile.open(tmp_path / "out" / "bench.tgz") as tar:
        assert {"./chain-gpu0.log", "./chain-gpu1.log"} <= set(tar.getnames())


@pytest.mark.parametrize("args, error", [
    (("start",), "error: start needs the groups"),
    (("start", "vllm", "transformer"), "error: unknown STAGES group 'transformer'"),
    (("wait", "out"), "error: no chains were started"),
    (("stop",), "error: usage: lease.sh start"),
])
def test_lease_refuses_bad_input_before_starting_anything(tmp_path, args, error):
    done = _lease(tmp_path, *args)
    assert done.returncode == 2 and done.stderr.startswith(error) and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_bench_passes_each_stage_its_flags_and_cache(tmp_path):
    """vLLM sampling stages differ only in their flags: --engine-seed for engine-seed's, a variant's
    flags and compile cache for vllm-variants' (the same cache its evaluations filled); the OpenRLHF
    runs in theirs (the SFT set drawn in its own cache), Liger's kernels for six of them (passed
    through to OpenRLHF), ZeRO stage 0 for five."""
    runs = _bench_commands(tmp_path, "engine-seed vllm vllm-variants speculative runner-v2 upft-parts decode-graphs "
                                     "openrlhf trained-logits repeat", "VLLM_CACHE_ROOT")
    assert "--engine-seed" in runs["upft-vllm-engine"] and "--engine-seed" in runs["full-vllm-engine"]
    upft = runs["upft-vllm-seqs2048-graphs2048"]
    assert upft[0] == str(tmp_path / "runs" / "vllm-cache-seqs2048-graphs2048")
    assert " ".join(upft).count("--max-num-seqs 2048 --max-cudagraph-size 2048") == 1 and "--L" in upft
    assert "--engine-seed" not in upft and "--max-num-seqs" not in runs["full-vllm-engine"]
    assert " ".join(runs["full-vllm-seqs2048-graphs2048"]).count("--max-num-seqs 2048 --max-cudagraph-size 2048") == 1
    for mode in ("upft", "full"):  # the same flags and cache, and the engine's seed
        engine = runs[f"{mode}-vllm-seqs2048-graphs2048-engine"]
        plain = [w.replace("-graphs2048", "-graphs2048-engine") if w.endswith(f"{mode}-vllm-seqs2048-graphs2048") else w
                 for w in runs[f"{mode}-vllm-seqs2048-graphs2048"]]
        assert engine.count("--engine-seed") == 1 and [w for w in engine if w != "--engine-seed"] == plain
    assert runs["eval-vllm-seqs2048-graphs2048"][0] == upft[0]  # the cache its evaluations filled
    # speculation, the model runner v2 and that with decoding graphs alone: vllm-variants' commands and
    # the flags, each in one cache of its own
    for suffix, flag in (("ngram4", ["--speculative-ngram", "4"]), ("v2", ["--model-runner", "v2"]),
                         ("v2-decode-graphs", ["--model-runner", "v2", "--cudagraph-mode", "FULL_DECODE_ONLY"])):
        for stage in ("upft-vllm-seqs2048-graphs2048", "full-vllm-seqs2048-graphs2048",
                      "eval-vllm-seqs2048-graphs2048"):
            variant, base = runs[f"{stage}-{suffix}"], runs[stage]
            assert variant[0] == str(tmp_path / "runs" / f"vllm-cache-{suffix}")
            assert " ".join(variant).count(" ".join(flag)) == 1
            assert [w for w in variant[1:] if w not in flag and not w.endswith(f"-{suffix}")] == \
                [w for w in base[1:] if not w.endswith(stage)]
    # upft-parts: runner-v2's UPFT command (its cache, flags and seed), with the prefix length and fraction after
    # its own (argparse keeps the last): the prompts with one token each, and the prefixes with no full draw
    v2 = runs["upft-vllm-seqs2048-graphs2048-v2"]
    for part, tail in (("prefill", ["--L", "1", "--p", "0"]), ("prefixes", ["--p", "0"])):
        name = f"upft-vllm-seqs2048-graphs2048-v2-{part}"
        assert runs[name] == [*v2[:-2], *tail, "--out", v2[-1] + f"-{part}"]
    # the repeats: the same commands (and caches) as the evaluations they repeat
    assert runs["eval-vllm-seqs2048-graphs2048-repeat"] == [
        w + "-repeat" if w.endswith("eval-vllm-seqs2048-graphs2048") else w for w in runs["eval-vllm-seqs2048-graphs2048"]]
    warm = runs["eval-vllm-warm-repeat"]
    assert warm[0] == str(tmp_path / "runs" / "vllm-cache") and "--max-num-seqs" not in warm and "--backend" in warm
    # the SFT set's draw: its own cache, so the vllm group's cold start can run at once on another GPU
    assert runs["full-vllm-sft"][0] == str(tmp_path / "runs" / "vllm-cache-sft") and "--L" not in runs["full-vllm-sft"]
    fast16 = runs["openrlhf-fast16"]
    assert fast16.count("--micro-batch") == 2 and fast16[-3:-1] == ["16", "--out"]  # bench's 8, then 16

    def like_fast16(name: str, *flags: str) -> list[str]:  # fast16's command with FLAGS before --out NAME
        return [*fast16[:-2], *flags, "--out", fast16[-1].replace("openrlhf-fast16", name)]

    liger = ["--", "--ds.use_liger_kernel"]  # Liger's kernels, passed through to OpenRLHF
    assert runs["openrlhf-liger16"] == like_fast16("openrlhf-liger16") + liger
    zero0 = like_fast16("openrlhf-liger16-zero0", "--zero-stage", "0") + liger  # bench's stage 2, then 0
    assert runs["openrlhf-liger16-zero0"] == zero0 and zero0.count("--zero-stage") == 2
    best = ["--zero-stage", "0", "--causal-attention"]
    assert runs["openrlhf-causal16"] == like_fast16("openrlhf-causal16", *best) + liger
    trained = like_fast16("openrlhf-trained16", *best, "--trained-logits") + liger
    assert runs["openrlhf-trained16"] == trained
    assert runs["openrlhf-trained32"] == [*fast16[:-3], "32", *best, "--trained-logits", "--out",
                                          fast16[-1].replace("openrlhf-fast16", "openrlhf-trained32"), *liger]
    # the candidate settings, 8 micro-steps profiled
    assert runs["openrlhf-profile"] == [*like_fast16("openrlhf-profile", *best, "--trained-logits"), *liger,
                                        "--upft.profile_steps", "8"]
    with_liger = {name for name, words in runs.items() if "--ds.use_liger_kernel" in words}
    assert with_liger == {"openrlhf-liger16", "openrlhf-liger16-zero0", "openrlhf-causal16", "openrlhf-trained16",
                          "openrlhf-trained32", "openrlhf-profile", "openrlhf-upft-causal16", "openrlhf-upft-trained16"}

    def renamed(name: str, to: str) -> list[str]:  # NAME's command writing to TO instead
        return [w.replace(name, to) if w.endswith(name) else w for w in runs[name]]

    # the trained-logits group: each --trained-logits run is the command of the run beside it, and the flag
    for run, ref in (("openrlhf-zero3-trained", "openrlhf-zero3"), ("openrlhf-upft-trained16", "openrlhf-upft-causal16"),
                     ("openrlhf-upft-zero3-trained", "openrlhf-upft-zero3")):
        assert runs[run].count("--trained-logits") == 1
        assert [w for w in runs[run] if w != "--trained-logits"] == renamed(ref, run)
    for zero3, data in (("openrlhf-zero3", "prep-sft"), ("openrlhf-upft-zero3", "prep-upft")):  # the launcher's own
        words = runs[zero3]  # ZeRO stage 3 (after bench's 2) with gradient checkpointing, seed 1, on its set
        assert words[len(words) - 1 - words[::-1].index("--zero-stage") + 1] == "3" and "--seed" in words
        assert "--no-gradient-checkpointing" not in words and words[words.index("--data") + 1].endswith(data)
    assert runs["openrlhf-upft-causal16"][runs["openrlhf-upft-causal16"].index("--data") + 1].endswith("prep-upft")
    prep = " ".join(runs["prep-upft"])  # the UPFT set: the UPFT draw's prefixes of 32 tokens
    assert "--method upft --L 32" in prep and prep.split("--samples ")[1].split()[0].endswith("upft-vllm-sft")
    assert "--L 32 --p 0.1" in " ".join(runs["upft-vllm-sft"]) and runs["upft-vllm-sft"][0] == runs["full-vllm-sft"][0]


def test_compile_probe_appends_one_line_per_mode_each_from_its_own_process(tmp_path):
    """scripts/gpu/compile_probe.py on a CPU (two random layers, 4 rows): every mode asked for decodes
    its forced tokens in a child process and lands as one JSONL line, appended to what the file held;
    a mode that fails is a line with its exit status, the next one still runs, and the probe exits 1
    naming it."""
    import os
    import subprocess
    import sys

    out = tmp_path / "probe.jsonl"
    out.write_text('{"mode": "earlier"}\n')
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "compile_probe.py"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the modes' inductor caches, which the probe removes

    def probe(rows: int, *modes: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), "--out", str(out), "--device", "cpu", "--rows", str(rows),
                               "--modes", *modes], capture_output=True, text=True, env=env)

    done = probe(4, "eager", "inductor-warm")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mode"] for r in lines] == ["earlier", "eager", "inductor-warm"]
    for r in lines[1:]:
        assert (r["rows"], r["steps"], r["new_tokens"], r["gpu"]) == (4, 70, 70, "cpu")
        assert 0 < r["step_ms_median"] < 1000 * r["wall_s"] < 1000 * r["process_s"]
    done = probe(0, "eager")  # no rows: generate fails in the child
    failed = json.loads(out.read_text().splitlines()[-1])
    assert failed["mode"] == "eager" and failed["rc"] != 0 and "steps" not in failed
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 modes failed (eager;")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.jsonl"]
