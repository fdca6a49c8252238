"""Prompt rendering with the model's own chat template.

Sampling, training and evaluation all render prompts here, so the model is tuned on exactly
the prompt it is sampled and evaluated with. Prompts are tokenized once, without adding
special tokens a second time (the template already holds BOS where the model wants one).
"""

from __future__ import annotations

# The paper's instruction for prefix samples (leading space intended).
UPFT_SUFFIX = (
    " Please provide the initial step towards resolving the question. "
    "This step may serve as a foundation but might not encompass the entire solution."
)
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."

# style -> (system prompt or None, user-instruction appended to the question or None)
STYLES: dict[str, tuple[str | None, str | None]] = {
    "plain": (None, None),  # Llama-3.1 and R1-distill in the paper: the question alone
    "qwen-math": (BOXED, None),  # Qwen2.5-Math: its reasoning system prompt
    "boxed": (None, BOXED),  # any other model: ask for a \boxed{} answer
}


def style_for(model_name: str, style: str = "auto") -> str:
    """Pick the paper's prompt style for a model family unless one is given."""
    if style != "auto":
        if style not in STYLES:
            from upft.errors import UserError

            raise UserError(f"unknown prompt style '{style}' (known: auto, {', '.join(STYLES)})")
        return style
    name = model_name.lower()
    if "qwen2.5-math" in name:
        return "qwen-math"
    if "llama" in name or "r1-distill" in name:
        return "plain"
    return "boxed"


def messages(question: str, style: str, suffix: str = "") -> list[dict]:
    """Chat messages for a question; ``suffix`` (the UPFT instruction) ends the user turn."""
    system, instruction = STYLES[style]
    user = question if instruction is None else f"{question}\n{instruction}"
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user + suffix}]


def render_many(tokenizer, conversations: list[list[dict]]) -> list[tuple[str, list[int]]]:
    """Each conversation's generation prompt as text and token ids (template applied once, no extra
    BOS). The texts are tokenized in one call, which a fast tokenizer spreads over all cores: 2000
    GSM8K prompts took 0.42 s one by one and 0.23 s at once on 2 cores, time a UPFT pass (7 s on
    vLLM) pays in full."""
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
    return list(zip(texts, tokenizer(texts, add_special_tokens=False).input_ids)) if texts else []


def render(tokenizer, msgs: list[dict]) -> tuple[str, list[int]]:
    """One conversation's generation prompt (``render_many``)."""
    return render_many(tokenizer, [msgs])[0]
