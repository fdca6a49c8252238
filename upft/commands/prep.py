"""Build a training set from sampled responses.

  upft: prefix samples = question + UPFT instruction -> first L sampled tokens + end-of-turn;
        full samples = plain question -> whole response + end-of-turn.
  sft:  every question -> its whole self-generated response (first draw) + end-of-turn.
  rft:  n full draws per question graded against the reference answer; one correct draw per
        question (seeded) in full; questions with none are dropped and counted.
  label_filter: UPFT's prefixes + full fraction p, cut from one correct draw per question.

  python data_prep/build.py --samples runs/demo/samples --method upft --L 16 --out runs/demo/prep-upft
"""

from __future__ import annotations

import argparse

from upft.errors import cli
from upft.builders import METHODS
from upft.stages import run_prep


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", required=True, help="samples.jsonl or the folder holding it")
    ap.add_argument("--method", choices=METHODS, default="upft")
    ap.add_argument("--L", type=int, help="prefix length in tokens (default: the L the prefixes were sampled with)")
    ap.add_argument("--p", type=float, default=0.1, help="label_filter: fraction kept full")
    ap.add_argument("--seed", type=int, default=0, help="rft/label_filter: which correct draw is kept")
    ap.add_argument("--no-suffix", action="store_true", help="train prefixes without the UPFT instruction")
    ap.add_argument("--keep-truncated", action="store_true",
                    help="keep full draws cut at the token limit (left out by default: trained with an "
                         "end-of-turn they teach the model to stop mid-reasoning)")
    ap.add_argument("--allow-unparsed-gold", action="store_true",
                    help="rft/label_filter: go on when some reference answers cannot be parsed (their questions drop)")
    ap.add_argument("--model", help="tokenizer source (default: the model the samples came from)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    run_prep(a.samples, a.out, method=a.method, L=a.L, p=a.p, suffix=not a.no_suffix, seed=a.seed,
             model=a.model, keep_truncated=a.keep_truncated,
             allow_unparsed_gold=a.allow_unparsed_gold, force=a.force)


def entry() -> None:
    """The console entry point (``upft-prep``)."""
    cli(main)
