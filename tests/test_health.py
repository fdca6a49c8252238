"""The post-training model check: a collapsed model is caught, a working one passes."""

from __future__ import annotations

import pytest
import torch

from upft.health import check_finite, check_model, degenerate
from upft.runio import UserError


@pytest.fixture
def model(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def test_the_real_model_passes_with_varied_answers(model, tok):
    report = check_model(model, tok)
    assert report["passed"] and len(report["answers"]) == 3
    assert all(len(set(tok(a).input_ids)) > 1 for a in report["answers"])


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
