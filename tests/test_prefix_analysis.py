"""The prefix analysis (issue 15): its measures on hand-made traces with known answers, the
suggested L, the command on a fixture pool and on the real embedded model, and its bad input."""

from __future__ import annotations

import json
import math

import pytest

from upft.commands.prefix_analysis import main
from upft.errors import UserError
from upft.prefixes import measures, suggest_L

# q1: four traces; three start 1 2 3, one 9 9 9; the three right, the odd one wrong
# q2: two traces sharing 5 6 but parting at token 3; one right, one wrong
TRACES = {
    "q1": [((1, 2, 3, 4), True), ((1, 2, 3, 5), True), ((1, 2, 3, 4, 7), True), ((9, 9, 9), False)],
    "q2": [((5, 6, 1), True), ((5, 6, 2), False)],
}


def test_measures_on_known_traces():
    m2 = measures(TRACES, 2)
    assert m2["coverage"] == pytest.approx((3 / 4 + 2 / 2) / 2)
    assert m2["distinct_prefixes"] == pytest.approx((2 + 1) / 2)
    h1 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert m2["entropy_bits"] == pytest.approx((h1 + 0) / 2)
    assert m2["majority_share"] == pytest.approx((0.75 + 1.0) / 2)
    assert m2["questions_majority_half"] == 1.0
    assert m2["mixed_share"] == 0.5  # q2's right and wrong trace share "5 6"
    assert m2["accuracy_majority_prefix"] == pytest.approx(100 * 4 / 5)  # 3 of q1 + 1 of q2's 2
    assert m2["accuracy_other_prefixes"] == 0.0
    m3 = measures(TRACES, 3)
    assert m3["coverage"] == pytest.approx((3 / 4 + 0) / 2)  # q2's traces differ at token 3
    assert m3["mixed_share"] == 0.0 and m3["questions_majority_half"] == 1.0  # 1 of 2 is half
    m4 = measures(TRACES, 4)
    assert m4["coverage"] == pytest.approx((2 / 4 + 0) / 2)  # 1 2 3 4 twice in q1


def test_measures_need_two_traces():
    with pytest.raises(ValueError):
        measures({"q": [((1,), True)]}, 2)


def test_suggest_L_is_the_longest_above_threshold():
    rows = [{"L": 4, "questions_majority_half": 0.9}, {"L": 16, "questions_majority_half": 0.6},
            {"L": 8, "questions_majority_half": 0.7}, {"L": 32, "questions_majority_half": 0.3}]
    L, why = suggest_L(rows, 0.5)
    assert L == 16 and "60%" in why and "L=32" in why
    L, why = suggest_L(rows, 0.95)
    assert L == 4 and "premise is weak" in why


def _pool(tmp_path, traces=TRACES):
    rows = []
    for qid, tr in traces.items():
        for i, (ids, ok) in enumerate(tr):
            rows.append({"id": qid, "sample_index": i, "draw": "full", "answer": "7",
                         "response": "The answer is \\boxed{7}." if ok else "The answer is \\boxed{8}.",
                         "response_ids": list(ids)})
    p = tmp_path / "pool" / "samples.jsonl"
    p.parent.mkdir()
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_command_on_a_pool_grades_and_writes(tmp_path):
    out = tmp_path / "out"
    main(["--samples", str(_pool(tmp_path).parent), "--L", "2,3,4", "--out", str(out)])
    a = json.loads((out / "analysis.json").read_text())
    assert a["k"] == 4 and a["n_questions"] == 2 and a["accuracy"] == pytest.approx(100 * 4 / 6)  # graded
    assert [r["L"] for r in a["by_L"]] == [2, 3, 4] and a["suggested_L"] == 4
    assert a["by_L"][0]["mixed_share"] == 0.5  # correctness came from math-verify, not the fixture
    for f in ("coverage_vs_L.png", "accuracy_vs_L.png", "distinct_vs_L.png"):
        assert (out / "figs" / f).stat().st_size > 1000


@pytest.mark.parametrize("args, msg", [
    (["--L", "0,4"], "positive"), (["--L", "a"], "whole numbers"), (["--k", "1"], "at least 2"),
    (["--threshold", "0"], "threshold"), ([], "--samples"),
])
def test_bad_input(tmp_path, args, msg):
    with pytest.raises(UserError, match=msg):
        main([*args, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_upft_pool_is_refused(tmp_path):
    p = _pool(tmp_path)
    (p.parent / "manifest.json").write_text(json.dumps({"settings": {"mode": "upft"}}))
    with pytest.raises(UserError, match="prefixes"):
        main(["--samples", str(p), "--out", str(tmp_path / "o")])


def test_command_samples_the_real_model(tmp_path):
    out = tmp_path / "out"
    main(["--model", "smollm2-135m-instruct", "--questions", "tests/fixtures/mirror/gsm8k/test.jsonl",
          "--answer-field", "answer", "--limit", "2", "--k", "3", "--L", "1,4", "--max-new-tokens", "12",
          "--out", str(out)])
    a = json.loads((out / "analysis.json").read_text())
    assert a["k"] == 3 and a["n_questions"] == 2
    rows = [json.loads(x) for x in (out / "samples" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["response_ids"]) <= 12 for r in rows)
    assert a["by_L"][0]["distinct_prefixes"] <= a["by_L"][1]["distinct_prefixes"]  # longer prefixes split more
