"""transformers' sdpa attention, with decoding steps that read each key/value head once.

A grouped-query model (Qwen2.5-1.5B: 12 query heads, 2 key/value heads) stores each key/value head
once, but transformers' sdpa path copies it for every query head of its group (``repeat_kv``) whenever
a padding mask is passed, because torch's fused kernels take ``enable_gqa`` only without a mask. Our
batches are left-padded, so every decoding step copied the whole KV cache six times over in every
layer: at GSM8K's 1319 rows that copy and the attention over it were most of a step's time.

In a decoding step each query head has one position, and the heads of a group attend to the same keys
under the same mask. So the step can fold a group's heads into the query-position axis instead: the
query ``(batch, kv_heads * groups, 1, dim)`` viewed as ``(batch, kv_heads, groups, dim)`` attends to the
keys ``(batch, kv_heads, length, dim)`` with the padding mask broadcast over the groups. That is the same
attention, computed by the same sdpa call, with no copy. Steps with more than one query position (a
prefill, training) and models without groups take transformers' own sdpa path unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_SDPA = "upft_grouped_sdpa"  # the attn_implementation name upft.models.load_model passes


def grouped_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa_attention_forward``, but a decoding step of a grouped-query layer folds each
    group's query heads onto its key/value head (query head h reads key/value head h // groups, as
    ``repeat_kv`` orders them). Returns ``(batch, 1, heads, dim)`` as transformers' path does."""
    batch, heads, positions, dim = query.shape
    groups = heads // key.shape[1]
    if positions != 1 or groups == 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.view(batch, heads // groups, groups, dim), key, value, attn_mask=attention_mask,
        dropout_p=dropout, scale=scaling, is_causal=False)  # the mask (batch, 1, 1, length) spans the groups
    return out.reshape(batch, 1, heads, value.shape[-1]), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_forward)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)  # the same masks as sdpa's
