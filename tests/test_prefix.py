"""UPFT/SFT training rows on a real tokenizer: token-exact prefixes, suffix placement, EOS."""

from __future__ import annotations

import pytest

from upft.builders import build_sft, build_upft, cut_prefix, stats
from upft.models import end_of_turn_id
from upft.prompts import UPFT_SUFFIX, messages, render

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


def test_cut_backs_off_when_the_last_token_would_not_round_trip(tok):
    text = "Answer 😀😀😀 done"
    ids = tok(text, add_special_tokens=False).input_ids
    msgs = messages("q", "plain")
    _, pids = render(tok, msgs)
    # find an L whose cut falls inside an emoji's byte tokens
    inside = [L for L in range(1, len(ids)) if "\ufffd" in tok.decode(ids[:L])]
    assert inside, "the tokenizer should split the emoji into several byte tokens"
    L = inside[0]
    cut = cut_prefix(tok, msgs, pids, ids, L, end_of_turn_id(tok))
    assert 0 < len(cut) < L and cut == ids[:len(cut)]
    assert tok(tok.decode(cut), add_special_tokens=False).input_ids == cut


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
    from upft.runio import UserError

    with pytest.raises(UserError, match="full-length samples"):
        build_sft([fake_sample(tok, 0, RESPONSES[0], "prefix")], tok, end_of_turn_id(tok))
