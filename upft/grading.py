"""Answer grading: math answers through math-verify, multiple choice through a regex.

math-verify does the hard part (LaTeX and plain-text extraction, symbolic comparison), but a
few response styles trip it, so ``grade_math`` rewrites them first (see ``_normalise``).

Grading can hang: sympy may spin on an unlucky expression, and math-verify's own timeouts
use ``signal.alarm``, which works only in a process's main thread. ``Grader`` therefore grades
in worker processes and kills any item that runs past a hard deadline, so one bad response
costs a few seconds instead of stalling a whole evaluation run.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from multiprocessing.pool import Pool
from types import TracebackType
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

GradeFn = Callable[[str, str, str], dict[str, Any]]

_GOLD_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]
# A response counts only with a stated final answer: a \boxed{} (outranking the rest), "answer
# is / Answer:", "final answer". The last number of a response that never states one (or was cut
# off mid-sentence) is not an answer, even when it equals the gold.
_PRED_CONFIG = [
    LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
    ExprExtractionConfig(try_extract_without_anchor=False),
]

# math-verify extracts '73**' from '**73**' (huggingface/Math-Verify#76).
_BOLD = re.compile(r"\*\*([^*\n]+?)\*\*")
# '\$1,000' outside math mode defeats extraction altogether; the currency sign carries no value.
_ESCAPED_DOLLAR = re.compile(r"\\\$")
# LaTeX thousands separators '9{,}500' and '1\,000'; math-verify reads the latter as 1*000 = 0.
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3}(?!\d))")
# Plain '1,000' and '1,234,567': a 1-3 digit group then strict 3-digit groups. A number that opens
# a bracket or follows 'digit,' is an element of a tuple or list ('(100,200)', '5,100,200'), not
# a thousands-separated number, so it is left alone.
_PLAIN_THOUSANDS = re.compile(r"(?<![\d.(\[])(?<!\d,)\d{1,3}(?:,\d{3})+(?!\d|,\d)")


# '\text{18 dollars}' holds a number in words math-verify does not read; the number is the answer.
_TEXT_NUMBER = re.compile(r"\\text\{\s*(-?\d[\d,.]*)\s*[^{}]*\}")
# GSM8K's own final-answer line: '#### 18'.
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
# A response that is nothing but a number ('72', '$72$.') states it as its answer.
_BARE_NUMBER = re.compile(r"\s*\$?\s*(-?\d[\d,.]*)\s*\$?\s*\.?\s*")


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every \\boxed{...} with balanced braces."""
    spans, i = [], text.find("\\boxed{")
    while i != -1:
        depth, j = 0, i + len("\\boxed")
        for j in range(j, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
        if depth:
            break  # unclosed: a response cut off inside its answer
        spans.append((i, j + 1))
        i = text.find("\\boxed{", j + 1)
    return spans


def last_boxed(text: str) -> str | None:
    """The content of the last complete \\boxed{...}, or None (how MATH solutions state their answer)."""
    spans = _boxed_spans(text)
    if not spans:
        return None
    start, end = spans[-1]
    return text[start + len("\\boxed{"):end - 1].strip()


def _final_statement(text: str) -> str:
    """Keep one final answer: the last \\boxed{} (earlier ones unwrapped to plain text: math-verify
    would join them all into one set), a '#### N' line read as the final answer, a bare number."""
    spans = _boxed_spans(text)
    for start, end in reversed(spans[:-1]):
        text = text[:start] + text[start + len("\\boxed{"):end - 1] + text[end:]
    if not spans:
        text = _HASHES.sub(r"The final answer is \1", text)
        bare = _BARE_NUMBER.fullmatch(text)
        if bare:
            text = f"The final answer is {bare[1]}"
    return text


def _normalise(text: str) -> str:
    """Rewrite the response styles that math-verify mis-extracts into ones it handles."""
    text = _BOLD.sub(r"\1", text)
    text = _ESCAPED_DOLLAR.sub("", text)
    text = _LATEX_THOUSANDS.sub("", text)
    return _PLAIN_THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)


