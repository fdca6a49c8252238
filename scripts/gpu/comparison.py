"""Issue 12's comparison campaign on one GPU node, resumable across leases (see upft.campaign).

  python scripts/gpu/comparison.py run --model M.gguf --data ../shared/data --runs /root/campaign \
      [--seeds 0,1,2] [--gpus 0,1,2,3] [--dry-run]        # the jobs, each one of our commands
  python scripts/gpu/comparison.py status --runs /root/campaign
  python scripts/gpu/comparison.py pack --runs /root/campaign --out DIR   # what a lease brings back
  python scripts/gpu/comparison.py summary [--results results/gpu/comparison]   # summary.json,
      tables.md (Tables 1-2), figs/comparison_accuracy_vs_tuning_tokens.png, figs/comparison_zero3_loss.png

Sample pools (hundreds of MB, not committed) can travel to the next lease instead of being drawn
again: at the end of a lease `tar -czf pools.tgz -C RUNS/runs samples-<fingerprint>...`, at the
start of the next `tar -xzf pools.tgz -C RUNS/runs`; a sampling job whose pool is there is done.
Finished runs are read from --results (the committed folder, default results/gpu/comparison) as
well as --runs, so a new lease redoes nothing that is committed. OpenRLHF without flash-attn needs
tests/gpu/stubs on PYTHONPATH and, on H100 with torch 2.11, TORCH_CUDA_ARCH_LIST=9.0.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from upft.campaign import Campaign, Scheduler
from upft.comparison import figure, pack, summarise, tables, zero3_figure
from upft.errors import UserError, cli
from upft.runio import read_json, write_json, write_text

RESULTS = "results/gpu/comparison"


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("run", "status", "pack", "summary"))
    ap.add_argument("--model")
    ap.add_argument("--data", help="the benchmark mirror (gsm8k/train.jsonl, gsm8k/test.jsonl, math500/...)")
    ap.add_argument("--runs", type=Path)
    ap.add_argument("--results", type=Path, default=Path(RESULTS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--gpus", default="0,1,2,3")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", type=Path, help="pack: the folder to copy into")
    ap.add_argument("--device", default="", help="summary: the GPU the runs ran on")
    a = ap.parse_args(argv)
    if a.what == "summary":
        meta = read_json(a.results / "meta.json") if (a.results / "meta.json").is_file() else {}
        s = summarise(a.results, meta.get("model", a.model or ""), a.device or meta.get("device", ""),
                      meta.get("commands", []))
        write_json(a.results / "summary.json", s)
        write_text(a.results / "tables.md", tables(s))
        figs = [figure(s, Path("figs") / "comparison_accuracy_vs_tuning_tokens.png"),
                zero3_figure(s, Path("figs") / "comparison_zero3_loss.png")]
        print(f"wrote {a.results / 'summary.json'}, {a.results / 'tables.md'}, "
              + " and ".join(str(f) for f in figs if f))
        return
    if a.runs is None:
        raise UserError(f"{a.what} needs --runs")
    if a.what == "status":
        st = read_json(a.runs / "campaign.json")
        for name, state in st["state"].items():
            print(f"{state:9} {name}" + (f"  ({st['running'][name]['since_s']} s)" if name in st["running"] else ""))
        return
    if a.what == "pack":
        if a.out is None:
            raise UserError("pack needs --out")
        print(f"{pack(a.runs, a.out)} files into {a.out}")
        return
    if not a.model or not a.data:
        raise UserError("run needs --model and --data")
    try:
        seeds = tuple(int(s) for s in a.seeds.split(","))
    except ValueError:
        raise UserError(f"--seeds wants numbers like 0,1,2, got '{a.seeds}'") from None
    gpus = [g for g in a.gpus.split(",") if g.strip()]
    if not gpus:
        raise UserError("--gpus is empty")
    c = Campaign(model=a.model, data=a.data, runs=a.runs, results=a.results, seeds=seeds)
    if a.dry_run:
        for job in c.jobs():
            cmd = job.cmd if isinstance(job.cmd, list) else ["<after the learning-rate choice>"]
            print(f"{job.name}: {shlex.join(cmd)}")
        return
    failed = Scheduler(c, gpus).run()
    print(f"campaign ended, {failed} failed job(s); python scripts/gpu/comparison.py status --runs {a.runs}")


if __name__ == "__main__":
    cli(main)
