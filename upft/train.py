"""Single-process fine-tuning (CPU or one GPU) on the HF Trainer.

Reads the rows our builders write and trains on their exact ids: loss on ``target_ids``
only (the response and its end-of-turn token), the prompt masked. Multi-GPU runs go through
OpenRLHF (scripts/train_sft.sh) on the same files. The output is a plain HF folder that
every other stage loads.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from upft.runio import UserError, read_json, write_json, write_jsonl, write_manifest


@dataclass
class TrainSettings:
    """Defaults follow the paper (METHOD.md, Table 3): AdamW, constant LR with 3% warmup, global batch 64."""

    lr: float = 1e-6
    epochs: float = 1.0
    batch_size: int = 64  # global batch (micro_batch x gradient accumulation)
    micro_batch: int = 1
    warmup_ratio: float = 0.03
    scheduler: str = "constant_with_warmup"
    max_len: int = 4096
    # "sample": each sample's mean NLL, averaged over samples (the authors' code: a 9-token
    # prefix weighs as much as a 3000-token trace). "token": mean over all target tokens.
    loss_avg: str = "sample"
    weight_decay: float = 0.0
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 16
    gradient_checkpointing: bool = False
    save_steps: int = 0  # >0: keep resumable checkpoints every N steps
    seed: int = 42
    device: str = "auto"
    report_to: str = "none"  # or "tensorboard", "wandb"

    def check(self) -> None:
        if self.loss_avg not in ("sample", "token"):
            raise UserError(f"loss_avg must be 'sample' or 'token', got {self.loss_avg}")
        if self.batch_size % self.micro_batch:
            raise UserError("batch_size must be a multiple of micro_batch")
        if self.lr <= 0 or self.epochs <= 0:
            raise UserError("lr and epochs must be positive")


def tensorise(rows: list[dict], max_len: int) -> list[dict]:
    """input_ids = prompt + target; labels mask the prompt. Rows whose prompt leaves no room are dropped."""
    out = []
    for r in rows:
        if "prompt_ids" not in r or "target_ids" not in r:
            raise UserError("training rows need prompt_ids and target_ids (build them with data_prep/build.py)")
        prompt, target = r["prompt_ids"], r["target_ids"]
        if len(prompt) >= max_len - 2:
            continue
        ids = (prompt + target)[:max_len]
        out.append({"input_ids": ids, "labels": [-100] * len(prompt) + ids[len(prompt):]})
    return out


def collate(pad_id: int):
    import torch

    def fn(batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return fn


def response_nll(logits, labels):
    """Per-token NLL of next-token prediction and the mask of positions under the loss."""
    import torch.nn.functional as F

    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100, reduction="none")
    return nll, target != -100


def loss_fn(loss_avg: str, accumulation: int):
    """A Trainer ``compute_loss_func`` whose sum over accumulation steps is the global-batch mean."""

    def fn(outputs, labels, num_items_in_batch=None):
        nll, mask = response_nll(outputs.logits, labels)
        if loss_avg == "token":
            denom = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            return nll.sum() / denom
        per_sample = nll.sum(1) / mask.sum(1).clamp(min=1)
        return per_sample.sum() / (labels.shape[0] * accumulation)

    return fn


def train(rows: list[dict], model_path: str, out_dir: str, settings: TrainSettings, fingerprint_settings: dict) -> None:
    """Fine-tune and write a plain HF folder to ``out_dir`` (atomically, via ``out_dir.tmp``)."""
    from transformers import Trainer, TrainingArguments

    from upft.models import load_model, load_tokenizer, pick_device

    settings.check()
    out, tmp = Path(out_dir), Path(f"{out_dir}.tmp")
    # a crashed run of the same settings resumes from its checkpoints; anything else starts clean
    if tmp.exists() and (not (tmp / "settings.json").exists() or read_json(tmp / "settings.json") != fingerprint_settings):
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    write_json(tmp / "settings.json", fingerprint_settings)

    tokenizer = load_tokenizer(model_path)
    data = tensorise(rows, settings.max_len)
    if not data:
        raise UserError("no training rows fit max_len")
    device = pick_device(settings.device)
    model = load_model(model_path, device)
    if settings.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    accumulation = settings.batch_size // settings.micro_batch
    args = TrainingArguments(
        output_dir=str(tmp / "checkpoints"),
        per_device_train_batch_size=settings.micro_batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=settings.lr,
        num_train_epochs=settings.epochs,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=settings.weight_decay,
        logging_steps=1,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        seed=settings.seed,
        bf16=device.startswith("cuda"),
        use_cpu=device == "cpu",
        gradient_checkpointing=settings.gradient_checkpointing,
        report_to=settings.report_to,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate(tokenizer.pad_token_id),
                      compute_loss_func=loss_fn(settings.loss_avg, accumulation))
    has_ckpt = any((tmp / "checkpoints").glob("checkpoint-*"))
    print(f"[train] {len(data)} rows, {len(data) // settings.batch_size or 1} steps/epoch, device {device}",
          file=sys.stderr)
    t0 = time.time()
    trainer.train(resume_from_checkpoint=True if has_ckpt else None)
    wall = time.time() - t0

    model = trainer.model
    if settings.lora_rank:
        model = model.merge_and_unload()
    final = tmp / "model"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    log = [h for h in trainer.state.log_history if "loss" in h]
    write_jsonl(final / "train_log.jsonl", log)
    write_manifest(final, "train", fingerprint_settings, n_rows=len(data),
                   steps=trainer.state.global_step, wall_s=wall, final_loss=log[-1]["loss"] if log else None,
                   tuning_tokens=sum(sum(t != -100 for t in d["labels"]) for d in data))
    if out.exists():
        shutil.rmtree(out)
    os.replace(final, out)
    shutil.rmtree(tmp)
