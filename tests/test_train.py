"""Loss masking and averaging of the local trainer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from upft.train import collate, loss_fn, response_nll, tensorise


ROWS = [
    {"prompt_ids": [5, 6, 7], "target_ids": [8, 9, 2]},
    {"prompt_ids": [5, 6], "target_ids": [10, 11, 12, 13, 14, 2]},
]


def test_loss_mask_covers_exactly_the_target_tokens():
    batch = collate(pad_id=0)(tensorise(ROWS, max_len=64))
    nll, mask = response_nll(torch.zeros(2, batch["input_ids"].shape[1], 20), batch["labels"])
    for row, r in enumerate(ROWS):
        # position t predicts token t+1: the masked-in targets are exactly target_ids (EOS included)
        predicted = batch["input_ids"][row, 1:][mask[row]].tolist()
        assert predicted == r["target_ids"]
    assert batch["attention_mask"].sum().item() == sum(len(r["prompt_ids"]) + len(r["target_ids"]) for r in ROWS)


def test_long_rows_are_truncated_and_prompts_that_leave_no_room_dropped():
    rows = tensorise(ROWS + [{"prompt_ids": list(range(10)), "target_ids": [1, 2]}], max_len=6)
    assert len(rows) == 2  # the 10-token prompt is dropped
    assert len(rows[1]["input_ids"]) == 6 and rows[1]["labels"][:2] == [-100, -100]


def test_sample_and_token_averaging_differ_as_documented():
    batch = collate(pad_id=0)(tensorise(ROWS, max_len=64))
    logits = torch.randn(2, batch["input_ids"].shape[1], 20, generator=torch.Generator().manual_seed(0))
    nll, mask = response_nll(logits, batch["labels"])
    out = SimpleNamespace(logits=logits)
    n_tok = mask.sum()
    token = loss_fn("token", accumulation=1)(out, batch["labels"], num_items_in_batch=n_tok)
    per_sample = loss_fn("sample", accumulation=1)(out, batch["labels"])
    assert math.isclose(token.item(), (nll[mask].sum() / n_tok).item(), rel_tol=1e-6)
    means = [nll[i][mask[i]].mean().item() for i in range(2)]
    assert math.isclose(per_sample.item(), sum(means) / 2, rel_tol=1e-6)
    # with accumulation 2, each micro-batch's share halves so the sum over micro-batches is the mean
    half = loss_fn("sample", accumulation=2)(out, batch["labels"])
    assert math.isclose(half.item(), per_sample.item() / 2, rel_tol=1e-6)


def test_lora_training_saves_a_merged_plain_folder(tmp_path, model_path, tok):
    from test_prefix import RESPONSES, fake_sample
    from transformers import AutoModelForCausalLM

    from upft.builders import build_upft
    from upft.models import end_of_turn_id
    from upft.stages import run_train
    from upft.train import TrainSettings

    rows, _ = build_upft([fake_sample(tok, i, t, "prefix") for i, t in enumerate(RESPONSES)], tok,
                         end_of_turn_id(tok), L=8)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    settings = TrainSettings(lr=1e-3, batch_size=3, micro_batch=3, warmup_ratio=0.0, lora_rank=4, device="cpu")
    out = run_train(str(data), model_path, str(tmp_path / "model"), settings)
    assert not list(out.glob("adapter_*")) and (out / "config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(model_path)
    tuned = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(tuned, "peft_config")
    changed = [n for n, p in tuned.named_parameters()
               if not torch.allclose(p.float(), base.get_parameter(n).float())]
    assert changed and any("proj" in n for n in changed)  # the LoRA deltas were merged into the weights
