"""Collect scripts/gpu/bench.sh's runs into results/gpu/perf.json (issue 14's figures).

  python scripts/gpu/perf.py RUNS [RUNS...] OUT [--note "how the leases ran"] [--vllm-settings v2]

results/gpu/perf.json is one H100 lease that ran issue 14's figures side by side (lease 23, runner-v2's vLLM
settings); results/gpu/perf-h100.json and perf-h200.json read the leases of their kind of GPU that the README
names, with vLLM's default settings in those keys.

Several RUNS folders (one per lease) are read as one: each stage from the first folder that finished
it, so the folder of the lease whose figures should stand goes first.

Sampling and evaluation times are the stages' own (decoding and grading), with the backend's start
(model load; for vLLM the engine's compile and warm-up) reported apart from its manifest.
``vllm_engine_seed``, ``transformers_eager``, ``transformers_continuous``, ``vllm_cudagraphs_1024``,
``vllm_max_num_seqs_2048_cudagraphs_2048`` (and that ``_engine_seed``, ``_speculative_ngram_4``,
``_model_runner_v2`` and ``_model_runner_v2_full_decode_only``; sampling) and ``eval_variants`` are the
same stages with a setting that may be faster (``--engine-seed``, ``--compile-decode never``,
``--continuous-batching``, ``--max-num-seqs``, ``--max-cudagraph-size``, ``--speculative-ngram``,
``--model-runner``, ``--cudagraph-mode``): a default changes only after they win.
``transformers_gsm8k_sdpa`` and ``transformers_gsm8k_sdpa_eager`` are the transformers evaluation from a
cold start and without compiling, with transformers' own attention (``--attention sdpa``): the control of
``upft.attention``'s grouped decoding steps, not a candidate default.
``eval_repeats`` are evaluations run once more (bench.sh's repeat group), by the stage they repeat.
``upft_parts_model_runner_v2`` is bench.sh's upft-parts group: runner-v2's UPFT pass with no full draw
(``prefixes_only``, p=0) and its prompts' prefill alone (``prefill_only``, one token each), each over the
full pass of its own lease: how much of UPFT's sampling time its prefixes cost and its full draws add.
``transformers_decode_steps`` is scripts/gpu/decode_steps.py's step times, where it ran.
Each stage's figures carry its manifest's ``finished`` time, so stages from different leases show.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from upft.errors import UserError, cli
from upft.openrlhf_launcher import compare_losses
from upft.runio import read_json, write_json


def _sample(runs: Path, name: str) -> dict:
    m = read_json(runs / name / "manifest.json")
    return {"s": round(m["wall_s"], 1), "start_s": round(m.get("backend_start_s", 0.0), 1),
            "tokens": m["sampling_tokens"], "tokens_per_s": round(m["sampling_tokens"] / m["wall_s"]),
            "finished": m.get("finished")}


def _ratio(upft: Path, full: Path) -> float:
    """UPFT's sampling time over full sampling's, from the manifests' own seconds (not the rounded ones)."""
    return round(read_json(upft / "manifest.json")["wall_s"] / read_json(full / "manifest.json")["wall_s"], 3)


def _eval(runs: Path, name: str) -> dict:
    s = read_json(runs / name / "gsm8k.summary.json")
    m = read_json(runs / name / "manifest.json")
    start = m.get("backend_start_s")
    return {"s": round(s["wall_s"], 1), "start_s": round(start, 1) if start is not None else None,
            "tokens_per_s": round(s["tokens_per_s"]), "accuracy": round(s["accuracy"], 2),
            # the wall time's split (summaries from 2026-11-28 on): waiting on the backend, grading,
            # the grader pool's start and stop (lease 12 on; from lease 13 on only the wait for a start
            # that runs beside decoding)
            **{k: round(s[k], 2) if k in s else None for k in ("generate_s", "grade_s", "grader_pool_s")},
            "finished": m.get("finished")}


def _first(folders: list[Path], *stages: str) -> Path | None:
    """The first of ``folders`` in which every one of ``stages`` finished (wrote its manifest)."""
    return next((f for f in folders if all((f / name / "manifest.json").is_file() for name in stages)), None)


