"""Question sources and benchmarks: files of each format, field names, mirrors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA
from upft.data import load_benchmark, load_questions, questions_from_rows
from upft.errors import UserError

ROWS = [{"q": "What is 1 + 1?", "a": "1 + 1 = 2\n#### 2", "key": "x1"},
        {"q": "What is 2 + 3?", "a": "#### 5", "key": "x2"}]


def write(tmp_path, fmt: str):
    path = tmp_path / f"questions.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        path.write_text("q,a,key\n" + "".join(f'"{r["q"]}","{r["a"]}",{r["key"]}\n' for r in ROWS))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_every_file_format_with_custom_fields(tmp_path, fmt):
    qs = load_questions(str(write(tmp_path, fmt)), "q", "a", "key")
    assert [(q.id, q.text, q.answer) for q in qs] == [("x1", "What is 1 + 1?", "2"), ("x2", "What is 2 + 3?", "5")]


def test_missing_field_and_empty_file_are_clear_errors(tmp_path):
    path = write(tmp_path, "jsonl")
    with pytest.raises(UserError, match="no field 'question'"):
        load_questions(str(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="no questions"):
        load_questions(str(empty))
    with pytest.raises(UserError, match="not found"):
        load_questions(str(tmp_path / "nope.jsonl"))


def test_demo_questions_are_a_gsm8k_mirror_and_regenerate_identically(tmp_path):
    qs = load_benchmark("gsm8k", str(REPO / "data" / "demo"))
    assert len(qs) == 20 and all(q.answer.lstrip("-").isdigit() for q in qs)
    before = (REPO / "data/demo/gsm8k/train.jsonl").read_text()
    subprocess.run([sys.executable, str(REPO / "data/demo/make.py")], check=True)
    assert (REPO / "data/demo/gsm8k/train.jsonl").read_text() == before


def test_unknown_benchmark_and_incomplete_mirror(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark"):
        load_benchmark("gsm9k", str(tmp_path))
    with pytest.raises(UserError, match="has no math500/test.jsonl"):
        load_benchmark("math500", str(tmp_path))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data mirror not present")
def test_shared_mirror_benchmarks():
    gsm = load_benchmark("gsm8k", str(SHARED_DATA))
    assert len(gsm) == 1319 and gsm[0].answer == "18"
    math = load_benchmark("math500", str(SHARED_DATA))
    assert len(math) == 500 and len({q.id for q in math}) == 500
    assert len(load_benchmark("aime24", str(SHARED_DATA))) == 30
    gpqa = load_benchmark("gpqa_diamond", str(SHARED_DATA))
    assert len(gpqa) == 198 and len({q.id for q in gpqa}) == 198
    assert {q.answer for q in gpqa} == set("ABCD")  # the shuffle spreads the gold over the letters
    assert len(load_benchmark("gpqa_open", str(SHARED_DATA))) == 198


FIXTURE = str(REPO / "tests" / "fixtures" / "mirror")


def test_gpqa_options_are_shuffled_per_question_from_a_seed():
    qs = load_benchmark("gpqa_diamond", FIXTURE)
    assert [q.id for q in qs] == ["recFIX001", "recFIX002", "recFIX003"]
    for q in qs:
        perm, options = q.extra["permutation"], q.extra["options"]
        assert sorted(perm) == [0, 1, 2, 3]
        # the gold letter points at the correct answer, and the prompt shows the options in that order
        assert q.answer == "ABCD"[perm.index(0)]
        correct = {"recFIX001": "Nitrogen", "recFIX002": "Newton", "recFIX003": "Mitochondrion"}[q.id]
        assert options["ABCD".index(q.answer)] == correct  # stripped of the file's stray whitespace
        for letter, option in zip("ABCD", options):
            assert f"\n{letter}) {option}\n" in q.text
        assert q.text.endswith("Answer with the letter (A, B, C or D) of the correct option.")
    again = load_benchmark("gpqa_diamond", FIXTURE)
    assert [q.extra for q in again] == [q.extra for q in qs]  # deterministic across calls
    others = [load_benchmark("gpqa_diamond", FIXTURE, shuffle_seed=s) for s in range(1, 6)]
    assert any([q.extra for q in o] != [q.extra for q in qs] for o in others)  # the seed matters
    # the order of a question does not depend on which other questions are loaded
    assert load_benchmark("gpqa_diamond", FIXTURE, limit=1)[0].extra == qs[0].extra


def test_gpqa_bad_inputs(tmp_path):
    (tmp_path / "gpqa").mkdir()
    (tmp_path / "gpqa" / "gpqa_diamond.csv").write_text("Question,Correct Answer,Record ID\nq,a,r1\n")
    with pytest.raises(UserError, match="no field 'Incorrect Answer 1'"):
        load_benchmark("gpqa_diamond", str(tmp_path))
    with pytest.raises(UserError, match="gpqa_open has no hub dataset"):
        load_benchmark("gpqa_open")
    open_qs = load_benchmark("gpqa_open", FIXTURE)
    assert [q.answer for q in open_qs] == ["newton", "6"]


def test_dev_split_is_fixed_disjoint_and_evaluable(tmp_path):
    from conftest import run_cli

    src = str(REPO / "data/demo/gsm8k/train.jsonl")
    r = run_cli("data_prep/split_dev.py", "--questions", src, "--n-dev", "10", "--seed", "3", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    run_cli("data_prep/split_dev.py", "--questions", src, "--n-dev", "10", "--seed", "3", "--out", str(tmp_path / "b"))
    dev = load_benchmark("gsm8k", str(tmp_path / "a"))  # the dev split loads as the benchmark
    train = load_questions(str(tmp_path / "a" / "train.jsonl"), answer_field="answer")
    assert len(dev) == 10 and len(train) == 30
    assert not {q.text for q in dev} & {q.text for q in train}
    assert (tmp_path / "a" / "gsm8k" / "test.jsonl").read_text() == (tmp_path / "b" / "gsm8k" / "test.jsonl").read_text()
    r = run_cli("data_prep/split_dev.py", "--questions", src, "--n-dev", "40", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and r.stderr.startswith("error: --n-dev must be between 1 and 39")


def test_unique_questions_count_toward_the_limit_and_rows_are_read_only_as_far_as_needed(tmp_path):
    """OpenMathInstruct-2 style: several rows per problem. With unique, the limit counts distinct
    problems; rows are consumed lazily (a hub split is streamed), never read past the limit."""
    rows = [{"problem": p, "expected_answer": "1"} for p in ["a", "a", "b", "a", "c", "b", "d"]]

    def stream():
        yield from rows[:5]
        raise AssertionError("read past the third distinct question")

    qs = questions_from_rows(stream(), "omi2", "problem", "expected_answer", None, limit=3, unique=True)
    assert [(q.id, q.text) for q in qs] == [("0", "a"), ("2", "b"), ("4", "c")]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [q.text for q in load_questions(str(path), "problem", unique=True)] == ["a", "b", "c", "d"]
    assert len(load_questions(str(path), "problem")) == 7  # without unique every row is a question
