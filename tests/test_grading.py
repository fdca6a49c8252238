"""Grading against real math-verify: pins the response styles that used to be mis-graded."""

from __future__ import annotations

import time
from typing import Any

import pytest

from upft.grading import Grader, grade_choice, grade_item, grade_math


@pytest.mark.parametrize(
    ("response", "gold", "pred"),
    [
        # math-verify alone extracts '73**' (Math-Verify#76).
        ("The answer is **73**.", "73", "73"),
        (r"So the total is \boxed{9{,}500}.", "9500", "9500"),
        ("The answer is 1,000 dollars.", "1000", "1000"),
        (r"\boxed{1,234,567}", "1,234,567", "1234567"),
        # A thin space as thousands separator: math-verify alone reads 1\,000 as 1*000 = 0.
        (r"\boxed{1\,000}", "1000", "1000"),
        # An escaped dollar outside math mode: math-verify alone extracts nothing.
        (r"The answer: she pays \$1,250 in total.", "1250", "1250"),
    ],
)
def test_normalised_pitfalls(response: str, gold: str, pred: str) -> None:
    assert grade_math(response, gold) == {"correct": True, "pred": pred}


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{10\text{ cm}}", "10"),
        # math-verify compares percentages both ways without help: 50\% matches 50 and 50\%.
        (r"\boxed{50\%}", "50"),
        (r"\boxed{50\%}", r"50\%"),
        (r"\boxed{50}", r"50\%"),
        (r"\boxed{30^\circ}", "30"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{[-2, 7]}", "[-2,7]"),
        (r"\boxed{\pm 2}", r"\pm 2"),
        (r"\boxed{\text{(C)}}", r"\text{(C)}"),
        (r"First \boxed{840}. Checking again: \boxed{840}", "840"),
        # verify() is asymmetric: an interval answer matches an inequality gold...
        (r"\boxed{(-2,7)}", "-2<x<7"),
    ],
)
def test_correct(response: str, gold: str) -> None:
    assert grade_math(response, gold)["correct"] is True


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{\frac{1}{3}}", "0.5"),
        (r"\boxed{[-2, 7]}", "(-2,7)"),
        # A tuple must not be fused into a thousands-separated number.
        (r"\boxed{(1,2)}", "12"),
        (r"\boxed{(100,200)}", "100200"),
        # ...but an inequality answer does not match an interval gold.
        (r"\boxed{-2 < x < 7}", "(-2,7)"),
    ],
)
def test_wrong(response: str, gold: str) -> None:
    assert grade_math(response, gold)["correct"] is False


@pytest.mark.parametrize("tuple_", ["(1,2)", "(5,100,200)"])
def test_tuple_is_not_fused(tuple_: str) -> None:
    assert grade_math(rf"\boxed{{{tuple_}}}", tuple_) == {"correct": True, "pred": tuple_}


def test_no_answer() -> None:
    assert grade_math("I don't know.", "5") == {"correct": False, "pred": None}


def test_the_last_of_several_final_answers_counts() -> None:
    # math-verify alone joins all boxed answers into one set, so a corrected response matched neither
    response = r"It is \boxed{5}. Wait, no: \boxed{7}"
    assert grade_math(response, "7") == {"correct": True, "pred": "7"}
    assert grade_math(response, "5") == {"correct": False, "pred": "7"}
    assert grade_math(r"So \boxed{\frac{1}{2}}, and the total is \boxed{18}", "18")["correct"] is True


@pytest.mark.parametrize("response", [
    "She pays 3 * 6 = 18",  # never states a final answer
    "Then 12 + 6 = 18 and then we subtract the",  # cut off mid-sentence
    "The total is $18$ so far, and next",
])
def test_a_response_without_a_final_answer_is_wrong_even_if_its_last_number_is_the_gold(response: str) -> None:
    assert grade_math(response, "18") == {"correct": False, "pred": None}


@pytest.mark.parametrize("response", [
    r"\boxed{\text{18 dollars}}", "#### 18", "18", "$18$.", "The answer is 18 apples.", "Answer: **18**",
])
def test_stated_final_answers_are_read(response: str) -> None:
    assert grade_math(response, "18") == {"correct": True, "pred": "18"}


def test_unparseable_gold_raises() -> None:
    with pytest.raises(ValueError, match="gold"):
        grade_math(r"\boxed{1}", "")


@pytest.mark.parametrize(
    ("response", "gold", "pred"),
    [
        ("Let me think.\nAnswer: C", "C", "C"),
        ("The answer is (B).", "B", "B"),
        ("so the answer: d", "D", "D"),
        (r"Hence $\boxed{A}$.", "A", "A"),
        ("Option A looks tempting, but it ignores friction.\nAnswer: D", "D", "D"),
        ("Answer: A\nOn reflection that is wrong.\nAnswer: **B**", "B", "B"),
        ("(C)", "C", "C"),
        ("Comparing all four, the correct option is B.", "B", "B"),
        ("The measured ratio corresponds to D.", "D", "D"),
        ("Both A and B fail the unit check, which leaves (C)", "C", "C"),
        ("Answer: A\nLooking again, the correct choice is (D).", "D", "D"),
        ("The answer is a bit unclear to me.", "A", None),
        ("I cannot decide between the options.", "A", None),
    ],
)
def test_choice(response: str, gold: str, pred: str | None) -> None:
    assert grade_choice(response, gold) == {"correct": pred == gold, "pred": pred}


