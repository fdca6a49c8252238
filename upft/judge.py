"""LLM-judge grading for open-answer benchmarks (the paper's open-ended GPQA protocol).

The paper counted an answer correct if an LLM judge OR a rule said so. The judge here is any
chat model run through the same generation backend as the model under test: it sees the
question, the reference answer and the end of the response, and answers yes or no (greedy).
A judge that answers neither counts as "no"; its raw reply is stored with each record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from upft.generation import GenRequest
from upft.prompts import render

JUDGE_PROMPT = """You are checking a student's answer to a science question against the reference answer.

Question:
{question}

Reference answer: {reference}

End of the student's response:
{response}

Is the student's final answer equivalent to the reference answer (same value, expression or \
statement; ignore formatting)? Reply with one word: yes or no."""
RESPONSE_CHARS = 1500  # the final answer is at the end; long reasoning would only dilute the prompt
_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass
class Judge:
    label: str  # the judge model's name, recorded in the summary
    tokenizer: object
    backend: object  # a generation backend (upft.backends.make_backend)
    max_new_tokens: int = 8


def verdict(reply: str) -> bool:
    """True only if the judge's first yes/no word is yes."""
    m = _VERDICT.search(reply)
    return bool(m) and m[1].lower() == "yes"


def judge_rows(rows: list[dict], questions: dict[str, str], judge: Judge) -> None:
    """Add ``judge`` (raw reply), ``judge_correct`` and the lenient ``correct`` to rows lacking them.

    ``rule_correct`` keeps the rule's verdict, so both graders can be reported on their own.
    """
    todo = [r for r in rows if "judge" not in r]
    requests = []
    for i, r in enumerate(todo):
        prompt = JUDGE_PROMPT.format(question=questions[r["id"]].strip(), reference=r["gold"],
                                     response=r["response"][-RESPONSE_CHARS:])
        _, ids = render(judge.tokenizer, [{"role": "user", "content": prompt}])
        requests.append(GenRequest(str(i), tuple(ids), judge.max_new_tokens))
    for batch in judge.backend.generate(requests):
        for res in batch:
            r = todo[int(res.key)]
            r["judge"] = res.text
            r["judge_correct"] = verdict(res.text)
            r["rule_correct"] = r["correct"]
            r["correct"] = r["rule_correct"] or r["judge_correct"]
