"""Report finished runs as the paper's Tables 1-2 (mean ± std over seeds) plus figures.

  python eval/report.py runs/qwen-gsm8k --out reports/qwen-gsm8k
  python eval/report.py runs/base runs/upft-L32-s0 runs/upft-L32-s1 --out reports/x --benchmarks gsm8k,math500

Each RUN is a folder holding run.json, or a folder of such folders. Writes OUT/report.md,
OUT/report.json and PNG figures (in OUT unless --figs names another folder, e.g. the committed
figs/ when regenerating README's figure), and prints report.md.
"""

from __future__ import annotations

import argparse

from upft.report import write_report
from upft.errors import cli


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (each holds run.json) or a folder of them")
    ap.add_argument("--out", required=True, help="folder for report.md and report.json")
    ap.add_argument("--figs", help="folder for the figures (default: --out)")
    ap.add_argument("--benchmarks", help="comma-separated columns (default: those of the first run's eval)")
    a = ap.parse_args(argv)
    files = write_report(a.runs, a.out, a.figs or a.out, a.benchmarks.split(",") if a.benchmarks else None)
    print(files[0].read_text(encoding="utf-8"), end="")


def entry() -> None:
    """The console entry point (``upft-report``)."""
    cli(main)