# the runs whose figures fill issue 14's vLLM keys (vllm_gsm8k_s, vllm_engine_start_s, gsm8k_accuracy), by
# settings: vLLM's own (the vllm group's evaluations from an empty and a filled compile cache) or runner-v2's
# (--model-runner v2 --max-num-seqs 2048 --max-cudagraph-size 2048: its UPFT pass starts the first engine,
# compiling; its evaluation starts with the cache filled; runner-v2 has no evaluation from an empty cache, so
# gsm8k_accuracy's vllm_cold is null with these)
VLLM_RUNS = {"default": ("eval-vllm-cold", "eval-vllm-warm"),
             "v2": ("upft-vllm-seqs2048-graphs2048-v2", "eval-vllm-seqs2048-graphs2048-v2")}


def collect(folders: list[Path], note: str | None = None, vllm: str = "default") -> dict:
    """perf.json from the stages bench.sh finished in ``folders``, each stage from the first folder
    that finished it. A lease can end mid-bench (bench.sh resumes in the next one), so a stage not
    finished is listed under ``missing`` and its figures are null, never guessed; folders holding no
    finished stage at all are an error. ``note`` says what the manifests cannot: how the leases ran
    (the host, what else ran on it at the same time). ``vllm`` picks the settings whose runs fill the
    issue's vLLM keys (``VLLM_RUNS``; the file names them under ``vllm_runs``)."""
    backends = {"vllm": "vllm-draw", "vllm_engine_seed": "vllm-engine", "transformers": "transformers",
                "transformers_eager": "transformers-eager", "transformers_continuous": "transformers-cb",
                "vllm_cudagraphs_1024": "vllm-graphs1024",
                "vllm_max_num_seqs_2048_cudagraphs_2048": "vllm-seqs2048-graphs2048",
                "vllm_max_num_seqs_2048_cudagraphs_2048_engine_seed": "vllm-seqs2048-graphs2048-engine",
                "vllm_max_num_seqs_2048_cudagraphs_2048_speculative_ngram_4": "vllm-seqs2048-graphs2048-ngram4",
                "vllm_max_num_seqs_2048_cudagraphs_2048_model_runner_v2": "vllm-seqs2048-graphs2048-v2",
                "vllm_max_num_seqs_2048_cudagraphs_2048_model_runner_v2_full_decode_only":
                    "vllm-seqs2048-graphs2048-v2-decode-graphs"}
    tf_run = "eval-transformers-cold"
    evals = ("eval-vllm-cold", "eval-vllm-warm", tf_run)
    variants = {"transformers_gsm8k_eager": "eval-transformers-eager",
                "transformers_gsm8k_sdpa": "eval-transformers-sdpa-cold",
                "transformers_gsm8k_sdpa_eager": "eval-transformers-sdpa-eager",
                "vllm_gsm8k_max_num_seqs_2048": "eval-vllm-seqs2048",
                "vllm_gsm8k_max_num_seqs_512": "eval-vllm-seqs512",
                "vllm_gsm8k_cudagraphs_1024": "eval-vllm-graphs1024",
                "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048": "eval-vllm-seqs2048-graphs2048",
                "transformers_gsm8k_continuous": "eval-transformers-cb",
                "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_speculative_ngram_4":
                    "eval-vllm-seqs2048-graphs2048-ngram4",
                "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_model_runner_v2": "eval-vllm-seqs2048-graphs2048-v2",
                "vllm_gsm8k_max_num_seqs_2048_cudagraphs_2048_model_runner_v2_full_decode_only":
                    "eval-vllm-seqs2048-graphs2048-v2-decode-graphs"}
    fast = {"fast": "openrlhf-fast", "fast_micro_batch_16": "openrlhf-fast16",
            "fast_micro_batch_16_liger": "openrlhf-liger16", "fast_micro_batch_16_liger_zero_stage_0":
            "openrlhf-liger16-zero0", "fast_micro_batch_32_liger": "openrlhf-liger32",
            "fast_micro_batch_16_liger_zero_stage_0_causal": "openrlhf-causal16",
            "fast_micro_batch_16_liger_zero_stage_0_causal_trained_logits": "openrlhf-trained16",
            "fast_micro_batch_32_liger_zero_stage_0_causal_trained_logits": "openrlhf-trained32",
            "fast_micro_batch_16_liger_zero_stage_0_causal_trained_logits_expandable_segments":
                "openrlhf-trained16-expandable"}
    # bench.sh's trained-logits group: each --trained-logits run beside the same run without it
    trained = {"zero_stage_3": ("openrlhf-zero3-trained", "openrlhf-zero3"),
               "upft_fast_micro_batch_16_liger_zero_stage_0_causal": ("openrlhf-upft-trained16",
                                                                      "openrlhf-upft-causal16"),
               "upft_zero_stage_3": ("openrlhf-upft-zero3-trained", "openrlhf-upft-zero3")}
    trains = ("openrlhf-1", "openrlhf-2", *fast.values(), *(n for pair in trained.values() for n in pair),
              "openrlhf-trained16-repeat")
    # bench.sh's upft-parts group: runner-v2's UPFT pass without its full draws, and its prompts' prefill alone
    full_v2 = "full-vllm-seqs2048-graphs2048-v2"
    parts = {"prefill_only": "upft-vllm-seqs2048-graphs2048-v2-prefill",
             "prefixes_only": "upft-vllm-seqs2048-graphs2048-v2-prefixes"}
    stages = [f"{m}-{v}" for m in ("upft", "full") for v in backends.values()] + [*evals, *variants.values(),
                                                                                   *parts.values(), *trains]
    at = {name: f for name in stages if (f := _first(folders, name))}  # each finished stage -> its folder
    done = set(at)
    if not done:
        raise UserError(f"{', '.join(map(str, folders))}: no finished stage of scripts/gpu/bench.sh")
    upft = {k: _sample(at[f"upft-{v}"], f"upft-{v}") for k, v in backends.items() if f"upft-{v}" in done}
    full = {k: _sample(at[f"full-{v}"], f"full-{v}") for k, v in backends.items() if f"full-{v}" in done}
    tf = _eval(at[tf_run], tf_run) if tf_run in done else {}
    cold_run, warm_run = VLLM_RUNS[vllm]
    cold = ((_eval if cold_run.startswith("eval-") else _sample)(at[cold_run], cold_run)) if cold_run in done else {}
    warm = _eval(at[warm_run], warm_run) if warm_run in done else {}
    tr = [read_json(at[name] / name / "manifest.json") for name in ("openrlhf-1", "openrlhf-2") if name in done]
    first = next((at[name] / name / "summary.json" for name in [*evals, *variants.values()]
                  if name in done and (at[name] / name / "summary.json").is_file()), None)
    env = read_json(first).get("environment", {}) if first else {}
    steps = next((f / "decode_steps.json" for f in folders if (f / "decode_steps.json").is_file()), None)
    return {
        "device": env.get("hardware", {}).get("gpu"), **({"note": note} if note else {}), "environment": env,
        "commands": ["MODEL=<qwen2.5-coder-1.5b-instruct.gguf> DATA=<mirror> RUNS=<dir> bash scripts/gpu/bench.sh"],
        "vllm_runs": {"settings": vllm, "cold": cold_run, "warm": warm_run},
        "missing": [name for name in stages if name not in done],
        "upft_sampling_s": {k: v["s"] for k, v in upft.items()},
        "full_sampling_s": {k: v["s"] for k, v in full.items()},
        "upft_over_full": {k: _ratio(at[f"upft-{v}"] / f"upft-{v}", at[f"full-{v}"] / f"full-{v}")
                           for k, v in backends.items() if k in upft and k in full},
        "sampling_detail": {"upft": upft, "full": full},
        # each part over the full pass of its own lease (runner-v2's, the same settings)
        "upft_parts_model_runner_v2": {k: {**_sample(f, name), "over_full": _ratio(f / name, f / full_v2)}
                                       for k, name in parts.items() if (f := _first(folders, name, full_v2))},
        # the trained-logits group's UPFT and full draws: the vllm group's commands in a compile cache of
        # their own, timed the same way; every folder's pair, not only the first (how much the ratio varies)
        "upft_over_full_trainer_sets": {
            f.name: {"upft_s": u["s"], "full_s": g["s"],
                     "upft_over_full": _ratio(f / "upft-vllm-sft", f / "full-vllm-sft"),
                     "finished": [u["finished"], g["finished"]]}
            for f in folders if _first([f], "upft-vllm-sft", "full-vllm-sft")
            for u, g in [(_sample(f, "upft-vllm-sft"), _sample(f, "full-vllm-sft"))]},
        "vllm_gsm8k_s": warm.get("s"), "vllm_gsm8k_tokens_per_s": warm.get("tokens_per_s"),
        "vllm_engine_start_s": {"cold": cold.get("start_s"), "warm": warm.get("start_s")},
        "transformers_gsm8k_cold_s": round(tf["s"] + (tf["start_s"] or 0), 1) if tf else None,
        "gsm8k_accuracy": {"vllm_cold": cold.get("accuracy"), "vllm_warm": warm.get("accuracy"),
                           "transformers": tf.get("accuracy")},
        "eval_variants": {k: _eval(at[v], v) for k, v in variants.items() if v in done},
        # bench.sh's repeat group: a warm eval run again (idle host), keyed by the stage it repeats
        "eval_repeats": {name: _eval(f, f"{name}-repeat") for name in [*evals, *variants.values()]
                         if (f := _first(folders, f"{name}-repeat"))},
        "openrlhf": {"tokens_per_s_per_gpu": tr[0]["timing"]["tokens_per_s_per_gpu"] if tr else None,
                     "phases_s": tr[0]["timing"] if tr else None,
                     "second_run_phases_s": tr[1]["timing"] if len(tr) > 1 else None,
                     "wall_s": [round(t["wall_s"], 1) for t in tr],
                     **{key: _fast(folders, name) for key, name in fast.items()},
                     "trained_logits": {key: _fast(folders, name, [ref]) for key, (name, ref) in trained.items()},
                     # every finished run's tokens/s in every folder (by folder name), a reference or not:
                     # a figure's repeats, and runs whose partner did not finish
                     "runs": {name: {f.name: read_json(f / name / "manifest.json")["timing"]["tokens_per_s_per_gpu"]
                                     for f in folders if _first([f], name)} for name in trains if name in done}},
        "transformers_decode_steps": read_json(steps)["results"] if steps else None,
    }


