"""Training-set builders: UPFT (prefixes + a full fraction) and its baselines.

UPFT and SFT use one unfiltered self-sample per question. RFT and Label Filter use a pool of n
samples per question graded against reference answers: RFT tunes on one correct sample in full,
Label Filter builds UPFT's prefixes (and full fraction) from one correct sample.

Each row holds both text (for OpenRLHF, which re-tokenises with the chat template) and the
exact ids our local trainer uses: ``prompt_ids`` and ``target_ids`` (response + end-of-turn).
Prefix cuts are chosen so that the decoded text re-encodes, after the prompt, to the very
ids the model sampled; OpenRLHF then trains exactly those tokens.
"""

from __future__ import annotations

import random

from upft.generation import request_seed
from upft.prompts import UPFT_SUFFIX, render
from upft.runio import UserError
from upft.sampling import choose_full

METHODS = ("upft", "sft", "rft", "label_filter")  # training-set builders


def cut_prefix(tokenizer, msgs: list[dict], prompt_ids: list[int], ids: list[int], L: int, eot_id: int) -> list[int]:
    """The longest cut of at most L sampled ids that OpenRLHF will re-tokenise to the same ids.

    The check renders the conversation as OpenRLHF's SFT dataset does (chat template over the
    prompt messages + the assistant text, trailing newlines stripped, no special tokens added)
    and requires prompt ids + the cut + end-of-turn. Usually the cut is exactly ids[:L]; it is
    shorter when the L-th token would merge differently or the template trims the text (a split
    multi-byte character, trailing whitespace under Llama's template). Empty if none works.
    """
    for k in range(min(L, len(ids)), 0, -1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=False)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": text}], tokenize=False)
        want = prompt_ids + ids[:k] + [eot_id]
        if tokenizer(full.rstrip("\n"), add_special_tokens=False).input_ids[:len(want)] == want:
            return ids[:k]
    return []


def _row(sample: dict, kind: str, msgs: list[dict], prompt_text: str, prompt_ids: list[int],
         response_ids: list[int], tokenizer, eot_id: int) -> dict:
    return {
        "id": sample["id"],
        "sample_index": sample.get("sample_index", 0),
        "kind": kind,
        # OpenRLHF's keys (--data.input_key prompt --data.output_key response): both message lists
        "prompt": msgs,
        "response": [{"role": "assistant", "content": tokenizer.decode(response_ids, skip_special_tokens=False)}],
        "prompt_text": prompt_text,
        "prompt_ids": prompt_ids,
        "target_ids": response_ids + [eot_id],
        "finish_reason": sample["finish_reason"],
    }


def full_row(sample: dict, tokenizer, eot_id: int) -> dict | None:
    """The whole sampled response under the sampling prompt (plain question)."""
    ids = cut_prefix(tokenizer, sample["messages"], sample["prompt_ids"], sample["response_ids"],
                     len(sample["response_ids"]), eot_id)
    if sample["response_ids"] and not ids:
        return None
    return _row(sample, "full", sample["messages"], sample["prompt"], sample["prompt_ids"], ids, tokenizer, eot_id)


def prefix_row(sample: dict, tokenizer, eot_id: int, L: int, suffix: bool = True) -> dict | None:
    """The first L sampled tokens, under the question + UPFT instruction suffix."""
    msgs = [dict(m) for m in sample["messages"]]
    if suffix:
        msgs[-1]["content"] += UPFT_SUFFIX
    text, ids = render(tokenizer, msgs)
    prefix = cut_prefix(tokenizer, msgs, ids, sample["response_ids"], L, eot_id)
    if not prefix:
        return None
    return _row(sample, "prefix", msgs, text, ids, prefix, tokenizer, eot_id)