def _parse_gold(gold: str) -> list:
    gold = _normalise(gold)
    # A bare gold ('72', '\frac{1}{2}') has no delimiters; wrapping it in '$' makes LaTeX extraction
    # take the whole string instead of hunting for an answer inside it.
    wrapped = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    return parse(wrapped, _GOLD_CONFIG)


def unparsable_golds(golds: Sequence[str | None]) -> list[int]:
    """Indexes of gold answers math-verify cannot read. Every response to such a question would be
    graded wrong, so callers refuse them up front (0% with exit 0 once hid a data bug)."""
    return [i for i, g in enumerate(golds) if g is None or not str(g).strip() or not _parse_gold(str(g))]


def grade_math(response: str, gold: str) -> dict[str, Any]:
    """Grade a free-form math response against a gold answer (a number or MATH-style LaTeX).

    Returns ``{"correct": bool, "pred": str | None}``; ``pred`` is the text math-verify extracted
    from the response, kept so that wrong answers can be inspected. Raises ValueError when the
    gold itself cannot be parsed: that is a data bug, and scoring it as wrong would hide it.
    """
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        raise ValueError(f"cannot parse gold answer {gold!r}")
    pred_parsed = parse(_final_statement(_TEXT_NUMBER.sub(r"\1", _normalise(response))), _PRED_CONFIG)
    # parse() returns [sympy value, extracted text], [text] if the text did not parse, or [].
    pred = str(pred_parsed[-1]) if pred_parsed else None
    # verify() is not symmetric: gold goes first.
    return {"correct": verify(gold_parsed, pred_parsed), "pred": pred}


# The final-answer statements a multiple-choice response ends with: '\boxed{C}', 'Answer: C',
# 'the answer is (B)', 'answer: **d**'. math-verify's StringExtractionConfig is not used because,
# next to the math configs, it grabs stray capital letters from the reasoning.
_DECOR = r"(?:\\(?:boxed|text|textbf|mathrm)\{|[\s*$(\[])*"
_CHOICE = re.compile(
    rf"\\boxed\{{{_DECOR}(?P<boxed>[A-Da-d])\b"
    rf"|\b(?i:answer)(?:\s+(?i:is))?\s*:?{_DECOR}(?:(?i:option)\s*{_DECOR})?"
    # An uppercase letter only needs to end the word; a lowercase one must end the statement,
    # so that 'the answer is a bit unclear' does not read as A.
    r"(?:(?P<upper>[A-D])\b|(?P<lower>[a-d])(?=[\s*$)\]}.]*$))",
    re.MULTILINE,
)
# Other usual final statements: 'the correct option is B', 'this corresponds to D', '... (C)' at the end.
_CHOICE_PHRASES = re.compile(
    rf"\b(?i:correct|right|best)\s+(?i:option|choice)\s+(?i:is)\s*:?{_DECOR}(?P<opt>[A-D])\b"
    rf"|\b(?i:corresponds?\s+to)\s*(?:(?i:option|choice)\s*)?{_DECOR}(?P<corr>[A-D])\b"
    r"|\((?P<paren>[A-D])\)[\s.!*]*\Z",
)
# A response that is nothing but the letter: 'C', '(C)', 'C.'.
_BARE_CHOICE = re.compile(r"\s*\(?([A-Da-d])[).]?\s*")


def grade_choice(response: str, gold_letter: str) -> dict[str, Any]:
    """Grade a multiple-choice (A-D) response by its last final-answer statement.

    The last statement wins because models that change their mind restate the answer at the end.
    Returns ``{"correct": bool, "pred": "A".."D" | None}``; raises ValueError for a gold that is
    not a single letter A-D, since every response would otherwise be scored wrong.
    """
    gold = gold_letter.strip().upper()
    if len(gold) != 1 or gold not in "ABCD":
        raise ValueError(f"gold must be one letter A-D, got {gold_letter!r}")
    found = [(m.end(), m["boxed"] or m["upper"] or m["lower"]) for m in _CHOICE.finditer(response)]
    found += [(m.end(), m["opt"] or m["corr"] or m["paren"]) for m in _CHOICE_PHRASES.finditer(response)]
    bare = _BARE_CHOICE.fullmatch(response)
    pred = None
    if found:
        pred = max(found)[1].upper()  # the last statement
    elif bare:
        pred = bare[1].upper()
    return {"correct": pred == gold, "pred": pred}


