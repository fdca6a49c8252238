"""Self-sampling of training responses, UPFT-style: decode only what will be trained.

In ``upft`` mode a seeded random fraction p of the questions gets a full-length draw and the
rest are decoded for only L tokens. In ``full`` mode (the SFT/RFT baselines) every question
gets ``n`` full-length draws. Records are appended per batch, so a killed run resumes.
"""

from __future__ import annotations

import sys

from upft.data import Question
from upft.draws import choose_full, request_seed
from upft.generation import GenRequest
from upft.prompts import messages, render_many
from upft.errors import UserError
from upft.runio import JsonlAppender


def sample(
    questions: list[Question],
    tokenizer,
    backend,
    out_path: str,
    *,
    mode: str = "upft",
    L: int = 32,
    p: float = 0.1,
    n: int = 1,
    max_new_tokens: int = 1024,
    temperature: float = 0.6,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    style: str = "plain",
) -> list[dict]:
    """Draw responses and write them to ``out_path`` (JSONL); returns all records."""
    if mode not in ("upft", "full"):
        raise UserError(f"unknown sampling mode '{mode}' (upft or full)")
    if L <= 0:
        raise UserError(f"L must be a positive number of tokens, got {L}")
    if n <= 0 or max_new_tokens <= 0:
        raise UserError("n and max_new_tokens must be positive")
    full_ids = choose_full([q.id for q in questions], p, seed) if mode == "upft" else {q.id for q in questions}

    writer = JsonlAppender(out_path)
    records = writer.done_rows()
    done = {(r["id"], r["sample_index"]) for r in records}
    if done:
        print(f"[sample] resuming: {len(done)} draws already written", file=sys.stderr)

    meta: dict[str, dict] = {}
    requests = []
    todo = [q for q in questions if any((q.id, k) not in done for k in range(n))]
    conversations = [messages(q.text, style) for q in todo]
    for q, msgs, (text, ids) in zip(todo, conversations, render_many(tokenizer, conversations)):
        draw = "full" if q.id in full_ids else "prefix"
        for k in range(n):
            if (q.id, k) in done:
                continue
            key = f"{q.id}#{k}"
            meta[key] = {"id": q.id, "sample_index": k, "draw": draw, "question": q.text,
                         "answer": q.answer, "messages": msgs, "prompt": text, "prompt_ids": ids}
            requests.append(GenRequest(key, tuple(ids), max_new_tokens if draw == "full" else L,
                                       temperature, top_p, top_k, request_seed(seed, q.id, k)))

    for batch in backend.generate(requests):
        rows = [{**meta[r.key], "response": r.text, "response_ids": r.token_ids,
                 "finish_reason": r.finish_reason,
                 # decoded tokens, the stop token included: the sampling cost
                 "n_tokens": len(r.token_ids) + (r.finish_reason == "stop")} for r in batch]
        writer.append(rows)
        records.extend(rows)
    writer.finish()
    return records
