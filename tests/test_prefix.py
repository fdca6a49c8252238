"""UPFT/SFT training rows on a real tokenizer: token-exact prefixes, suffix placement, EOS."""

from __future__ import annotations

import pytest

from upft.builders import build_sft, build_upft, stats, whole_chars
from upft.models import end_of_turn_id
from upft.prompts import UPFT_SUFFIX, messages, render, render_many

RESPONSES = [
    "First, we find how many apples Ava buys: 3 boxes * 4 = 12 apples. Then 12 + 5 = 17. \\boxed{17}",
    "Step 1:\n\n  Let x be the number of cards. 2x = 18, so x = 9.\nThe answer is 9.",
    "We compute 1,250 / 5 = 250 😀 dollars each; so the answer is \\boxed{250}.",
]


def fake_sample(tok, i: int, text: str, draw: str) -> dict:
    """A sample record as the sampler writes it; the 'sampled' ids are the tokenizer's own ids."""
    msgs = messages(f"Question {i}: how many?", "boxed")
    prompt, ids = render(tok, msgs)
    rids = tok(text, add_special_tokens=False).input_ids
    return {"id": str(i), "sample_index": 0, "draw": draw, "messages": msgs, "prompt": prompt,
            "prompt_ids": ids, "response": text, "response_ids": rids, "finish_reason": "stop",
            "n_tokens": len(rids) + 1}


@pytest.mark.parametrize("L", [1, 4, 8, 16])
def test_prefix_is_exactly_the_first_L_sampled_ids(tok, L):
    eot = end_of_turn_id(tok)
    samples = [fake_sample(tok, i, t, "prefix") for i, t in enumerate(RESPONSES)]
    rows, dropped = build_upft(samples, tok, eot, L)
    assert dropped == 0
    for s, r in zip(samples, rows):
        assert r["target_ids"][:-1] == s["response_ids"][:L]
        assert len(r["target_ids"]) == L + 1
        assert r["target_ids"][-1] == eot == tok.convert_tokens_to_ids("<|im_end|>")
        # the text OpenRLHF re-tokenises gives back the same ids after the same prompt
        again = tok(r["prompt_text"] + r["response"][0]["content"], add_special_tokens=False).input_ids
        assert again == r["prompt_ids"] + r["target_ids"][:-1]


def test_a_prefix_cut_inside_a_character_ends_on_the_whole_character_and_is_counted(tok):
    text = "Answer 😀😀😀 done"
    ids = tok(text, add_special_tokens=False).input_ids
    # find an L whose cut falls inside an emoji's byte tokens
    inside = [L for L in range(1, len(ids)) if "\ufffd" in tok.decode(ids[:L])]
    assert inside, "the tokenizer should split the emoji into several byte tokens"
    L = inside[0]
    k = whole_chars(tok, ids, L)
    assert 0 < k < L and "\ufffd" not in tok.decode(ids[:k])
    sample = {**fake_sample(tok, 0, text, "prefix"), "response_ids": ids}
    rows, dropped = build_upft([sample], tok, end_of_turn_id(tok), L)
    assert dropped == 0 and rows[0]["shortened"] and rows[0]["n_sampled_tokens"] == k
    assert stats("upft", [sample], rows, dropped)["n_prefix_shortened"] == 1


def noncanonical(tok, text: str, word: str) -> list[int]:
    """Ids of ``text`` with ``word`` split into two tokens, as a sampler may produce and re-encoding never does."""
    head, tail = text.split(word, 1)
    parts = [head, word[:2], word[2:], tail]
    ids = [i for part in parts for i in tok(part, add_special_tokens=False).input_ids]
    assert tok.decode(ids) == text and ids != tok(text, add_special_tokens=False).input_ids
    return ids