def grade_item(kind: str, response: str, gold: str) -> dict[str, Any]:
    """Grade one item of the given kind: "math" or "choice"."""
    if kind == "math":
        return grade_math(response, gold)
    if kind == "choice":
        return grade_choice(response, gold)
    raise ValueError(f"unknown grading kind {kind!r}")


def _guarded(grade_fn: GradeFn, item: tuple[str, str, str]) -> dict[str, Any]:
    """Run grade_fn in a worker, turning an exception into a wrong answer that names it."""
    try:
        return grade_fn(*item)
    except Exception as exc:
        return {"correct": False, "pred": None, "error": repr(exc)}


def _stop_started(start: Future[Pool]) -> None:
    """Stop a pool whose start nobody waited for (run by the starting thread when it is done)."""
    if start.exception() is None:
        pool = start.result()
        pool.terminate()
        pool.join()


class Grader:
    """Grades items in a pool of worker processes with a hard per-item timeout.

    Workers come from the "forkserver" start method: forking a parent that holds torch and CUDA
    state is unsafe, and a fork server that has already imported this module restarts workers in
    milliseconds after a timeout. As with "spawn", a script that uses Grader must guard its entry
    point with ``if __name__ == "__main__":``. ``grade_fn`` must be a module-level function so that
    workers can unpickle it; it replaces ``grade_item`` to add kinds of answer.
    """

    def __init__(self, grade_fn: GradeFn = grade_item, workers: int | None = None) -> None:
        self._grade_fn = grade_fn
        # math-verify is CPU-bound and grading a whole benchmark at once is on the clock
        self._workers = workers or max(2, min(8, os.cpu_count() or 2))
        self._ctx = multiprocessing.get_context("forkserver")
        # Takes effect only if no fork server runs yet; otherwise each worker imports this module.
        self._ctx.set_forkserver_preload(["__main__", __name__])
        self._pool: Pool | None = None
        self._starting: Future[Pool] | None = None
        self.pool_s = 0.0  # seconds the caller waited for the pool to start, and its stop (restarts count as grading)

    def __enter__(self) -> Grader:
        # The pool starts in a thread, beside the caller's next work (an evaluation's decoding), and
        # the first grade() waits for it: its fork server first imports __main__ and this module,
        # which took 3.0-3.4 s of a GPU host's vLLM evaluation (lease 12), all before decoding began.
        starter = ThreadPoolExecutor(1)
        self._starting = starter.submit(self._ctx.Pool, self._workers)
        starter.shutdown(wait=False)  # the start still runs; its thread ends with it
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._starting is not None:  # never used (or interrupted while waiting): stop it once started
            self._starting.add_done_callback(_stop_started)
            self._starting = None
        t0 = time.time()
        self._stop()
        self.pool_s += time.time() - t0

    def ready(self) -> Pool:
        """The pool, once started; the time waited for it counts as pool time (``pool_s``), so a
        caller that times its grading calls this first, outside that clock."""
        if self._pool is None:
            if self._starting is None:
                raise RuntimeError("Grader must be used as a context manager")
            t0 = time.time()
            try:
                self._pool, self._starting = self._starting.result(), None
            finally:
                self.pool_s += time.time() - t0
        return self._pool

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def grade(
        self, items: Sequence[tuple[str, str, str]], timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Grade (kind, response, gold) items; results are in input order.

        An item still running ``timeout_s`` after every earlier item has finished is recorded as
        ``{"correct": False, "pred": None, "error": "timeout"}``; the pool is then replaced (the
        only way to stop a busy worker) and the remaining items are resubmitted. An exception while
        grading an item is recorded the same way, with its repr as the error.
        """
        results: list[dict[str, Any]] = []
        while len(results) < len(items):
            pending = self.ready().imap(partial(_guarded, self._grade_fn), items[len(results) :])
            try:
                while len(results) < len(items):
                    results.append(pending.next(timeout_s))
            except multiprocessing.TimeoutError:
                results.append({"correct": False, "pred": None, "error": "timeout"})
                self._stop()
                self._pool = self._ctx.Pool(self._workers)
        return results
