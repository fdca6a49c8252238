"""Name OpenRLHF imports from flash_attn.utils.distributed; calling it is an error."""

from flash_attn.bert_padding import _missing as all_gather  # noqa: F401
