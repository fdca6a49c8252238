"""Stage bookkeeping. A stage records the settings that produced its outputs (a fingerprint) in
``manifest.json``; re-running with the same settings is a no-op, and a folder that holds a
different run is refused instead of silently mixed. A lock file beside the folder keeps two
processes from writing one stage at once."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from upft.errors import UserError
from upft.runio import read_json, write_json


MANIFEST = "manifest.json"


RUNNING = ".running.json"  # settings of a stage run in progress
_LOCKS: dict[Path, int] = {}  # stage folders this process is writing, and their lock files


def fingerprint(settings: dict) -> str:
    """A short stable hash of the settings that determine a stage's output."""
    blob = json.dumps(settings, sort_keys=True, default=lambda o: asdict(o) if is_dataclass(o) else str(o)).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def environment() -> dict:
    """Versions and hardware, recorded with every result so numbers can be traced."""
    pkgs = {}
    for name in ("torch", "transformers", "math-verify", "peft", "vllm", "openrlhf", "deepspeed"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    hw = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            hw["gpu"] = torch.cuda.get_device_name(0)
            hw["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return {"python": platform.python_version(), "packages": pkgs, "hardware": hw}


def _lock(out_dir: Path) -> None:
    """Hold ``.<name>.lock`` beside ``out_dir`` until the stage ends (or this process does).

    Two runs sharing a sample pool (two configs started together) must not append to one
    ``.partial`` file: the second waits here, then finds the first one's finished run and skips.
    """
    key = out_dir.resolve()
    if key in _LOCKS:
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir.parent / f".{out_dir.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"[wait] another run is writing {out_dir}; waiting for it to finish", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    _LOCKS[key] = fd


def release_stage(out_dir: str | Path) -> None:
    """Let other processes write ``out_dir`` again (a stage that renamed its output into place)."""
    fd = _LOCKS.pop(Path(out_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing releases the lock


def begin_stage(out_dir: str | Path, settings: dict, outputs: list[str], force: bool = False) -> bool:
    """Prepare ``out_dir`` for a stage run; True when it already holds this exact run.

    A folder holding a finished or unfinished run of *different* settings is refused (so
    results are never mixed), unless ``force``, which clears it. An unfinished run of the
    same settings is left in place for the stage to resume. The folder stays locked against
    other processes until ``write_manifest`` or ``abandon_stage``.
    """
    out_dir = Path(out_dir)
    _lock(out_dir)
    fp = fingerprint(settings)
    man, running = out_dir / MANIFEST, out_dir / RUNNING
    old = None
    if man.exists():
        same = read_json(man).get("fingerprint") == fp
        if same and all((out_dir / o).exists() for o in outputs):
            release_stage(out_dir)
            return True
        old = None if same else "a finished run"
    elif running.exists() and read_json(running).get("fingerprint") != fp:
        old = "an unfinished run"
    if old and not force:
        release_stage(out_dir)
        raise UserError(f"{out_dir} already holds {old} with different settings; "
                        "choose another --out or pass --force to replace it")
    if old:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(running, {"fingerprint": fp, "settings": settings})
    return False


def abandon_stage(out_dir: str | Path) -> None:
    """Undo ``begin_stage`` after a refused run: a folder holding only its marker is removed,
    so a failed stage leaves nothing that looks like output and never blocks the rerun."""
    out_dir = Path(out_dir)
    (out_dir / RUNNING).unlink(missing_ok=True)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    release_stage(out_dir)


def write_manifest(out_dir: str | Path, stage: str, settings: dict, **extra: Any) -> None:
    write_json(
        Path(out_dir) / MANIFEST,
        {
            "stage": stage,
            "fingerprint": fingerprint(settings),
            "settings": settings,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "environment": environment(),
            **extra,
        },
    )
    (Path(out_dir) / RUNNING).unlink(missing_ok=True)
    release_stage(out_dir)
