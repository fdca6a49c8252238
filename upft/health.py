"""Is a tuned model still a language model? Checks every trainer runs before it accepts one.

A GPU run once "succeeded" with NaN weights: every answer was "!!!!..." and accuracy 0%, and
nothing noticed. Both trainers therefore stop on the first non-finite loss or gradient norm
(``check_finite``), and a finished model must pass ``check_model`` before its folder is
written: all weights finite, and a greedy answer to each of a few fixed prompts that is
neither empty nor one token repeated. The result goes into the training manifest, and the
report refuses a run whose model has no passing check.

A model tuned on prefixes can also collapse without any NaN: on an H100, Qwen2.5-Coder-1.5B
tuned with UPFT (L=32, per-sample loss) at lr 1e-5 learned the prefixes' end-of-turn as the end
of every answer and stopped after about 40 tokens on GSM8K (2% where the base model scores 61%;
results/gpu/trainer_check.json). So when the training set holds prefixes, the check also asks
eight multi-step questions before and after training (``answer_lengths``) and refuses a model that
ends half of its answers or more within 3 x L tokens where the base model wrote more
(``stops_early``). Two probes that both had to stop were not enough: a later local-trainer run
ended one of them at 35 tokens, ran on with the other, passed, and scored 8% on GSM8K with 85-token
answers. A model that stops early on fewer questions passes; its evaluation reports the share of
short answers (``upft.comparison.short_share``), and the learning-rate choice on the dev split sees
its lower accuracy.
"""

from __future__ import annotations

import math

from upft.errors import UserError

# Fixed, easy prompts: any working instruct model answers them with a few varied tokens.
PROBES = (
    "What is 7 + 5? Answer with a number.",
    "Name the capital of France.",
    "Write one short sentence about the sea.",
)
PROBE_TOKENS = 24  # enough to see a collapse ("!!!!...") and cheap on a CPU
# Multi-step questions: a working instruct model answers each with several sentences.
REASONING_PROBES = (
    "A shop sells pens for 3 dollars each. Tom buys 4 pens and pays with a 20-dollar bill. "
    "How much change does he get? Think step by step.",
    "A train travels at 60 km per hour for 2 hours, then at 40 km per hour for 3 hours. "
    "How far does it travel in total? Think step by step.",
    "Anna has 3 boxes with 12 apples each. She gives away 15 apples and buys 8 more. "
    "How many apples does she have now? Think step by step.",
    "A rectangle is 8 cm long and 5 cm wide. A square has the same perimeter. "
    "What is the area of the square? Think step by step.",
    "Sam saves 15 dollars a week. After 6 weeks he spends a third of his savings on a game. "
    "How much money does he have left? Think step by step.",
    "A baker makes 240 cookies and packs them in bags of 8. He sells each bag for 2.5 dollars. "
    "How much money does he make if he sells all the bags? Think step by step.",
    "A class has 30 students; 40% of them are boys. Half of the girls play chess. "
    "How many girls play chess? Think step by step.",
    "A tank holds 500 liters. It is filled at 20 liters per minute and drained at 5 liters per "
    "minute at the same time. How long does it take to fill the empty tank? Think step by step.",
)
EARLY_STOP_FACTOR = 3  # an answer that ends within 3 x L tokens, where the base model's ran on, stopped early
EARLY_STOP_SHARE = 0.5  # refused when at least this share of the judged probes stopped early
REPEAT_RUN = 8  # this many copies of one token in a row, and nothing else, is a collapse


class Diverged(UserError):
    """Training produced a non-finite loss or gradient norm."""


