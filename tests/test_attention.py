"""Grouped decoding steps (upft.attention): the attention transformers' sdpa computes, without its copies."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

import upft.attention as attention
from upft.generation import decode, generation_config
from upft.models import end_of_turn_id, load_model
from upft.prompts import messages, render


def test_a_grouped_step_is_sdpa_over_copied_heads():
    """One query position, 12 heads over 2 key/value heads, a padding mask: the same output as
    transformers' way (each key/value head copied for its 6 query heads), laid out as its path returns."""
    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups = 6
    query, key, value = torch.randn(3, 12, 1, 16), torch.randn(3, 2, 9, 16), torch.randn(3, 2, 9, 16)
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., :4] = False  # left padding of two rows
    mask[2, ..., :1] = False
    got, _ = attention.grouped_sdpa_forward(module, query, key, value, mask, scaling=0.25)
    want = torch.nn.functional.scaled_dot_product_attention(query, repeat_kv(key, 6), repeat_kv(value, 6),
                                                            attn_mask=mask, scale=0.25).transpose(1, 2)
    assert got.shape == (3, 1, 12, 16)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("static", [False, True])
def test_the_real_model_decodes_as_with_sdpa_and_folds_every_step(model_path, tok, monkeypatch, static):
    """SmolLM2 (9 query heads over 3 key/value heads) through the backend's ``decode``: a left-padded
    batch, greedy, with the dynamic cache and the static one the GPU backend compiles. The same tokens as
    transformers' sdpa, and only the prefill (one call per layer) takes transformers' path: each of the
    other steps folds."""
    plain = load_model(model_path, "cpu", grouped_decoding=False).eval()
    grouped = load_model(model_path, "cpu").eval()
    assert grouped.config._attn_implementation == attention.GROUPED_SDPA
    fallbacks = []

    def counted(*args, **kwargs):
        fallbacks.append(args[1].shape[2])  # the query's positions
        return stock(*args, **kwargs)

    stock = attention.sdpa_attention_forward
    monkeypatch.setattr(attention, "sdpa_attention_forward", counted)
    prompts = [render(tok, messages(q, "plain"))[1]
               for q in ("What is 2 + 3?", "Name a large ocean on Earth and say why it matters.")]
    config = generation_config(12, 0.0, 1.0, 0, [end_of_turn_id(tok)], tok.pad_token_id, "cpu")
    config.cache_implementation = "static" if static else None
    want, got = decode(plain, prompts, config), decode(grouped, prompts, config)
    assert got == want and len(want[1][0]) == 12  # the longer answer ran every step
    assert fallbacks == [max(map(len, prompts))] * grouped.config.num_hidden_layers  # the prefill's alone
