"""Benchmark evaluation: generate, grade with math-verify, and summarise with error bars.

Per benchmark it writes ``<bench>.jsonl`` (one row per draw: rendered prompt, response,
extracted prediction, gold, correctness) and ``<bench>.summary.json``; rows are appended as
batches finish, so a rerun skips draws already graded.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from upft.data import BENCHMARKS, Question, load_benchmark
from upft.draws import request_seed
from upft.generation import GenRequest
from upft.grading import Grader, unparsable_golds
from upft.judge import Judge, judge_rows
from upft.prompts import messages, render_many
from upft.errors import UserError
from upft.manifests import environment
from upft.runio import JsonlAppender, write_json, write_jsonl, write_text


@dataclass
class EvalSettings:
    """The evaluation stage's settings (recorded with its results). The decoding fields are
    ``upft.backends.Decoding``'s; the others are the eval command's own flags."""

    max_new_tokens: int = 1024
    max_new_tokens_by: dict[str, int] = field(default_factory=dict)  # per-benchmark overrides
    n: int = field(default=1, metadata={"help": "samples per question (1 at temperature 0: the paper's greedy)"})
    temperature: float = 0.0
    top_p: float | None = None  # None: the model's generation config (sampled eval only; greedy ignores it)
    top_k: int | None = None
    seed: int = 0
    engine_seed: bool = False  # vllm only: see upft.backends.Decoding (greedy decoding ignores it)
    limit: int | None = field(default=None, metadata={"help": "first N questions of each benchmark"})
    style: str = "boxed"
    grade_timeout_s: float = field(default=10.0, metadata={"help": "seconds before grading one answer gives up"})
    # GPQA option order; fixed apart from --seed so all models see the same order
    shuffle_seed: int = field(default=0, metadata={"help": "seed of the GPQA option order"})
    allow_unparsed_gold: bool = field(default=False, metadata={
        "help": "grade questions whose gold answer cannot be parsed (always wrong) instead of refusing"})

    def budget(self, benchmark: str) -> int:
        return self.max_new_tokens_by.get(benchmark, self.max_new_tokens)

    def check(self) -> None:
        """The ranges the decoding flags do not cover (those are checked by ``upft.backends.Decoding``)."""
        if self.n < 1 or (self.limit is not None and self.limit < 1):
            raise UserError(f"n and limit must be at least 1, got n={self.n}, limit={self.limit}")
        if self.grade_timeout_s <= 0:
            raise UserError(f"grade_timeout_s must be positive, got {self.grade_timeout_s}")


def check_limits(limits: dict) -> dict[str, int]:
    """Per-benchmark max-new-tokens, each a known benchmark and a positive integer."""
    for name, n in limits.items():
        if name not in BENCHMARKS or not str(n).isdigit() or int(n) <= 0:
            raise UserError(f"bad per-benchmark limit '{name}={n}' (want BENCH=N with BENCH one of "
                            f"{', '.join(BENCHMARKS)})")
    return {name: int(n) for name, n in limits.items()}


def parse_limits(items: list[str]) -> dict[str, int]:
    """``["gsm8k=512", "math500=1024"]`` (the --max-new-tokens-for flags) -> per-benchmark limits."""
    return check_limits(dict(item.partition("=")[::2] for item in items))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n draws with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def wilson(p: float, m: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion p over m questions. Unlike the Wald interval
    p ± z·se it never collapses to [0, 0] or [1, 1] and keeps its coverage on small sets (AIME: 30)."""
    if m == 0:
        return 0.0, 1.0
    denom = 1 + z * z / m
    centre = (p + z * z / (2 * m)) / denom
    half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(rows: list[dict], n: int) -> dict:
    """Accuracy (mean over draws) with a 95% Wilson interval over questions, pass@k, length, truncation."""
    by_q: dict[str, list[dict]] = {}
    for r in rows:
        by_q.setdefault(r["id"], []).append(r)
    per_q = [sum(r["correct"] for r in rs) / len(rs) for rs in by_q.values()]
    m = len(per_q)
    acc = sum(per_q) / m if m else 0.0
    out = {
        "n_questions": m,
        "n_draws": len(rows),
        "accuracy": 100 * acc,
        "ci95": [100 * x for x in wilson(acc, m)],
        "mean_length": sum(r["n_tokens"] for r in rows) / max(len(rows), 1),
        "truncated_frac": sum(r["finish_reason"] == "length" for r in rows) / max(len(rows), 1),
    }
    if n > 1:
        out["pass_at_k"] = {k: 100 * sum(pass_at_k(len(rs), sum(r["correct"] for r in rs), k)
                                         for rs in by_q.values()) / m
                            for k in (1, n) if k <= n}
    return out


def check_golds(name: str, questions: list[Question], allow: bool) -> int:
    """Refuse (unless allowed) a benchmark whose gold answers math-verify cannot read; returns their count."""
    if BENCHMARKS[name].kind != "math":  # letters, and free-form answers a judge reads
        return 0
    unparsed = unparsable_golds([q.answer for q in questions])
    if unparsed and not allow:
        q = questions[unparsed[0]]
        raise UserError(f"{name}: {len(unparsed)} of {len(questions)} gold answers cannot be parsed "
                        f"(first: question {q.id}, {q.answer!r}); every answer to them would count as wrong. "
                        "Fix the data, or pass --allow-unparsed-gold to grade them anyway")
    return len(unparsed)


@contextmanager
def _clock(split: dict[str, float], key: str) -> Iterator[None]:
    """Add the time the block takes to ``split[key]``."""
    t0 = time.time()
    try:
        yield
    finally:
        split[key] += time.time() - t0


