"""Grouped decoding steps (upft.attention): the attention transformers' sdpa computes, without its copies."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import upft.attention as attention
from upft.backends import make_backend
from upft.generation import decode, generation_config
from upft.models import end_of_turn_id, load_model
from upft.prompts import messages, render


def _step(mask_kind: str):
    """One decoding step's inputs as a layer passes them: 12 query heads over 2 key/value heads, the
    query transposed from (batch, 1, heads, dim), two of three rows left-padded."""
    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 6, True
    query = torch.randn(3, 1, 12, 16).transpose(1, 2)
    key, value = torch.randn(3, 2, 9, 16), torch.randn(3, 2, 9, 16)
    keep = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    keep[0, ..., :4] = False
    keep[2, ..., :1] = False
    mask = {"bool": keep, "float": torch.zeros(3, 1, 1, 9).masked_fill(~keep, torch.finfo(torch.float32).min),
            "none": None}[mask_kind]
    return module, query, key, value, mask


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_a_grouped_step_is_transformers_sdpa(mask_kind):
    """The same output as transformers' own sdpa path (which copies each key/value head for its 6 query
    heads under a mask), in its layout (batch, 1, heads, dim), with a boolean, an additive or no mask."""
    args = _step(mask_kind)
    got, _ = attention.grouped_sdpa_forward(*args, scaling=0.25)
    want, _ = sdpa_attention_forward(*args, scaling=0.25)
    assert got.shape == want.shape == (3, 1, 12, 16)
    torch.testing.assert_close(got, want)


def test_a_grouped_step_compiles_to_one_graph():
    """The GPU backend compiles long decodes: the folded step must trace as one graph, to the same output."""
    args = _step("bool")
    compiled = torch.compile(attention.grouped_sdpa_forward, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args, scaling=0.25)[0], attention.grouped_sdpa_forward(*args, scaling=0.25)[0])


@pytest.mark.parametrize("static", [False, True])
def test_the_real_model_decodes_as_with_sdpa_and_folds_every_step(model_path, tok, monkeypatch, static):
    """SmolLM2 (9 query heads over 3 key/value heads) through the backend's ``decode``: a left-padded
    batch, greedy, with the dynamic cache and the static one the GPU backend compiles (uncompiled on the
    CPU; the compile is the test above). The same tokens as transformers' sdpa, and only the prefill (one
    call per layer) takes transformers' path: each of the other steps folds."""
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


@pytest.mark.parametrize("options, implementation", [
    ({}, attention.GROUPED_SDPA),
    ({"attention": "sdpa"}, "sdpa"),  # transformers' own, as runs before the grouped steps decoded
    ({"continuous_batching": True}, "sdpa"),  # transformers' paged manager knows only its own names
])
def test_the_backend_loads_the_attention_asked_for(model_path, tok, options, implementation):
    """``--attention`` picks the decoding steps' attention through make_backend, as the CLIs pass it."""
    gen = make_backend("transformers", model_path, tok, [end_of_turn_id(tok)], device="cpu", **options)
    assert gen.model.config._attn_implementation == implementation
