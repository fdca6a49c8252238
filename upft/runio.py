"""Run I/O: JSONL files, atomic writes, stage manifests and the CLI error convention.

Every stage writes its outputs under a temporary name and renames them at the end, so a
crash never leaves a file that looks finished. A stage records the settings that produced
its outputs (a fingerprint) in ``manifest.json``; re-running with the same settings is a
no-op, and a folder that holds a different run is refused instead of silently mixed.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RUNNING = ".running.json"  # settings of a stage run in progress


_LOCKS: dict[Path, int] = {}  # stage folders this process is writing, and their lock files


class UserError(Exception):
    """Bad input or a refused operation: reported as one line, exit status 2."""


def cli(main: Callable[[list[str] | None], Any]) -> None:
    """Run an entry point; turn a UserError, or a path that cannot be used as asked, into one
    clear line on stderr and exit 2."""
    try:
        main(None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        # a path the user gave that cannot be written or read as asked (under a file, read-only)
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
        sys.exit(2)


def read_jsonl(path: str | Path, torn_tail_ok: bool = False) -> list[dict]:
    """Read a JSONL file of objects; a line that is not one is an error naming the file and line.

    ``torn_tail_ok``: a last line without its newline that does not parse is dropped (what a killed
    writer of our own ``.partial`` files leaves); everywhere else it is an error, never lost data.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if torn_tail_ok and i == len(lines) - 1:  # the text does not end in a newline
                break
            raise UserError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {i + 1} is not a JSON object")
        rows.append(row)
    return rows


def _dump(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write rows atomically (temp file + rename)."""
    write_text(path, "".join(_dump(r) for r in rows))


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


class JsonlAppender:
    """Append rows to ``<path>.partial`` with a flush per batch; ``finish`` renames it.

    A killed run leaves only the ``.partial`` file, which ``done_rows`` reads back so the
    next run continues where it stopped without duplicating or losing rows. The time spent
    appending is kept beside it (``<path>.partial.wall_s``), so ``prior_s`` tells a resumed
    run how long the killed ones worked and reported times cover the whole job.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.clock = self.path.with_name(self.path.name + ".partial.wall_s")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prior_s = 0.0
        if self.partial.exists() and self.clock.exists():
            try:
                self.prior_s = float(self.clock.read_text(encoding="utf-8"))
            except ValueError:  # torn by a kill mid-write: that run's time is lost, not the rows
                pass
        self._t0 = time.time()

    def done_rows(self) -> list[dict]:
        if not self.partial.exists():
            return []
        rows = read_jsonl(self.partial, torn_tail_ok=True)
        # rewrite without a torn tail so appends start on a clean line
        self.partial.write_text("".join(_dump(r) for r in rows), encoding="utf-8")
        return rows

    def append(self, rows: Iterable[dict]) -> None:
        with self.partial.open("a", encoding="utf-8") as f:
            f.write("".join(_dump(r) for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.clock.write_text(repr(self.prior_s + time.time() - self._t0), encoding="utf-8")

    def finish(self) -> None:
        os.replace(self.partial, self.path)
        self.clock.unlink(missing_ok=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(settings: dict) -> str:
    """A short stable hash of the settings that determine a stage's output."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
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


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@functools.cache
def yaml_loader():
    """PyYAML's safe loader, reading numbers in any notation as numbers: YAML 1.1 takes '1e-5'
    (no dot) for a string, so ``lr: 1e-5`` failed only after sampling and prep had run."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:\d[\d_]*)?\.?\d*[eE][-+]?\d+$"), list("-+0123456789."))
    return Loader


def load_yaml(text: str, where: str):
    """Parse YAML text; a syntax error is one line naming the file."""
    import yaml

    try:
        return yaml.load(text, Loader=yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None


def read_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config; ``defaults: file`` (or a list) merges shared files first, the file's own keys last."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config not found: {path}")
    if path.resolve() in _seen:
        raise UserError(f"{path}: 'defaults' loops back to itself ({' -> '.join(p.name for p in _seen)})")
    cfg = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: a config is a mapping of keys to values")
    parents = cfg.pop("defaults", [])
    if not isinstance(parents, (str, list)):
        raise UserError(f"{path}: 'defaults' is a file name or a list of them")
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _merge(merged, read_config(path.parent / str(parent), (*_seen, path.resolve())))
    return _merge(merged, cfg)


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
