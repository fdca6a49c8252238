"""Sample one (or n) responses per training question from the model being tuned.

UPFT mode decodes a full response for a seeded fraction p of the questions and only L tokens
for the rest; full mode (baselines) decodes every response in full.

  python sample/generate.py --model smollm2-135m-instruct --questions data/demo/gsm8k/train.jsonl \
      --answer-field answer --L 16 --p 0.1 --out runs/demo/samples
"""

from __future__ import annotations

import argparse

from upft.backends import add_decoding_args, backend_options, check_decoding
from upft.errors import cli
from upft.data import QuestionSource
from upft.schema import add_flags, keys
from upft.stages import run_sample


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="embedded name, local HF folder, .gguf file or hub id")
    ap.add_argument("--gguf-sha256", help="expected sha256 of a local .gguf model")
    ap.add_argument("--questions", required=True, help=".jsonl/.json/.parquet/.csv file or hub dataset id")
    add_flags(ap, QuestionSource, skip=("source",))
    ap.add_argument("--mode", choices=["upft", "full"], default="upft")
    ap.add_argument("--L", type=int, default=32, help="prefix length in tokens")
    ap.add_argument("--p", type=float, default=0.1, help="fraction of questions sampled in full")
    ap.add_argument("--n", type=int, default=1, help="draws per question")
    add_decoding_args(ap, temperature=0.6)  # the paper samples at T=0.6
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true", help="replace a different run in --out")
    a = ap.parse_args(argv)
    check_decoding(a)
    questions = QuestionSource(a.questions, **{k: getattr(a, k) for k in keys(QuestionSource) - {"source"}})
    run_sample(a.model, questions, a.out, mode=a.mode, L=a.L, p=a.p, n=a.n, max_new_tokens=a.max_new_tokens,
               temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed, prompt_style=a.prompt_style,
               backend=a.backend, gguf_sha256=a.gguf_sha256, engine_seed=a.engine_seed, force=a.force,
               **backend_options(a))


def entry() -> None:
    """The console entry point (``upft-sample``)."""
    cli(main)