def evaluate_benchmark(name: str, tokenizer, backend, out_dir: Path, s: EvalSettings,
                       data_dir: str | None = None, judge: Judge | None = None) -> dict:
    bench = BENCHMARKS[name]
    questions = load_benchmark(name, data_dir, s.limit, s.shuffle_seed)
    unparsed = check_golds(name, questions, s.allow_unparsed_gold)
    writer = JsonlAppender(out_dir / f"{name}.jsonl")
    rows = writer.done_rows()
    done = {(r["id"], r["sample_index"]) for r in rows}
    meta, requests = {}, []
    for q, (text, ids) in zip(questions, render_many(tokenizer, [messages(q.text, s.style) for q in questions])):
        for k in range(s.n):
            if (q.id, k) in done:
                continue
            key = f"{q.id}#{k}"
            meta[key] = {"id": q.id, "sample_index": k, "prompt": text, "gold": q.answer, **q.extra}
            requests.append(GenRequest(key, tuple(ids), s.budget(name), s.temperature, s.top_p, s.top_k,
                                       request_seed(s.seed, q.id, k)))
    print(f"[eval] {name}: {len(questions)} questions, {len(requests)} draws to run", file=sys.stderr)
    rule_kind = "math" if bench.kind == "open" else bench.kind
    t0, new_tokens, split = time.time(), 0, {"generate_s": 0.0, "grade_s": 0.0, "write_s": 0.0}
    with Grader() as grader:
        batches = iter(backend.generate(requests))
        while True:
            with _clock(split, "generate_s"):  # waiting on the backend (its decoding)
                batch = next(batches, None)
            if batch is None:
                break
            grader.ready()  # the first batch waits here for the pool's start (grader_pool_s), not in grade_s
            with _clock(split, "grade_s"):
                grades = grader.grade([(rule_kind, r.text, meta[r.key]["gold"]) for r in batch], s.grade_timeout_s)
            with _clock(split, "write_s"):
                new = [{**meta[r.key], "response": r.text, "finish_reason": r.finish_reason,
                        "n_tokens": len(r.token_ids) + (r.finish_reason == "stop"), **g}
                       for r, g in zip(batch, grades)]
                writer.append(new)
            new_tokens += sum(len(r.token_ids) for r in batch)
            rows.extend(new)
    split["grader_pool_s"] = grader.pool_s
    wall = writer.prior_s + time.time() - t0  # killed earlier runs of this benchmark included
    grader_note = {"math": "math-verify (gold parsed first)", "choice": "letter of the last answer statement"}
    graded = {"grader": grader_note.get(bench.kind)}
    if bench.kind == "open":
        graded = _judge_open(rows, questions, judge, writer)
    writer.finish()
    summary = {"benchmark": name, **summarise(rows, s.n), **graded, "n_unparsed_gold": unparsed,
               "max_new_tokens": s.budget(name),
               # wall time = waiting on the backend + grading + writing + waiting for the grader pool's
               # start (it starts beside decoding) and its stop (this run's parts; a resumed run's
               # wall also holds the killed runs' time)
               "style": s.style, "wall_s": wall, **split,
               # generated tokens per second of generation (wall time minus grading)
               "tokens_per_s": new_tokens / (wall - split["grade_s"]) if new_tokens else None}
    write_json(out_dir / f"{name}.summary.json", summary)
    return summary


def _judge_open(rows: list[dict], questions: list[Question], judge: Judge | None, writer: JsonlAppender) -> dict:
    """Grade open answers as the paper did (judge OR rule), or by rule alone when no judge is given."""
    if judge is None:
        print("[eval] gpqa_open: no --judge model given; grading by rule (math-verify) only, which "
              "under-counts free-form answers", file=sys.stderr)
        return {"grader": "rule only (math-verify; no judge model given)"}
    judge_rows(rows, {q.id: q.text for q in questions}, judge)
    write_jsonl(writer.partial, rows)  # the judged rows replace the unjudged ones in one rename
    n = max(len(rows), 1)
    return {"grader": f"judge OR rule (judge: {judge.label})",
            "accuracy_rule": 100 * sum(r["rule_correct"] for r in rows) / n,
            "accuracy_judge": 100 * sum(r["judge_correct"] for r in rows) / n}


def markdown_table(rows: list[tuple[str, dict[str, dict]]], benchmarks: list[str]) -> str:
    """One row per model/method, one column per benchmark + average (accuracy, %)."""
    head = "| model | " + " | ".join(benchmarks) + " | avg |\n|---|" + "---|" * (len(benchmarks) + 1) + "\n"
    lines = []
    for label, by_bench in rows:
        accs = [by_bench[b]["accuracy"] for b in benchmarks]
        cells = " | ".join(f"{a:.1f}" for a in accs)
        lines.append(f"| {label} | {cells} | {sum(accs) / len(accs):.1f} |")
    return head + "\n".join(lines) + "\n"


def evaluate(model_label: str, benchmarks: list[str], tokenizer, backend, out_dir: str, s: EvalSettings,
             data_dir: str | None = None, judge: Judge | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {b: evaluate_benchmark(b, tokenizer, backend, out, s, data_dir, judge) for b in benchmarks}
    summary = {"model": model_label, "benchmarks": results, "settings": vars(s), "environment": environment()}
    write_json(out / "summary.json", summary)
    write_text(out / "results.md", markdown_table([(model_label, results)], benchmarks))
    return summary
