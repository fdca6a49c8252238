"""Combine evaluation runs into one paper-style markdown table (accuracy %, one row per run).

  python eval/make_table.py runs/demo/eval-base runs/demo/eval-upft [--out table.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from upft.evaluate import markdown_table
from upft.errors import UserError, cli
from upft.runio import read_json, write_text


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="eval output folders (each holds summary.json)")
    ap.add_argument("--benchmarks", help="comma-separated columns (default: those of the first run)")
    ap.add_argument("--out", help="also write the table here")
    a = ap.parse_args(argv)
    rows = []
    for run in a.runs:
        path = Path(run) / "summary.json"
        if not path.is_file():
            raise UserError(f"{run} has no summary.json (not a finished eval run)")
        summary = read_json(path)
        if "benchmarks" not in summary:
            raise UserError(f"{path} is not an eval summary")
        rows.append((summary["model"], summary["benchmarks"]))
    benchmarks = a.benchmarks.split(",") if a.benchmarks else list(rows[0][1])
    for (label, by_bench), run in zip(rows, a.runs):
        missing = [b for b in benchmarks if b not in by_bench]
        if missing:
            raise UserError(f"{run} ({label}) has no results for {', '.join(missing)}")
    table = markdown_table(rows, benchmarks)
    print(table, end="")
    if a.out:
        write_text(a.out, table)


def entry() -> None:
    """The console entry point (``upft-table``)."""
    cli(main)
