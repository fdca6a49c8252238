"""Model resolution: the embedded GGUF, its converted folder, checksums, and bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upft.models import EMBEDDED, end_of_turn_token, resolve_model
from upft.errors import UserError


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
    for spec in ["./no/such/model", "missing.gguf", "not-a-model", str(tmp_path)]:
        with pytest.raises(UserError):
            resolve_model(spec)
    assert set(EMBEDDED) >= {"smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"}


def test_hub_ids_are_checked_before_anything_runs(tmp_path, monkeypatch):
    """A hub id in the local hub cache is taken as it is; one that is not, offline or unreachable
    (or unknown), is one error line at once instead of a minute of retries and a traceback."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snap = cache / "models--Qwen--Qwen2.5-Math-7B-Instruct" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (cache / "models--Qwen--Qwen2.5-Math-7B-Instruct" / "refs").mkdir()
    (cache / "models--Qwen--Qwen2.5-Math-7B-Instruct" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_model("Qwen/Qwen2.5-Math-7B-Instruct") == "Qwen/Qwen2.5-Math-7B-Instruct"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub model upft-tests/no-such-model is not in the local cache and HF_HUB_OFFLINE=1"):
        resolve_model("upft-tests/no-such-model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(UserError, match="cannot reach the hub model upft-tests/no-such-model \\("):
        resolve_model("upft-tests/no-such-model")  # no network here; an unknown id online


def test_two_first_time_conversions_at_once_do_not_collide(first_conversions, model_path):
    """Two processes converting the same GGUF into an empty cache (two runs, or tests beside a demo):
    the session's own conversion is such a pair (conftest.first_conversions)."""
    from upft.models import cache_dir

    runs, folders = first_conversions
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert {r.stdout.strip().splitlines()[-1] for r in runs} == {model_path}
    assert (Path(model_path) / "config.json").is_file()
    gguf = cache_dir() / "gguf" / "smollm2-135m-instruct.gguf"
    assert folders == [f"smollm2-135m-instruct-{_sha12(gguf)}"]
    assert resolve_model(str(gguf)) == model_path  # the GGUF file itself, checked by its name, resolves alike


def _sha12(path) -> str:
    from upft.runio import sha256_file

    return sha256_file(path)[:12]
