"""RFT and Label Filter on a real tokenizer and real math-verify grading: picks, drops, loss ids."""

from __future__ import annotations

import json

import pytest

from conftest import MODEL, run_cli
from upft.builders import build_label_filter, build_rft, build_sft, pick_correct, stats
from upft.models import end_of_turn_id
from upft.prompts import UPFT_SUFFIX
from upft.runio import write_json, write_jsonl
from upft.stages import grade_samples

from test_prefix import fake_sample

# question id -> (gold, responses of its 4 draws); question 2 has no correct draw
POOL = {
    "0": ("17", ["3 * 4 = 12, 12 + 5 = 17. \\boxed{17}", "So \\boxed{16}", "It is \\boxed{17}.", "\\boxed{15}"]),
    "1": ("9", ["2x = 18 so x = 9. The answer is \\boxed{9}", "\\boxed{8}", "\\boxed{10}", "\\boxed{11}"]),
    "2": ("250", ["\\boxed{200}", "\\boxed{2500}", "no idea", "\\boxed{25}"]),
}


def pool(tok) -> list[dict]:
    out = []
    for qid, (gold, texts) in POOL.items():
        for k, text in enumerate(texts):
            s = fake_sample(tok, int(qid), text, "full")
            out.append({**s, "sample_index": k, "answer": gold})
    return out


def test_grading_the_pool_uses_the_reference_answers(tok):
    correct = grade_samples(pool(tok))
    assert correct == [True, False, True, False, True, False, False, False, False, False, False, False]


def test_rft_keeps_one_correct_draw_per_question_in_full_and_drops_the_rest(tok):
    samples, eot = pool(tok), end_of_turn_id(tok)
    correct = grade_samples(samples)
    rows, dropped = build_rft(samples, correct, tok, eot, seed=0)
    assert dropped == 1 and sorted(r["id"] for r in rows) == ["0", "1"]
    for r in rows:
        src = next(s for s, ok in zip(samples, correct) if ok and (s["id"], s["sample_index"]) == (r["id"], r["sample_index"]))
        assert r["kind"] == "full" and r["target_ids"] == src["response_ids"] + [eot]
    st = stats("rft", samples, rows, dropped)
    assert st["sampling_tokens"] == sum(s["n_tokens"] for s in samples)  # the whole pool was decoded
    assert st["tuning_tokens"] == sum(len(r["target_ids"]) for r in rows)


def test_pick_is_seeded_and_uses_every_correct_draw():
    samples = [{"id": str(q), "sample_index": k} for q in range(50) for k in range(4)]
    correct = [k in (0, 2) for q in range(50) for k in range(4)]
    a, b = pick_correct(samples, correct, 0), pick_correct(list(reversed(samples)), list(reversed(correct)), 0)
    assert a == b  # deterministic and independent of file order
    assert {s["sample_index"] for s in a} == {0, 2}
    assert a != pick_correct(samples, correct, 1)


@pytest.mark.parametrize("p, kinds", [(0.0, {"prefix"}), (1.0, {"full"})])
def test_label_filter_cuts_prefixes_of_correct_draws_only(tok, p, kinds):
    samples, eot = pool(tok), end_of_turn_id(tok)
    correct = grade_samples(samples)
    rows, dropped = build_label_filter(samples, correct, tok, eot, L=4, p=p, seed=0)
    assert dropped == 1 and {r["kind"] for r in rows} == kinds
    good = {(s["id"], s["sample_index"]): s for s, ok in zip(samples, correct) if ok}
    for r in rows:
        src = good[(r["id"], r["sample_index"])]
        if r["kind"] == "prefix":
            assert r["target_ids"] == src["response_ids"][:4] + [eot]
            assert r["prompt"][-1]["content"].endswith(UPFT_SUFFIX)
        else:
            assert r["target_ids"] == src["response_ids"] + [eot]


def test_sft_takes_the_first_draw_of_each_question(tok):
    rows, _ = build_sft(pool(tok), tok, end_of_turn_id(tok))
    assert [(r["id"], r["sample_index"]) for r in rows] == [("0", 0), ("1", 0), ("2", 0)]


def test_prep_cli_rft_end_to_end_and_without_answers(tok, tmp_path, model_path):
    samples = pool(tok)
    (tmp_path / "s").mkdir()
    write_jsonl(tmp_path / "s" / "samples.jsonl", samples)
    r = run_cli("data_prep/build.py", "--samples", str(tmp_path / "s"), "--method", "rft", "--model", MODEL,
                "--out", str(tmp_path / "rft"))
    assert r.returncode == 0, r.stderr
    st = json.loads((tmp_path / "rft" / "stats.json").read_text())
    assert (st["n_rows"], st["n_dropped"], st["n_correct_samples"], st["n_questions_without_correct"]) == (2, 1, 3, 1)

    write_jsonl(tmp_path / "s" / "samples.jsonl", [{**s, "answer": None} for s in samples])
    write_json(tmp_path / "s" / "manifest.json", {"settings": {"model": model_path}})
    r = run_cli("data_prep/build.py", "--samples", str(tmp_path / "s"), "--method", "rft", "--out",
                str(tmp_path / "rft2"))
    assert r.returncode == 2 and r.stderr.strip() == "error: rft needs reference answers: sample with --answer-field set"
    assert not (tmp_path / "rft2").exists()


def test_prm12k_is_math_minus_math500_with_boxed_answers(tmp_path):
    """The PRM-12K builder on a fixture: MATH-500 problems are left out (whitespace aside), answers
    are the last boxed value of each solution, a problem without one is skipped and counted."""
    from upft.runio import read_jsonl

    math500 = tmp_path / "math500.jsonl"
    math500.write_text("".join(json.dumps({"problem": f"Held {k}?", "answer": str(k)}) + "\n" for k in range(500)))
    math = tmp_path / "math.jsonl"
    rows = [{"problem": "What is 1+1?", "solution": "It is $\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
            {"problem": "Held  7?", "solution": "\\boxed{7}"},  # in MATH-500 (extra space): left out
            {"problem": "Half of 1?", "solution": "First \\boxed{1}, then \\boxed{\\frac{1}{2}}."},
            {"problem": "No box?", "solution": "The answer is 3."}]
    math.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prm12k.jsonl"
    r = run_cli("data_prep/build_prm12k.py", "--math", str(math), "--math500", str(math500), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "(1 of MATH-500 left out, 1 without a boxed answer skipped)" in r.stderr
    got = read_jsonl(out)
    assert [(g["problem"], g["answer"]) for g in got] == [("What is 1+1?", "2"), ("Half of 1?", "\\frac{1}{2}")]
    assert got[0]["level"] == "Level 1"
    nosol = tmp_path / "nosol.jsonl"
    nosol.write_text(json.dumps({"problem": "New?"}) + "\n")
    for source, message in ((math500, "no problem left once MATH-500 is taken out"), (nosol, "rows need a 'solution'")):
        r = run_cli("data_prep/build_prm12k.py", "--math", str(source), "--math500", str(math500), "--out",
                    str(tmp_path / "x.jsonl"))
        assert r.returncode == 2 and message in r.stderr and not (tmp_path / "x.jsonl").exists()
