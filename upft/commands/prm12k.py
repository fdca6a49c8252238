"""Build PRM-12K, the paper's training questions: every MATH problem (train and test, 12.5K)
except the 500 of MATH-500, each with its answer (the last \\boxed{} of its solution).

  python data_prep/build_prm12k.py --out data/prm12k.jsonl     # MATH and MATH-500 from the hub
  python data_prep/build_prm12k.py --math math.jsonl --math500 ../shared/data/math500/test.jsonl --out data/prm12k.jsonl

configs/paper/_data_prm12k.yaml reads the result (fields problem, answer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upft.data import read_rows
from upft.errors import UserError, cli
from upft.grading import last_boxed
from upft.runio import write_jsonl


def _key(problem: str) -> str:
    return " ".join(problem.split())  # the two sources differ in whitespace only


def _field(row: dict, name: str, source: str) -> str:
    if name not in row:
        raise UserError(f"{source}: rows need a '{name}' field (fields: {', '.join(row)})")
    return row[name]


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--math", default="DigitalLearningGmbH/MATH-lighteval",
                    help="MATH with problem and solution fields: a hub dataset or a local file")
    ap.add_argument("--math-splits", default="train,test", help="hub splits to take (a local file is one split)")
    ap.add_argument("--math500", default="HuggingFaceH4/MATH-500", help="MATH-500 (hub dataset or local file)")
    ap.add_argument("--out", required=True, help="the .jsonl to write")
    a = ap.parse_args(argv)
    held = {_key(_field(r, "problem", a.math500)) for r in read_rows(a.math500, "test")}
    if len(held) != 500:
        raise UserError(f"{a.math500}: expected the 500 problems of MATH-500, found {len(held)}")
    splits = ["file"] if Path(a.math).is_file() else [s for s in a.math_splits.split(",") if s]
    rows, seen, removed, no_answer = [], set(), set(), 0
    for split in splits:
        for i, r in enumerate(read_rows(a.math, split)):
            key = _key(_field(r, "problem", a.math))
            if key in held:
                removed.add(key)
                continue
            answer = last_boxed(_field(r, "solution", a.math))
            if answer is None:
                no_answer += 1
                continue
            if key not in seen:
                seen.add(key)
                rows.append({"problem": r["problem"], "answer": answer, "solution": r["solution"],
                             "level": r.get("level"), "type": r.get("type"), "unique_id": f"{split}/{i}"})
    if not rows:
        raise UserError(f"{a.math}: no problem left once MATH-500 is taken out")
    if not removed:
        raise UserError(f"none of MATH-500 was found in {a.math}: these are not the MATH problems it was drawn from")
    write_jsonl(a.out, rows)
    print(f"[prm12k] {len(rows)} problems -> {a.out} ({len(removed)} of MATH-500 left out, "
          f"{no_answer} without a boxed answer skipped)", file=sys.stderr)


def entry() -> None:
    """The console entry point (``upft-prm12k``)."""
    cli(main)
