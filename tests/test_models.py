"""Model resolution: the embedded GGUF, its converted folder, checksums, and bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upft.models import EMBEDDED, end_of_turn_token, resolve_model
from upft.runio import UserError


def test_converted_gguf_is_a_plain_folder_with_the_end_of_turn_as_eos(model_path, tok):
    folder = Path(model_path)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (folder / "model.safetensors").exists()
    # SmolLM2's GGUF says eos=<|im_start|>; the template ends turns with <|im_end|>
    assert end_of_turn_token(tok) == "<|im_end|>" == tok.eos_token
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_gguf_failing_its_checksum_is_refused(tmp_path):
    bad = tmp_path / "smollm2-135m-instruct.gguf"  # named like the embedded model: checked against it
    bad.write_bytes(b"GGUF not really")
    with pytest.raises(UserError, match="does not match"):
        resolve_model(str(bad))
    other = tmp_path / "mine.gguf"
    other.write_bytes(b"GGUF")
    with pytest.raises(UserError, match="does not match"):
        resolve_model(str(other), gguf_sha256="0" * 64)


def test_model_specs(tmp_path):
    assert resolve_model("Qwen/Qwen2.5-Math-7B-Instruct") == "Qwen/Qwen2.5-Math-7B-Instruct"
    for spec in ["./no/such/model", "missing.gguf", "not-a-model", str(tmp_path)]:
        with pytest.raises(UserError):
            resolve_model(spec)
    assert set(EMBEDDED) >= {"smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"}
