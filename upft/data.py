"""Question sources: local JSONL/JSON/Parquet files, hub datasets, and the benchmarks.

Benchmarks load from their hub datasets by default; with ``data_dir`` they load from a local
mirror laid out like ``../shared/data`` (``gsm8k/test.jsonl``, ``math500/test.jsonl``, ...),
so the same command runs offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from upft.runio import UserError, read_jsonl


@dataclass
class Question:
    id: str
    text: str
    answer: str | None = None  # gold answer (GSM8K: the part after '####')
    extra: dict = field(default_factory=dict)  # benchmark-specific (e.g. GPQA choices)


def gold_from_solution(answer: str) -> str:
    """GSM8K stores a worked solution ending in '#### N'; the gold is N."""
    return answer.split("####")[-1].strip() if "####" in answer else answer.strip()


def read_rows(source: str, split: str = "train", config: str | None = None) -> list[dict]:
    """Rows of a local .jsonl/.json/.parquet/.csv file, or of a hub dataset split."""
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return read_jsonl(path)
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, list) else data.get("data", [])
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            import csv

            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        raise UserError(f"{path}: unsupported file type {suffix} (use .jsonl, .json, .parquet or .csv)")
    if path.suffix or source.startswith((".", "/", "~")) or not ("/" in source):
        raise UserError(f"question file not found: {source}")
    import datasets

    try:
        return list(datasets.load_dataset(source, config, split=split))
    except Exception as e:  # hub errors are many and library-specific; report them in one line
        raise UserError(f"could not load hub dataset {source} ({config}, {split}): {e}") from None


def load_questions(
    source: str,
    question_field: str = "question",
    answer_field: str | None = None,
    id_field: str | None = None,
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
) -> list[Question]:
    """Questions from a file or hub dataset with configurable field names."""
    rows = read_rows(source, split, config)
    if not rows:
        raise UserError(f"{source}: no questions")
    rows = rows[:limit] if limit else rows
    out = []
    for i, row in enumerate(rows):
        for key in (question_field, answer_field, id_field):
            if key and key not in row:
                raise UserError(f"{source}: row {i + 1} has no field '{key}' (fields: {', '.join(row)})")
        answer = gold_from_solution(str(row[answer_field])) if answer_field else None
        qid = str(row[id_field]) if id_field else str(i)
        out.append(Question(qid, str(row[question_field]), answer))
    if len({q.id for q in out}) != len(out):
        raise UserError(f"{source}: question ids are not unique (field {id_field or 'row index'})")
    return out


@dataclass(frozen=True)
class Benchmark:
    hub_id: str
    config: str | None
    split: str
    local_file: str  # path inside a mirror folder laid out like ../shared/data
    question_field: str
    answer_field: str
    id_field: str | None
    kind: str = "math"  # how answers are graded: "math" or "choice"


BENCHMARKS = {
    "gsm8k": Benchmark("openai/gsm8k", "main", "test", "gsm8k/test.jsonl", "question", "answer", None),
    "math500": Benchmark("HuggingFaceH4/MATH-500", None, "test", "math500/test.jsonl", "problem", "answer", "unique_id"),
    "aime24": Benchmark("HuggingFaceH4/aime_2024", None, "train", "aime24/train.jsonl", "problem", "answer", "id"),
}


def load_benchmark(name: str, data_dir: str | None = None, limit: int | None = None) -> list[Question]:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark '{name}' (known: {', '.join(BENCHMARKS)})")
    b = BENCHMARKS[name]
    source = b.hub_id
    if data_dir:
        source = str(Path(data_dir) / b.local_file)
        if not Path(source).is_file():
            raise UserError(f"mirror folder {data_dir} has no {b.local_file} (needed for {name})")
    return load_questions(source, b.question_field, b.answer_field, b.id_field, b.split, b.config, limit)
