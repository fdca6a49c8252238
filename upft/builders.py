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

import os
import random

from upft.draws import request_seed
from upft.prompts import UPFT_SUFFIX, render
from upft.errors import UserError
from upft.draws import choose_full

METHODS = ("upft", "sft", "rft", "label_filter")  # training-set builders


def turn_content(tokenizer, msgs: list[dict], prompt_text: str, text: str) -> str:
    """The assistant message whose rendering continues the sampling prompt with ``text``. Most
    templates render a finished turn as the generation prompt plus the answer; some add text to
    the generation prompt only (DeepSeek-R1-Distill's ``<think>\n``), which the message must then
    hold itself, or the trained row would not continue the prompt the model was sampled with."""
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": text}], tokenize=False)
    if full.startswith(prompt_text):
        return text
    return prompt_text[len(os.path.commonprefix([full, prompt_text])):] + text


def encode_turn(tokenizer, msgs: list[dict], prompt_ids: list[int], content: str, eot_id: int) -> list[int] | None:
    """The ids trained when ``content`` is the assistant turn after ``msgs``: what OpenRLHF's SFT dataset
    tokenises (chat template over prompt + answer, trailing newlines stripped, no special tokens
    added), minus the prompt, through the end-of-turn token. Both trainers train exactly these ids.
    None when the template does not render the prompt as sampled or ends no turn."""
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": content}], tokenize=False)
    ids = tokenizer(full.rstrip("\n"), add_special_tokens=False).input_ids
    if ids[:len(prompt_ids)] != prompt_ids or eot_id not in ids[len(prompt_ids):]:
        return None
    rest = ids[len(prompt_ids):]
    return rest[:rest.index(eot_id) + 1]


def whole_chars(tokenizer, ids: list[int], k: int) -> int:
    """The largest cut <= k whose text does not end inside a multi-byte character (a split emoji
    decodes to U+FFFD, which re-encodes to a token the model never produced)."""
    while k > 0 and tokenizer.decode(ids[:k], skip_special_tokens=False).endswith("\ufffd"):
        k -= 1
    return k


def _row(sample: dict, kind: str, msgs: list[dict], prompt_text: str, prompt_ids: list[int], n_sampled: int,
         content: str, target_ids: list[int], shortened: bool = False) -> dict:
    return {
        "id": sample["id"],
        "sample_index": sample.get("sample_index", 0),
        "kind": kind,
        # OpenRLHF's keys (--data.input_key prompt --data.output_key response): both message lists
        "prompt": msgs,
        "response": [{"role": "assistant", "content": content}],
        "prompt_text": prompt_text,
        "prompt_ids": prompt_ids,
        "target_ids": target_ids,
        "n_sampled_tokens": n_sampled,  # sampled ids the text holds; target_ids is their canonical encoding
        "reencoded": target_ids[:-1] != sample["response_ids"][:n_sampled],
        "shortened": shortened,  # a prefix cut back from L to end on a whole character
        "finish_reason": sample["finish_reason"],
    }


def full_row(sample: dict, tokenizer, eot_id: int) -> dict | None:
    """The whole sampled response under the sampling prompt (plain question), never shortened."""
    ids = sample["response_ids"]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    content = turn_content(tokenizer, sample["messages"], sample["prompt"], text)
    target = encode_turn(tokenizer, sample["messages"], sample["prompt_ids"], content, eot_id)
    if target is None:
        return None
    return _row(sample, "full", sample["messages"], sample["prompt"], sample["prompt_ids"], len(ids), content, target)


def prefix_row(sample: dict, tokenizer, eot_id: int, L: int, suffix: bool = True) -> dict | None:
    """The text of the first L sampled tokens, under the question + UPFT instruction suffix."""
    msgs = [dict(m) for m in sample["messages"]]
    if suffix:
        msgs[-1]["content"] += UPFT_SUFFIX
    prompt_text, prompt_ids = render(tokenizer, msgs)
    k = whole_chars(tokenizer, sample["response_ids"], min(L, len(sample["response_ids"])))
    if k == 0:
        return None
    text = tokenizer.decode(sample["response_ids"][:k], skip_special_tokens=False)
    content = turn_content(tokenizer, msgs, prompt_text, text)
    target = encode_turn(tokenizer, msgs, prompt_ids, content, eot_id)
    if target is None:
        return None
    return _row(sample, "prefix", msgs, prompt_text, prompt_ids, k, content, target,
                shortened=k < min(L, len(sample["response_ids"])))


