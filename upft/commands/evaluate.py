"""Evaluate a model on math/science benchmarks, graded with math-verify.

  python eval/run_eval.py --model runs/demo/model-upft --benchmarks gsm8k,math500 --data-dir ../shared/data \
      --out runs/demo/eval-upft
"""

from __future__ import annotations

import argparse

from upft.backends import Decoding, add_decoding_args, backend_options, check_decoding
from upft.evaluate import EvalSettings, parse_limits
from upft.errors import cli
from upft.schema import add_flags, keys
from upft.stages import run_eval

DERIVED = ("style", "max_new_tokens_by")  # set by the stage (the model's prompt style) or by --max-new-tokens-for


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--benchmarks", default="gsm8k,math500", help="comma-separated")
    ap.add_argument("--data-dir", help="local mirror laid out like ../shared/data (default: the hub)")
    add_decoding_args(ap, temperature=0.0)  # greedy, as the paper evaluates
    add_flags(ap, EvalSettings, skip=(*keys(Decoding), *DERIVED))
    ap.add_argument("--max-new-tokens-for", action="append", default=[], metavar="BENCH=N",
                    help="per-benchmark limit, e.g. gsm8k=512 (repeatable; others use --max-new-tokens)")
    ap.add_argument("--judge", help="judge model for gpqa_open (the paper's protocol); without it, rule only. "
                    "With --backend vllm both engines share the GPUs: pass --gpu-memory-utilization 0.45")
    ap.add_argument("--label", help="name of this model in the results table")
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    check_decoding(a)
    s = EvalSettings(**{k: getattr(a, k) for k in keys(EvalSettings) - set(DERIVED)},
                     max_new_tokens_by=parse_limits(a.max_new_tokens_for))
    summary = run_eval(a.model, a.out, [b for b in a.benchmarks.split(",") if b], s, data_dir=a.data_dir,
                       prompt_style=a.prompt_style, backend=a.backend,
                       label=a.label, judge=a.judge, force=a.force, **backend_options(a))
    for name, r in summary["benchmarks"].items():
        print(f"{name}: {r['accuracy']:.1f}% (95% CI {r['ci95'][0]:.1f}-{r['ci95'][1]:.1f}), "
              f"{r['n_questions']} questions")


def entry() -> None:
    """The console entry point (``upft-evaluate``)."""
    cli(main)