def test_a_full_row_keeps_its_whole_response_when_the_sampled_ids_are_not_canonical(tok):
    """Sampled ids that re-encode differently (a word sampled in two pieces) used to cut the row back to
    just before that spot; now the whole response is kept, trained as its canonical ids (what OpenRLHF
    trains too), and the row is counted as re-encoded."""
    eot = end_of_turn_id(tok)
    text = RESPONSES[1]
    ids = noncanonical(tok, text, "number")
    sample = {**fake_sample(tok, 0, text, "full"), "response_ids": ids, "n_tokens": len(ids) + 1}
    rows, dropped = build_sft([sample], tok, eot)
    assert dropped == 0
    (row,) = rows
    assert row["response"][0]["content"] == text  # nothing cut off
    assert row["target_ids"] == tok(text, add_special_tokens=False).input_ids + [eot]
    assert row["reencoded"] and row["n_sampled_tokens"] == len(ids)
    st = stats("sft", [sample], rows, dropped)
    assert st["n_reencoded"] == 1 and st["tuning_tokens"] == len(row["target_ids"])
    # a prefix over the split keeps the text of exactly the first L sampled tokens
    split_at = len(tok(text.split("number")[0], add_special_tokens=False).input_ids) + 1
    L = split_at + 2
    prefix, _ = build_upft([{**sample, "draw": "prefix"}], tok, eot, L)
    assert prefix[0]["response"][0]["content"] == tok.decode(ids[:L]) and prefix[0]["n_sampled_tokens"] == L


def test_full_draws_cut_at_the_token_limit_are_left_out_unless_kept(tok):
    eot = end_of_turn_id(tok)
    samples = [fake_sample(tok, i, t, "full") for i, t in enumerate(RESPONSES)]
    samples[1] = {**samples[1], "finish_reason": "length"}
    rows, dropped = build_sft(samples, tok, eot)
    assert [r["id"] for r in rows] == ["0", "2"] and dropped == 1
    rows, dropped = build_sft(samples, tok, eot, keep_truncated=True)
    assert len(rows) == 3 and dropped == 0
    # prefix draws always stop at L: they are not "truncated" in this sense
    upft, dropped = build_upft([{**samples[1], "draw": "prefix"}, samples[1]], tok, eot, L=4)
    assert [r["kind"] for r in upft] == ["prefix"] and dropped == 1


def test_suffix_only_on_prefix_samples_and_full_samples_keep_whole_response(tok):
    eot = end_of_turn_id(tok)
    samples = [fake_sample(tok, 0, RESPONSES[0], "full"), fake_sample(tok, 1, RESPONSES[1], "prefix")]
    rows, _ = build_upft(samples, tok, eot, L=4)
    full, prefix = rows
    assert full["kind"] == "full" and prefix["kind"] == "prefix"
    assert not full["prompt"][-1]["content"].endswith(UPFT_SUFFIX)
    assert full["prompt_ids"] == samples[0]["prompt_ids"]
    assert full["target_ids"] == samples[0]["response_ids"] + [eot]
    assert prefix["prompt"][-1]["content"].endswith(UPFT_SUFFIX)
    assert UPFT_SUFFIX in prefix["prompt_text"] and UPFT_SUFFIX not in full["prompt_text"]
    no_suffix, _ = build_upft(samples[1:], tok, eot, L=4, suffix=False)
    assert no_suffix[0]["prompt_ids"] == samples[1]["prompt_ids"]


def test_sft_rows_and_token_accounting(tok):
    eot = end_of_turn_id(tok)
    samples = [fake_sample(tok, i, t, "full") for i, t in enumerate(RESPONSES)]
    rows, dropped = build_sft(samples, tok, eot)
    assert [r["target_ids"] for r in rows] == [s["response_ids"] + [eot] for s in samples]
    st = stats("sft", samples, rows, dropped)
    assert st["tuning_tokens"] == sum(len(s["response_ids"]) + 1 for s in samples)
    assert st["sampling_tokens"] == sum(s["n_tokens"] for s in samples)
    assert st["n_full"] == 3 and st["n_prefix"] == 0


def test_sft_refuses_prefix_draws(tok):
    from upft.errors import UserError

    with pytest.raises(UserError, match="full-length samples"):
        build_sft([fake_sample(tok, 0, RESPONSES[0], "prefix")], tok, end_of_turn_id(tok))


def test_prompts_rendered_at_once_are_the_prompts_rendered_one_by_one(tok):
    """Sampling and evaluation tokenize all their prompts in one call (faster on many cores): the ids
    must be each prompt's own, unpadded, whatever its neighbours' lengths."""
    conversations = [messages(q, style) for q in ("Two plus two?", "x" * 300 + " 😀 then?", "Why\n\n  so?")
                     for style in ("plain", "boxed", "qwen-math")]
    rendered = render_many(tok, conversations)
    assert render_many(tok, []) == []
    for msgs, (text, ids) in zip(conversations, rendered, strict=True):
        assert text == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert ids == tok(text, add_special_tokens=False).input_ids and (text, ids) == render(tok, msgs)
