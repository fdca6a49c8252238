"""The local trainer: loss masking and averaging, optimizer settings, and refusing bad runs."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli
from upft.errors import UserError
from upft.runio import read_json, read_jsonl
from upft.local_trainer import TrainSettings, collate, loss_fn, one_process_one_device, response_nll, tensorise


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
    token = loss_fn("token")(out, batch["labels"], num_items_in_batch=n_tok)
    per_sample = loss_fn("sample")(out, batch["labels"], num_items_in_batch=2)
    assert math.isclose(token.item(), (nll[mask].sum() / n_tok).item(), rel_tol=1e-6)
    means = [nll[i][mask[i]].mean().item() for i in range(2)]
    assert math.isclose(per_sample.item(), sum(means) / 2, rel_tol=1e-6)
    assert not math.isclose(token.item(), per_sample.item(), rel_tol=1e-3)


def _data(tmp_path, tok, n: int, draw: str = "prefix") -> str:
    """n real UPFT rows (the SmolLM2 tokenizer) in a train.jsonl: prefixes of 8 tokens, or with
    ``draw="full"`` whole responses. Full rows spare the health check's early-stop probes (it asks
    them only for a set with prefix rows, before and after training) in tests about something else."""
    from test_prefix import RESPONSES, fake_sample
    from upft.builders import build_upft
    from upft.models import end_of_turn_id

    samples = [fake_sample(tok, i, RESPONSES[i % len(RESPONSES)], draw) for i in range(n)]
    rows, _ = build_upft(samples, tok, end_of_turn_id(tok), L=8)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_lora_training_saves_a_merged_plain_folder(tmp_path, model_path, tok):
    from transformers import AutoModelForCausalLM

    from upft.stages import run_train

    settings = TrainSettings(lr=1e-3, batch_size=3, micro_batch=3, warmup_ratio=0.0, lora_rank=4, device="cpu")
    out = run_train(_data(tmp_path, tok, 3, "full"), model_path, str(tmp_path / "model"), settings)
    assert not list(out.glob("adapter_*")) and (out / "config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(model_path)
    tuned = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(tuned, "peft_config")
    changed = [n for n, p in tuned.named_parameters()
               if not torch.allclose(p.float(), base.get_parameter(n).float())]
    assert changed and any("proj" in n for n in changed)  # the LoRA deltas were merged into the weights


def test_one_short_step_is_a_mean_over_its_rows_at_the_full_rate(tmp_path, model_path, tok, monkeypatch):
    """3 rows, micro-batches of 2, a global batch of 64: the one optimizer step holds micro-batches
    of 2 and 1 rows. Its logged loss (computed at the initial weights) must be the plain per-row
    mean; the step is not spent at LR 0 (no warmup step) and moves the weights; AdamW (0.9, 0.95),
    no weight decay, clipping at 1.0 (OpenRLHF's settings). cuDNN attention is off during training
    (its backward gives NaN gradients on padded batches, pytorch#196678) and restored after;
    check_finite runs at every optimizer step, inside training; the saved model passed the health
    check, with the early-stop probes a set of prefix rows calls for."""
    from transformers import AutoModelForCausalLM

    import upft.local_trainer
    from upft.stages import run_train

    data = _data(tmp_path, tok, 3)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        means = []
        for r in tensorise(read_jsonl(data), 4096):
            batch = collate(tok.pad_token_id)([r])
            nll, mask = response_nll(base(input_ids=batch["input_ids"]).logits, batch["labels"])
            means.append(nll[mask].mean().item())
    cudnn_during = []
    real = upft.local_trainer.check_finite
    monkeypatch.setattr(upft.local_trainer, "check_finite",
                        lambda step, values: (cudnn_during.append(torch.backends.cuda.cudnn_sdp_enabled()),
                                              real(step, values)))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    settings = TrainSettings(lr=1e-5, batch_size=64, micro_batch=2, device="cpu")
    out = run_train(data, model_path, str(tmp_path / "model"), settings)
    assert cudnn_during and not any(cudnn_during) and torch.backends.cuda.cudnn_sdp_enabled() == before
    (step,) = read_jsonl(out / "train_log.jsonl")
    assert math.isclose(step["loss"], sum(means) / 3, rel_tol=1e-4) and step["learning_rate"] == 1e-5
    man = read_json(out / "manifest.json")
    assert (man["optimizer_steps"], man["warmup_steps"], man["n_rows"]) == (1, 0, 3)
    assert man["optimizer"] == {"betas": [0.9, 0.95], "weight_decay": 0.0, "max_grad_norm": 1.0}
    assert man["model_check"]["passed"] and all(man["model_check"]["answers"])
    early = man["model_check"]["early_stop"]
    assert early["limit"] == 3 * 8 and len(early["base_lengths"]) == len(early["lengths"]) == 8
    tuned = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(base.model.norm.weight, tuned.model.norm.weight)


def test_a_run_that_leaves_the_weights_unchanged_is_refused(tmp_path, model_path, tok):
    from upft.stages import run_train

    # an update below fp32's smallest number: every weight, zeros included, stays bit-identical
    settings = TrainSettings(lr=1e-50, batch_size=2, micro_batch=2, device="cpu")
    with pytest.raises(UserError, match="unchanged"):
        run_train(_data(tmp_path, tok, 2, "full"), model_path, str(tmp_path / "model"), settings)
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.tmp").exists()


def test_a_non_finite_loss_stops_the_run_with_one_error_line_and_no_model(tmp_path, model_path, tok):
    """A model with one NaN weight gives a NaN loss at the first step: exit 2, nothing written."""
    from transformers import AutoModelForCausalLM

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(model_path)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[0] = float("nan")
    model.save_pretrained(broken)
    tok.save_pretrained(broken)
    r = run_cli("train/train_local.py", "--data", _data(tmp_path, tok, 2, "full"), "--model", str(broken),
                "--out", str(tmp_path / "model"), "--batch-size", "2", "--micro-batch", "2", "--lr", "1e-5")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert "diverged at optimizer step 1" in errors[0] and "nan" in errors[0]
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.tmp").exists()


def test_several_visible_gpus_are_refused_never_data_parallel(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(UserError, match="4 GPUs are visible.*CUDA_VISIBLE_DEVICES"):
        one_process_one_device("cuda")
    one_process_one_device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    one_process_one_device("cuda")


@pytest.mark.parametrize("bad, match", [
    (dict(micro_batch=3, batch_size=8), "multiple of micro_batch"),
    (dict(micro_batch=0), "at least 1"),
    (dict(lr=0.0), "positive"),
    (dict(warmup_ratio=1.0), r"\[0, 1\)"),
    (dict(loss_avg="mean"), "'sample' or 'token'"),
])
def test_bad_settings(bad, match):
    with pytest.raises(UserError, match=match):
        TrainSettings(**bad).check()
