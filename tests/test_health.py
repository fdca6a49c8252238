"""The post-training model check: a collapsed model is caught, a working one passes."""

from __future__ import annotations

import pytest
import torch

from upft import health
from upft.health import check_finite, check_model, degenerate, early_stop_limit, stops_early
from upft.errors import UserError


@pytest.fixture
def model(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def test_a_collapsed_model_is_refused(model, tok):
    """All-zero final norm: every logit is 0, greedy repeats token 0 (what "!!!!" was for Qwen)."""
    with torch.no_grad():
        model.model.norm.weight.zero_()
    with pytest.raises(UserError, match="collapsed: asked .* token 0 repeated 24 times"):
        check_model(model, tok)


def test_non_finite_weights_are_refused(model, tok):
    with torch.no_grad():
        model.lm_head.weight[3, 5] = float("inf")
    with pytest.raises(UserError, match="non-finite weights in 1 tensors"):
        check_model(model, tok)


def test_degenerate_answers_and_finite_steps():
    assert degenerate([]) == "an empty answer"
    assert degenerate([7] * 8) == "token 7 repeated 8 times"
    assert degenerate([7] * 3) is None and degenerate([7, 7, 7, 7, 7, 7, 7, 8]) is None
    check_finite(3, {"loss": 0.5, "grad_norm": None})
    with pytest.raises(UserError, match="diverged at optimizer step 3 \\(grad_norm inf\\)"):
        check_finite(3, {"loss": 0.5, "grad_norm": float("inf")})


def test_early_stop_rules():
    """Only probes the base model answered past the limit count; half of them or more ending early is a collapse."""
    assert early_stop_limit([{"kind": "prefix", "n_sampled_tokens": 32}, {"kind": "full", "n_sampled_tokens": 300},
                             {"kind": "prefix", "n_sampled_tokens": 30}]) == 96
    assert early_stop_limit([{"kind": "full", "n_sampled_tokens": 300}]) is None
    assert stops_early([None, None], [34, 41], 96) == ("stops early: it ends its answers to 2 of 2 multi-step "
                                                      "questions after 34, 41 tokens, where the base model writes "
                                                      "more than 96")
    # the local-trainer model that passed the two-probe rule on an H100 and scored 8% on GSM8K
    assert stops_early([None, None], [35, None], 96) is not None
    assert stops_early([None] * 8, [30, 40, 50] + [None] * 5, 96) is None  # 3 of 8: most answers run on
    assert stops_early([None] * 8, [30, 40, 50, 60] + [None] * 4, 96) is not None  # 4 of 8
    assert stops_early([50, None], [20, 41], 96) is not None  # the first probe says nothing
    assert stops_early([50, 60], [20, 30], 96) is None  # nothing to judge


def test_batched_greedy_answers_as_one_by_one(model, tok):
    """The probes go through generate as one left-padded batch: the padding must not change an answer."""
    qs = [health.REASONING_PROBES[0], "Name the capital of France."]  # prompts of different lengths
    assert health.greedy(model, tok, qs, 12) == [health.greedy(model, tok, [q], 12)[0] for q in qs]


def test_the_real_model_passes_unless_it_ends_where_the_base_ran_on(model, tok, monkeypatch):
    """The real model passes with varied answers. It answers "7 + 5" in a few tokens; told that the
    base model ran past 40 on it, the check must refuse the model, and pass it when the limit is
    below its answer's length."""
    monkeypatch.setattr(health, "REASONING_PROBES", ("What is 7 + 5? Answer with a number.",))
    with pytest.raises(UserError, match="stops early: it ends its answers to 1 of 1 multi-step questions after"):
        check_model(model, tok, early=([None], 40))
    report = check_model(model, tok, early=([None], 1))
    assert report["passed"] and len(report["answers"]) == 3
    assert all(len(set(tok(a).input_ids)) > 1 for a in report["answers"])
    assert report["early_stop"] == {"probes": list(health.REASONING_PROBES), "limit": 1,
                                    "base_lengths": [None], "lengths": [None]}