def check_finite(step: int, values: dict[str, float | None]) -> None:
    """Stop training at the first optimizer step whose loss or grad norm is NaN or infinite."""
    bad = {k: v for k, v in values.items() if v is not None and not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise Diverged(f"training diverged at optimizer step {step} ({what}); no model was written")


def degenerate(token_ids: list[int]) -> str | None:
    """Why a greedy answer is unusable (empty, or one token over and over), else None."""
    if not token_ids:
        return "an empty answer"
    if len(token_ids) >= REPEAT_RUN and len(set(token_ids)) == 1:
        return f"token {token_ids[0]} repeated {len(token_ids)} times"
    return None


def nonfinite_weights(model) -> list[str]:
    """Names of parameters holding a NaN or infinity."""
    import torch

    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


def greedy(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[tuple[list[int], bool]]:
    """The model's greedy answers to ``questions`` (plain prompt, chat template; one batch), each
    as token ids without the end-of-turn, and whether it ended before ``max_new_tokens``."""
    from upft.generation import decode, generation_config
    from upft.models import end_of_turn_id
    from upft.prompts import messages, render

    stop = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config = generation_config(max_new_tokens, 0.0, 1.0, 0, stop, pad, model.device.type)
    was_training = model.training
    model.eval()
    answers = decode(model, [render(tokenizer, messages(q, "plain"))[1] for q in questions], config)
    model.train(was_training)
    return answers


def early_stop_limit(rows: list[dict]) -> int | None:
    """3 x the longest prefix row's sampled length, or None for a set without prefix rows
    (only prefixes teach a model to end an answer early)."""
    lengths = [r.get("n_sampled_tokens", 0) for r in rows if r.get("kind") == "prefix"]
    return EARLY_STOP_FACTOR * max(lengths) if lengths else None


def answer_lengths(model, tokenizer, limit: int) -> list[int | None]:
    """Token lengths of the greedy answers to ``REASONING_PROBES``; None where an answer ran past ``limit``."""
    return [len(ids) if ended else None for ids, ended in greedy(model, tokenizer, list(REASONING_PROBES), limit)]


def stops_early(base: list[int | None], tuned: list[int | None], limit: int) -> str | None:
    """Why the tuned model counts as stopping early, else None: on at least ``EARLY_STOP_SHARE``
    of the probes the base model answered past ``limit``, the tuned model ended within it. Probes
    the base model itself answered briefly say nothing and are skipped; with none left there is
    nothing to judge."""
    judged = [t for b, t in zip(base, tuned) if b is None]
    short = [t for t in judged if t is not None]
    if judged and len(short) >= EARLY_STOP_SHARE * len(judged):
        return (f"stops early: it ends its answers to {len(short)} of {len(judged)} multi-step questions after "
                f"{', '.join(map(str, short))} tokens, where the base model writes more than {limit}")
    return None


def check_model(model, tokenizer, early: tuple[list[int | None], int] | None = None) -> dict:
    """Raise unless the weights are finite and every probe gets a usable greedy answer; with
    ``early`` (the base model's ``answer_lengths`` and their limit), also unless the model still
    answers multi-step questions past the limit where the base model did.

    Returns what was checked (for the manifest): the probes and the answers given.
    """
    bad = nonfinite_weights(model)
    if bad:
        raise UserError(f"the trained model has non-finite weights in {len(bad)} tensors "
                        f"(first: {bad[0]}); no model was written")
    answers = []
    for probe, (answer, _) in zip(PROBES, greedy(model, tokenizer, list(PROBES), PROBE_TOKENS)):
        why = degenerate(answer)
        if why:
            raise UserError(f"the trained model has collapsed: asked {probe!r}, it gives {why}; "
                            "no model was written")
        answers.append(tokenizer.decode(answer))
    report = {"passed": True, "probes": list(PROBES), "answers": answers}
    if early is not None:
        base_lengths, limit = early
        lengths = answer_lengths(model, tokenizer, limit)
        why = stops_early(base_lengths, lengths, limit)
        if why:
            raise UserError(f"the trained model {why}: it learned the prefixes' end-of-turn as the end of an "
                            "answer; try another learning rate; no model was written")
        report["early_stop"] = {"probes": list(REASONING_PROBES), "limit": limit,
                                "base_lengths": base_lengths, "lengths": lengths}
    return report