def build_upft(samples: list[dict], tokenizer, eot_id: int, L: int, suffix: bool = True) -> tuple[list[dict], int]:
    """UPFT set: full rows for the samples drawn full, prefix rows for the rest. Returns (rows, dropped)."""
    if L <= 0:
        raise UserError(f"L must be a positive number of tokens, got {L}")
    rows = []
    for s in samples:
        if s["draw"] == "full":
            rows.append(full_row(s, tokenizer, eot_id))
        else:
            rows.append(prefix_row(s, tokenizer, eot_id, L, suffix))
    kept = [r for r in rows if r is not None]
    return kept, len(rows) - len(kept)


def build_sft(samples: list[dict], tokenizer, eot_id: int) -> tuple[list[dict], int]:
    """SFT baseline: the whole self-generated response of each question's first draw."""
    if any(s["draw"] != "full" for s in samples):
        raise UserError("SFT needs full-length samples; sample with --mode full")
    rows = [full_row(s, tokenizer, eot_id) for s in samples if s.get("sample_index", 0) == 0]
    kept = [r for r in rows if r is not None]
    return kept, len(rows) - len(kept)


def pick_correct(samples: list[dict], correct: list[bool], seed: int) -> list[dict]:
    """One correct sample per question, drawn at random (seeded per question); questions with none are left out."""
    by_q: dict[str, list[dict]] = {}
    for s, ok in zip(samples, correct):
        if ok:
            by_q.setdefault(s["id"], []).append(s)
    picked = []
    for qid in sorted(by_q):
        pool = sorted(by_q[qid], key=lambda s: s["sample_index"])
        picked.append(random.Random(request_seed(seed, "pick", qid)).choice(pool))
    return picked


def _check_pool(samples: list[dict], method: str) -> None:
    if any(s["draw"] != "full" for s in samples):
        raise UserError(f"{method} needs full-length samples to grade; sample with --mode full --n 16")


def build_rft(samples: list[dict], correct: list[bool], tokenizer, eot_id: int, seed: int) -> tuple[list[dict], int]:
    """RFT: one correct sample per question, tuned in full. ``dropped`` counts questions with no usable one."""
    _check_pool(samples, "RFT")
    rows = [full_row(s, tokenizer, eot_id) for s in pick_correct(samples, correct, seed)]
    kept = [r for r in rows if r is not None]
    return kept, len({s["id"] for s in samples}) - len(kept)


def build_label_filter(samples: list[dict], correct: list[bool], tokenizer, eot_id: int, L: int, p: float,
                       seed: int, suffix: bool = True) -> tuple[list[dict], int]:
    """Label Filter: UPFT's prefixes (and its full fraction p) cut from one correct sample per question."""
    _check_pool(samples, "Label Filter")
    picked = pick_correct(samples, correct, seed)
    full = choose_full([s["id"] for s in picked], p, seed)
    rows, _ = build_upft([{**s, "draw": "full" if s["id"] in full else "prefix"} for s in picked],
                         tokenizer, eot_id, L, suffix)
    return rows, len({s["id"] for s in samples}) - len(rows)


def stats(method: str, samples: list[dict], rows: list[dict], dropped: int) -> dict:
    """Counts and token accounting: sampling tokens (all decoded) and tuning tokens (under the loss).

    ``n_dropped`` counts rows (UPFT, SFT) or questions (RFT, Label Filter) left out of the set.
    """
    return {
        "method": method,
        "n_samples": len(samples),
        "n_questions": len({s["id"] for s in samples}),
        "n_rows": len(rows),
        "n_prefix": sum(r["kind"] == "prefix" for r in rows),
        "n_full": sum(r["kind"] == "full" for r in rows),
        "n_dropped": dropped,
        "n_truncated_full": sum(r["kind"] == "full" and r["finish_reason"] == "length" for r in rows),
        "sampling_tokens": sum(s["n_tokens"] for s in samples),
        "tuning_tokens": sum(len(r["target_ids"]) for r in rows),
        "mean_target_length": sum(len(r["target_ids"]) for r in rows) / max(len(rows), 1),
    }
