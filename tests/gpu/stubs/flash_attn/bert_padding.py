"""Names OpenRLHF imports from flash_attn.bert_padding; calling any of them is an error."""

from einops import rearrange  # noqa: F401  (flash-attn re-exports einops' rearrange here)


def _missing(*args, **kwargs):
    raise RuntimeError("flash-attn stand-in: this code path (sample packing) needs the real flash-attn")


index_first_axis = pad_input = unpad_input = _missing