def test_choice_rejects_bad_gold() -> None:
    with pytest.raises(ValueError):
        grade_choice("Answer: A", "E")


def sleepy_grade(kind: str, response: str, gold: str) -> dict[str, Any]:
    """grade_item, except that kind "hang" never finishes in time."""
    if kind == "hang":
        time.sleep(60)
    return grade_item(kind, response, gold)


def test_grader_keeps_order_and_records_errors() -> None:
    items = [
        ("math", r"\boxed{2}", "2"),
        ("choice", "Answer: B", "C"),
        ("math", "The answer is **73**.", "73"),
        ("essay", "words", "words"),
        ("choice", "Answer: C", "C"),
    ]
    with Grader() as grader:
        results = grader.grade(items)
    assert [r["correct"] for r in results] == [True, False, True, False, True]
    assert [r["pred"] for r in results] == ["2", "B", "73", None, "C"]
    assert results[3]["error"].startswith("ValueError(")


def test_grader_times_out_hanging_item_and_continues() -> None:
    items = [
        ("math", r"\boxed{2}", "2"),
        ("hang", "", ""),
        ("math", r"\boxed{3}", "4"),
        ("hang", "", ""),
        ("choice", "Answer: A", "A"),
    ]
    with Grader(grade_fn=sleepy_grade) as grader:
        assert grader.grade(items[:1]) == [{"correct": True, "pred": "2"}]  # waits for the pool's start
        started = grader.pool_s
        start = time.monotonic()
        results = grader.grade(items, timeout_s=2.0)
        elapsed = time.monotonic() - start
        during = grader.pool_s  # the two replaced pools are grading time, not the context's start or stop
    timeout = {"correct": False, "pred": None, "error": "timeout"}
    assert results == [
        {"correct": True, "pred": "2"},
        timeout,
        {"correct": False, "pred": "3"},
        timeout,
        {"correct": True, "pred": "A"},
    ]
    assert elapsed < 15
    assert during == started and grader.pool_s > started  # + the last stop


class SlowStart:
    """A multiprocessing context whose pools take ``delay_s`` to start, as on a busy GPU host where
    the fork server first imports the evaluation script's torch (lease 12: 3.0-3.4 s)."""

    def __init__(self, ctx, delay_s: float) -> None:
        self.ctx, self.delay_s, self.pools = ctx, delay_s, []

    def Pool(self, workers: int):  # noqa: N802  (multiprocessing's name)
        time.sleep(self.delay_s)
        self.pools.append(self.ctx.Pool(workers))
        return self.pools[-1]


def test_grader_pool_starts_beside_the_caller_and_is_stopped_even_unused() -> None:
    """Entering does not wait for the pool (decoding goes on meanwhile); the first grade does, and
    that wait is the pool time. A grader left without grading does not wait for its pool's start,
    and the pool is stopped once it has started."""
    from multiprocessing.pool import TERMINATE

    for graded in (True, False):
        grader = Grader()
        grader._ctx = slow = SlowStart(grader._ctx, delay_s=1.0)
        t0 = time.monotonic()
        with grader:
            assert time.monotonic() - t0 < 0.5 and grader.pool_s == 0.0
            if graded:
                assert grader.grade([("math", r"\boxed{5}", "5")]) == [{"correct": True, "pred": "5"}]
                assert 0.5 < grader.pool_s < 30  # the start, waited for
        elapsed = time.monotonic() - t0
        assert grader.pool_s <= elapsed and (graded or elapsed < 0.5)  # each wait counted once
        for _ in range(300):  # the unused pool is stopped by the thread that started it
            if [p._state for p in slow.pools] == [TERMINATE]:
                break
            time.sleep(0.1)
        assert [p._state for p in slow.pools] == [TERMINATE]


class BrokenStart:
    """A multiprocessing context whose pools fail to start."""

    def Pool(self, workers: int):  # noqa: N802
        raise OSError("no processes left")


def test_grader_pool_start_failure_is_raised_but_never_hides_the_callers_error() -> None:
    grader = Grader()
    grader._ctx = BrokenStart()
    with pytest.raises(OSError, match="no processes left"):
        with grader:
            grader.grade([("math", r"\boxed{5}", "5")])
    grader = Grader()
    grader._ctx = BrokenStart()
    with pytest.raises(KeyError, match="the caller's"):
        with grader:
            raise KeyError("the caller's")
    grader = Grader()
    grader._ctx = BrokenStart()
    with grader:  # a failed start where nothing needed the pool is no error
        pass


def test_wilson_interval_on_a_small_benchmark() -> None:
    """1 of 30 right (AIME): Wald gives 0.0-9.8 (its lower end clipped); Wilson 0.6-16.7."""
    from upft.evaluate import summarise, wilson

    lo, hi = wilson(1 / 30, 30)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (0.6, 16.7)
    assert wilson(0.0, 30)[1] > 0.1 and wilson(1.0, 30)[0] < 0.9  # never a zero-width interval
    rows = [{"id": str(i), "correct": i == 0, "n_tokens": 5, "finish_reason": "stop"} for i in range(30)]
    assert summarise(rows, 1)["ci95"] == pytest.approx([100 * lo, 100 * hi])
