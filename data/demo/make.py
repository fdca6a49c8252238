"""Writes the bundled demo questions: seeded grade-school word problems with exact answers.

Laid out like the GSM8K mirror (``gsm8k/train.jsonl``, ``gsm8k/test.jsonl``; fields
``question`` and ``answer`` ending in ``#### N``), so every loader reads it unchanged:

  python data/demo/make.py        # rewrites data/demo/gsm8k/*.jsonl (identical output for the seed)
"""

import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jon"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards"]


def problem(rng: random.Random) -> tuple[str, str, int]:
    """One word problem: (question, worked solution, answer)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 30), rng.randint(2, 12), rng.randint(2, 9)
    kind = rng.randrange(5)
    if kind == 0:
        q = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        return q, f"{a} + {b} = {a + b}", a + b
    if kind == 1:
        a += b
        q = f"{name} had {a} {item} and gave {b} to a friend. How many {item} are left?"
        return q, f"{a} - {b} = {a - b}", a - b
    if kind == 2:
        q = f"{name} buys {c} boxes with {b} {item} in each box. How many {item} is that in total?"
        return q, f"{c} * {b} = {c * b}", c * b
    if kind == 3:
        q = f"{name} shares {c * b} {item} equally among {c} friends. How many {item} does each friend get?"
        return q, f"{c * b} / {c} = {b}", b
    q = (f"{name} has {a} {item}, buys {c} packs of {b} {item}, then loses {min(a, 5)}. "
         f"How many {item} does {name} have?")
    total = a + c * b - min(a, 5)
    return q, f"{a} + {c} * {b} - {min(a, 5)} = {total}", total


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(2503)
    rows = []
    for _ in range(60):
        q, work, ans = problem(rng)
        rows.append({"question": q, "answer": f"{work}\n#### {ans}"})
    here = Path(__file__).parent / "gsm8k"
    write(here / "train.jsonl", rows[:40])
    write(here / "test.jsonl", rows[40:])


if __name__ == "__main__":
    main()
