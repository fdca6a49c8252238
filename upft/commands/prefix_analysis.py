"""Look at the first few tokens: do a model's k solutions of a question share their first L tokens,
and do traces on the shared prefix end right more often? Suggests the L to train UPFT with.

  python eval/prefix_analysis.py --model M --questions Q.jsonl --answer-field answer --k 16 \
      --L 4,8,16,32,64,128 --out DIR [--samples POOL] [--backend vllm]

Samples k full solutions per question into DIR/samples (seeded, resumable; or reuses a full-length
pool given with --samples, e.g. an RFT pool), grades them with math-verify, and writes
DIR/analysis.json and DIR/figs/{coverage,accuracy,distinct}_vs_L.png. See upft.prefixes for what
each measure means and how L is suggested.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.figure import Figure

from upft.backends import add_decoding_args, backend_options, check_decoding
from upft.data import QuestionSource
from upft.errors import UserError, cli
from upft.prefixes import measures, suggest_L
from upft.runio import read_json, read_jsonl, write_json, write_png
from upft.schema import add_flags, keys


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--L wants whole numbers like 4,8,16, got '{text}'") from None
    if not lengths or lengths[0] < 1:
        raise UserError(f"--L wants positive lengths, got '{text}'")
    return lengths


def load_pool(path: str, k: int) -> list[dict]:
    """The first ``k`` full draws of each question of a sample pool (a samples.jsonl or its folder)."""
    p = Path(path)
    p = p / "samples.jsonl" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"sample pool not found: {p}")
    man = p.parent / "manifest.json"
    if man.is_file() and read_json(man).get("settings", {}).get("mode") != "full":
        raise UserError(f"{p}: a UPFT pool holds prefixes, not solutions; give a full-length pool")
    rows = [r for r in read_jsonl(p) if r.get("draw", "full") == "full" and r.get("sample_index", 0) < k]
    if not rows:
        raise UserError(f"{p}: no full draws")
    if any("response_ids" not in r or r.get("answer") is None for r in rows):
        raise UserError(f"{p}: rows need response_ids and a reference answer (sample with --answer-field)")
    return rows


def traces_of(rows: list[dict], correct: list[bool]) -> dict[str, list[tuple[tuple[int, ...], bool]]]:
    out: dict[str, list] = {}
    for r, ok in zip(rows, correct):
        out.setdefault(r["id"], []).append((tuple(r["response_ids"]), bool(ok)))
    return out


def _plot(rows: list[dict], keys_: list[tuple[str, str]], ylabel: str, path: Path) -> None:
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    xs = [r["L"] for r in rows]
    for key, label in keys_:
        ax.plot(xs, [r[key] if r[key] is not None else float("nan") for r in rows], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set(xlabel="prefix length L (tokens)", ylabel=ylabel)
    ax.legend(fontsize=8)
    write_png(path, fig)


def write_analysis(rows: list[dict], correct: list[bool], lengths: list[int], threshold: float, out: Path,
                   source: dict) -> dict:
    """analysis.json and the three figures, from graded full draws."""
    traces = traces_of(rows, correct)
    try:
        per_L = [measures(traces, L) for L in lengths]
    except ValueError as e:
        raise UserError(f"{e}: sample k >= 2 solutions per question") from None
    L, why = suggest_L(per_L, threshold)
    result = {**source, "n_questions": len(traces), "k": max(len(t) for t in traces.values()),
              "accuracy": 100 * sum(correct) / len(correct), "threshold": threshold,
              "suggested_L": L, "why": why, "by_L": per_L}
    write_json(out / "analysis.json", result)
    figs = out / "figs"
    _plot(per_L, [("coverage", "coverage"), ("questions_majority_half", "questions: majority prefix >= k/2"),
                  ("mixed_share", "questions: a prefix shared by right and wrong")], "share", figs / "coverage_vs_L.png")
    _plot(per_L, [("accuracy_majority_prefix", "traces on the majority prefix"),
                  ("accuracy_other_prefixes", "other traces")], "accuracy (%)", figs / "accuracy_vs_L.png")
    _plot(per_L, [("distinct_prefixes", "distinct prefixes per question"), ("entropy_bits", "entropy (bits)")],
          "per question", figs / "distinct_vs_L.png")
    return result


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="the model to sample (not needed with --samples)")
    ap.add_argument("--questions", help=".jsonl/.json/.parquet/.csv file or hub dataset id")
    add_flags(ap, QuestionSource, skip=("source",))
    ap.add_argument("--samples", help="reuse a full-length sample pool (samples.jsonl or its folder)")
    ap.add_argument("--k", type=int, default=16, help="solutions per question")
    ap.add_argument("--L", default="4,8,16,32,64,128", help="prefix lengths in tokens, comma-separated")
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="share of questions whose majority prefix must cover half their traces")
    add_decoding_args(ap, temperature=0.6)  # sampled as UPFT samples
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    check_decoding(a)
    lengths = parse_lengths(a.L)
    if a.k < 2:
        raise UserError(f"--k must be at least 2 (prefixes are compared between solutions), got {a.k}")
    if not 0 < a.threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1], got {a.threshold}")
    out = Path(a.out)
    if a.samples:
        rows = load_pool(a.samples, a.k)
        source = {"samples": a.samples}
    else:
        if not a.model or not a.questions:
            raise UserError("give --model and --questions (or --samples)")
        if not a.answer_field:
            raise UserError("--answer-field is needed: the traces are graded against it")
        from upft.stages import run_sample

        q = QuestionSource(a.questions, **{k: getattr(a, k) for k in keys(QuestionSource) - {"source"}})
        run_sample(a.model, q, str(out / "samples"), mode="full", n=a.k, max_new_tokens=a.max_new_tokens,
                   temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed,
                   prompt_style=a.prompt_style, backend=a.backend, engine_seed=a.engine_seed, **backend_options(a))
        rows = load_pool(str(out / "samples"), a.k)
        source = {"model": a.model, "questions": a.questions}
    from upft.stages import grade_samples

    result = write_analysis(rows, grade_samples(rows), lengths, a.threshold, out, source)
    print(f"suggested L = {result['suggested_L']}: {result['why']}")
    print(f"wrote {out / 'analysis.json'} and {out / 'figs'}/")


def entry() -> None:
    """The console entry point (``upft-prefix-analysis``)."""
    cli(main)
