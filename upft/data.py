"""Question sources: local JSONL/JSON/Parquet files, hub datasets, and the benchmarks.

Benchmarks load from their hub datasets by default; with ``data_dir`` they load from a local
mirror laid out like ``../shared/data`` (``gsm8k/test.jsonl``, ``math500/test.jsonl``, ...),
so the same command runs offline.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from upft.errors import UserError
from upft.runio import read_jsonl


@dataclass
class Question:
    id: str
    text: str
    answer: str | None = None  # gold answer (GSM8K: the part after '####')
    extra: dict = field(default_factory=dict)  # benchmark-specific (e.g. GPQA choices)


def gold_from_solution(answer: str) -> str:
    """GSM8K stores a worked solution ending in '#### N'; the gold is N."""
    return answer.split("####")[-1].strip() if "####" in answer else answer.strip()


def read_rows(source: str, split: str = "train", config: str | None = None) -> Iterable[dict]:
    """Rows of a local .jsonl/.json/.parquet/.csv file (a list), or of a hub dataset split, streamed:
    a large set (OpenMathInstruct-2 has 14M rows) is read only as far as the questions wanted."""
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return read_jsonl(path)
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON (line {e.lineno})") from None
            data = data.get("data") if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise UserError(f"{path}: a .json question file holds a list of rows (or {{\"data\": [...]}})")
            return data
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
        return datasets.load_dataset(source, config, split=split, streaming=True)
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
    unique: bool = False,
) -> list[Question]:
    """Questions from a file or hub dataset with configurable field names. ``unique``: keep the
    first row of each distinct question (OpenMathInstruct-2 holds several solutions per problem)."""
    return questions_from_rows(read_rows(source, split, config), source, question_field, answer_field, id_field,
                               limit, unique)


@dataclass(frozen=True)
class QuestionSource:
    """Where training questions come from and how their rows are read: the sampling command's
    flags (``--questions`` for ``source``) and the keys of a config's ``questions:`` section."""

    source: str  # a .jsonl/.json/.parquet/.csv file or a hub dataset id
    question_field: str = "question"
    answer_field: str | None = field(default=None, metadata={
        "help": "reference answers, kept for RFT / Label Filter (optional)"})
    id_field: str | None = field(default=None, metadata={"help": "question id field (default: row index)"})
    split: str = "train"
    config: str | None = field(default=None, metadata={"help": "hub dataset config name"})
    limit: int | None = field(default=None, metadata={"help": "the first N questions (with --unique, N distinct ones)"})
    unique: bool = field(default=False, metadata={
        "help": "keep the first row of each distinct question (OpenMathInstruct-2 repeats each problem)"})

    def load(self) -> list[Question]:
        return load_questions(self.source, self.question_field, self.answer_field, self.id_field, self.split,
                              self.config, self.limit, self.unique)


