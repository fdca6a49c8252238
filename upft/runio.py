"""Files: JSONL and JSON read strictly (errors name file and line), written atomically (a
temporary name, then a rename, so a crash never leaves a file that looks finished), and
resumable appends for long jobs."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from upft.errors import UserError


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


def write_png(path: str | Path, fig) -> Path:
    """Save a matplotlib figure atomically (temp file + rename), as the other writers do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=150, format="png", bbox_inches="tight")
    os.replace(tmp, path)
    return path


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