def _fast(folders: list[Path], name: str, refs: list[str] | None = None) -> dict | None:
    """The first run again with --group-by-length --no-gradient-checkpointing (and for
    ``openrlhf-fast16`` --micro-batch 16; ``openrlhf-liger16`` that with Liger's fused kernels,
    ``openrlhf-liger16-zero0`` also with ZeRO stage 0; ``openrlhf-liger32`` Liger's in micro-batches
    of 32, which bench.sh no longer runs (lease 11 ran it, lease 13 ran out of memory);
    ``openrlhf-causal16`` ZeRO stage 0 with --causal-attention; ``openrlhf-trained16`` and
    ``openrlhf-trained32`` that with --trained-logits in micro-batches of 16 and 32;
    ``openrlhf-trained16-expandable`` trained16 with PyTorch's expandable memory segments): the same steps
    (same seed, so the same rows per step) computed with less padding, no recomputation and fewer
    micro-batches. Its loss must follow a run of the same lease step by step (each lease draws its
    own training set): the first run, or where that lease ran none (lease 12)
    ``openrlhf-fast16``, which followed it within 0.0003 in leases 10 and 11; ``loss_reference``
    says which (``refs`` gives others: the trained-logits group's runs follow the same run without
    the flag). The figures say what the settings buy, beside the reference's. Both come from the first
    folder that holds the run and a reference; None where none does."""
    refs = refs or ["openrlhf-1"] + (["openrlhf-fast16"] if name != "openrlhf-fast16" else [])
    pair = next(((f, ref) for f in folders for ref in refs if _first([f], name, ref)), None)
    if pair is None:
        return None
    runs, ref = pair
    check = compare_losses(runs / ref / "train_log.jsonl", runs / name / "train_log.jsonl")
    timing = read_json(runs / name / "manifest.json")["timing"]
    return {"tokens_per_s_per_gpu": timing["tokens_per_s_per_gpu"], "phases_s": timing,
            "loss_reference": ref, "steps": check["steps"], "max_abs_loss_diff": check["max_abs_diff"],
            "reference_tokens_per_s_per_gpu": read_json(runs / ref / "manifest.json")["timing"]["tokens_per_s_per_gpu"]}


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="bench.sh's run folders, the one that wins first")
    ap.add_argument("out", type=Path)
    ap.add_argument("--note", help="how the leases ran (host, concurrent jobs), kept in the file")
    ap.add_argument("--vllm-settings", choices=sorted(VLLM_RUNS), default="default",
                    help="whose runs fill the vLLM evaluation and engine start keys: vLLM's defaults or runner-v2's")
    a = ap.parse_args(argv)
    write_json(a.out, collect(a.runs, a.note, a.vllm_settings))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    cli(main)