def questions_from_rows(rows: Iterable[dict], source: str, question_field: str, answer_field: str | None,
                        id_field: str | None, limit: int | None = None, unique: bool = False) -> list[Question]:
    """Check the fields of loaded rows and turn them into Questions (ids must be unique). Rows are
    read only until ``limit`` questions are found; with ``unique`` the limit counts distinct ones."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    out, seen, repeated = [], set(), 0
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{source}: row {i + 1} is not an object")
        for key in (question_field, answer_field, id_field):
            if key and key not in row:
                raise UserError(f"{source}: row {i + 1} has no field '{key}' (fields: {', '.join(row)})")
        if not isinstance(row[question_field], str) or not row[question_field].strip():
            raise UserError(f"{source}: row {i + 1}: '{question_field}' is not a non-empty string "
                            f"(got {row[question_field]!r:.40})")
        if unique:
            if row[question_field] in seen:
                repeated += 1
                continue
            seen.add(row[question_field])
        answer = gold_from_solution(str(row[answer_field])) if answer_field else None
        qid = str(row[id_field]) if id_field else str(i)
        out.append(Question(qid, row[question_field], answer))
        if len(out) == limit:
            break
    if not out:
        raise UserError(f"{source}: no questions")
    if repeated:
        print(f"[questions] {source}: {repeated} rows repeat an earlier question and were left out", file=sys.stderr)
    if len({q.id for q in out}) != len(out):
        raise UserError(f"{source}: question ids are not unique (field {id_field or 'row index'})")
    return out


@dataclass(frozen=True)
class Benchmark:
    hub_id: str | None  # None: no hub dataset exists, only a local file
    config: str | None
    split: str
    local_file: str  # path inside a mirror folder laid out like ../shared/data
    question_field: str
    answer_field: str
    id_field: str | None
    # how answers are graded: "math" (math-verify), "choice" (a letter A-D), or "open"
    # (free-form; an LLM judge OR math-verify, as the paper graded its open-ended GPQA)
    kind: str = "math"


BENCHMARKS = {
    "gsm8k": Benchmark("openai/gsm8k", "main", "test", "gsm8k/test.jsonl", "question", "answer", None),
    "math500": Benchmark("HuggingFaceH4/MATH-500", None, "test", "math500/test.jsonl", "problem", "answer", "unique_id"),
    "aime24": Benchmark("HuggingFaceH4/aime_2024", None, "train", "aime24/train.jsonl", "problem", "answer", "id"),
    "gpqa_diamond": Benchmark("Idavidrein/gpqa", "gpqa_diamond", "train", "gpqa/gpqa_diamond.csv", "Question",
                              "Correct Answer", "Record ID", "choice"),
    # The UPFT authors' open-answer GPQA-Diamond (no options); it is not on the hub.
    "gpqa_open": Benchmark(None, None, "test", "gpqa/diamond_open_answer.jsonl", "question", "answer", None, "open"),
}
CHOICE_INSTRUCTION = "Answer with the letter (A, B, C or D) of the correct option."
_WRONG_FIELDS = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def with_choices(q: Question, wrong: list[str], shuffle_seed: int) -> Question:
    """A GPQA question with its four options shuffled deterministically per question.

    The order depends only on (shuffle_seed, question id), so every model and every rerun sees
    the same options; ``permutation[i]`` says which original option is shown as letter i
    (0 = the correct answer), and the gold becomes that letter.
    """
    import random

    from upft.draws import request_seed

    options = [q.answer.strip()] + [w.strip() for w in wrong]
    perm = random.Random(request_seed(shuffle_seed, "choices", q.id)).sample(range(4), 4)
    shown = "\n".join(f"{'ABCD'[i]}) {options[j]}" for i, j in enumerate(perm))
    text = f"{q.text.strip()}\n\n{shown}\n\n{CHOICE_INSTRUCTION}"
    extra = {"options": [options[j] for j in perm], "permutation": perm}
    return Question(q.id, text, "ABCD"[perm.index(0)], extra)


def load_benchmark(name: str, data_dir: str | None = None, limit: int | None = None,
                   shuffle_seed: int = 0) -> list[Question]:
    """A benchmark's questions from the hub, or from a local mirror folder when ``data_dir`` is set."""
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark '{name}' (known: {', '.join(BENCHMARKS)})")
    b = BENCHMARKS[name]
    if data_dir:
        source = str(Path(data_dir) / b.local_file)
        if not Path(source).is_file():
            raise UserError(f"mirror folder {data_dir} has no {b.local_file} (needed for {name})")
    elif b.hub_id is None:
        raise UserError(f"{name} has no hub dataset; pass --data-dir with a folder holding {b.local_file}")
    else:
        source = b.hub_id
    rows = list(read_rows(source, b.split, b.config))  # small sets: the options are read by row below
    questions = questions_from_rows(rows, source, b.question_field, b.answer_field, b.id_field, limit)
    if b.kind != "choice":
        return questions
    for key in _WRONG_FIELDS:
        if key not in rows[0]:
            raise UserError(f"{source}: no field '{key}' (a GPQA file has Incorrect Answer 1-3)")
    return [with_choices(q, [row[k] for k in _WRONG_FIELDS], shuffle_seed) for q, row in zip(questions, rows)]