def _keep(samples: list[dict], keep_truncated: bool) -> tuple[list[dict], int]:
    """Full draws cut at the token limit are left out unless asked for: trained with an end-of-turn,
    a truncated trace teaches the model to stop mid-reasoning. Returns (kept, n left out)."""
    if keep_truncated:
        return samples, 0
    kept = [s for s in samples if not (s["draw"] == "full" and s["finish_reason"] == "length")]
    return kept, len(samples) - len(kept)


def build_upft(samples: list[dict], tokenizer, eot_id: int, L: int, suffix: bool = True,
               keep_truncated: bool = False) -> tuple[list[dict], int]:
    """UPFT set: full rows for the samples drawn full, prefix rows for the rest. Returns (rows, dropped)."""
    if L <= 0:
        raise UserError(f"L must be a positive number of tokens, got {L}")
    usable, _ = _keep(samples, keep_truncated)
    rows = [full_row(s, tokenizer, eot_id) if s["draw"] == "full" else prefix_row(s, tokenizer, eot_id, L, suffix)
            for s in usable]
    kept = [r for r in rows if r is not None]
    return kept, len(samples) - len(kept)


def build_sft(samples: list[dict], tokenizer, eot_id: int, keep_truncated: bool = False) -> tuple[list[dict], int]:
    """SFT baseline: the whole self-generated response of each question's first draw."""
    if any(s["draw"] != "full" for s in samples):
        raise UserError("SFT needs full-length samples; sample with --mode full")
    first = [s for s in samples if s.get("sample_index", 0) == 0]
    usable, _ = _keep(first, keep_truncated)
    rows = [full_row(s, tokenizer, eot_id) for s in usable]
    kept = [r for r in rows if r is not None]
    return kept, len(first) - len(kept)


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


def _usable_correct(samples: list[dict], correct: list[bool], keep_truncated: bool) -> list[bool]:
    """Correct and, unless asked otherwise, not cut at the token limit (see ``_keep``)."""
    return [ok and (keep_truncated or s["finish_reason"] != "length") for s, ok in zip(samples, correct)]


def build_rft(samples: list[dict], correct: list[bool], tokenizer, eot_id: int, seed: int,
              keep_truncated: bool = False) -> tuple[list[dict], int]:
    """RFT: one correct sample per question, tuned in full. ``dropped`` counts questions with no usable one."""
    _check_pool(samples, "RFT")
    picked = pick_correct(samples, _usable_correct(samples, correct, keep_truncated), seed)
    rows = [full_row(s, tokenizer, eot_id) for s in picked]
    kept = [r for r in rows if r is not None]
    return kept, len({s["id"] for s in samples}) - len(kept)


def build_label_filter(samples: list[dict], correct: list[bool], tokenizer, eot_id: int, L: int, p: float,
                       seed: int, suffix: bool = True, keep_truncated: bool = False) -> tuple[list[dict], int]:
    """Label Filter: UPFT's prefixes (and its full fraction p) cut from one correct sample per question."""
    _check_pool(samples, "Label Filter")
    picked = pick_correct(samples, _usable_correct(samples, correct, keep_truncated), seed)
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
        # rows whose text re-encodes to other ids than were sampled (both trainers train the canonical ids)
        "n_reencoded": sum(r["reencoded"] for r in rows),
        # prefix rows holding fewer than the sampled L tokens (a cut inside a multi-byte character)
        "n_prefix_shortened": sum(r["shortened"] for r in rows),
        "sampling_tokens": sum(s["n_tokens"] for s in samples),
        "tuning_tokens": sum(len(r["target_ids"]) for r in rows),
        "mean_target_length": sum(len(r["target_ids"]) for r in rows) / max(len(rows), 1),
    }
