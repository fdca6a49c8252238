"""Is a tuned model still a language model? Checks every trainer runs before it accepts one.

A GPU run once "succeeded" with NaN weights: every answer was "!!!!..." and accuracy 0%, and
nothing noticed. Both trainers therefore stop on the first non-finite loss or gradient norm
(``check_finite``), and a finished model must pass ``check_model`` before its folder is
written: all weights finite, and a greedy answer to each of a few fixed prompts that is
neither empty nor one token repeated. The result goes into the training manifest, and the
report refuses a run whose model has no passing check.
"""

from __future__ import annotations

import math

from upft.runio import UserError

# Fixed, easy prompts: any working instruct model answers them with a few varied tokens.
PROBES = (
    "What is 7 + 5? Answer with a number.",
    "Name the capital of France.",
    "Write one short sentence about the sea.",
)
PROBE_TOKENS = 24  # enough to see a collapse ("!!!!...") and cheap on a CPU
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


def check_model(model, tokenizer) -> dict:
    """Raise unless the weights are finite and every probe gets a usable greedy answer.

    Returns what was checked (for the manifest): the probes and the answers given.
    """
    import torch

    from upft.models import end_of_turn_id, plain_generation_config
    from upft.prompts import messages, render

    bad = nonfinite_weights(model)
    if bad:
        raise UserError(f"the trained model has non-finite weights in {len(bad)} tensors "
                        f"(first: {bad[0]}); no model was written")
    stop = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    answers = []
    was_training = model.training
    model.eval()
    for probe in PROBES:
        _, ids = render(tokenizer, messages(probe, "plain"))
        prompt = torch.tensor([ids], device=model.device)
        with torch.inference_mode(), plain_generation_config(model):
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=PROBE_TOKENS, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        new = out[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(new) if t in stop), len(new))
        answer = new[:cut]
        why = degenerate(answer)
        if why:
            raise UserError(f"the trained model has collapsed: asked {probe!r}, it gives {why}; "
                            "no model was written")
        answers.append(tokenizer.decode(answer))
    model.train(was_training)
    return {"passed": True, "probes": list(PROBES), "answers": answers}
