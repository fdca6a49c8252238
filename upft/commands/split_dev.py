"""Hold out a fixed, seeded dev split of training questions, to tune L, p, LR and epochs on.

Writes OUT/train.jsonl (the rest, for sampling) and OUT/<bench>/<file> (the dev questions, laid
out like that benchmark in a mirror folder), so the dev split is evaluated by the usual command:

  python data_prep/split_dev.py --questions ../shared/data/gsm8k/train.jsonl --n-dev 500 --out data/gsm8k-dev
  python eval/run_eval.py --model M --benchmarks gsm8k --data-dir data/gsm8k-dev --out R/eval-dev
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from upft.data import BENCHMARKS, read_rows
from upft.errors import UserError, cli
from upft.runio import write_json, write_jsonl


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", required=True, help="the training questions (a local file or hub dataset)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--config", help="hub dataset config, e.g. main for openai/gsm8k")
    ap.add_argument("--n-dev", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--as", dest="bench", default="gsm8k", help="benchmark whose layout and fields the dev file takes")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.bench not in BENCHMARKS or BENCHMARKS[a.bench].kind != "math":
        raise UserError(f"--as must be a math benchmark ({', '.join(b for b, x in BENCHMARKS.items() if x.kind == 'math')})")
    rows = list(read_rows(a.questions, a.split, a.config))
    if not 0 < a.n_dev < len(rows):
        raise UserError(f"--n-dev must be between 1 and {len(rows) - 1} (the file has {len(rows)} questions)")
    dev = set(random.Random(a.seed).sample(range(len(rows)), a.n_dev))  # fixed by the seed and the file
    out = Path(a.out)
    write_jsonl(out / BENCHMARKS[a.bench].local_file, [r for i, r in enumerate(rows) if i in dev])
    write_jsonl(out / "train.jsonl", [r for i, r in enumerate(rows) if i not in dev])
    write_json(out / "split.json", {"questions": a.questions, "n_dev": a.n_dev, "seed": a.seed,
                                    "n_train": len(rows) - a.n_dev, "dev_rows": sorted(dev)})
    print(f"{len(rows) - a.n_dev} training questions in {out / 'train.jsonl'}, "
          f"{a.n_dev} dev questions in {out / BENCHMARKS[a.bench].local_file}")


def entry() -> None:
    """The console entry point (``upft-split-dev``)."""
    cli(main)
