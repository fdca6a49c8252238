"""Single-process fine-tuning (CPU or one GPU) on the HF Trainer.

Reads the rows our builders write and trains on their exact ids: loss on ``target_ids``
only (the response and its end-of-turn token), the prompt masked. Several GPUs or nodes go
through OpenRLHF (scripts/train_sft.sh) on the same files. The output is a plain HF folder
that every other stage loads.

What it guarantees, and why:
- On CUDA the weights stay fp32 (the optimizer's master copy) and the forward runs under
  bf16 autocast: the HF Trainer's mixed-precision path, as DeepSpeed's bf16 mode in OpenRLHF.
  Pure-bf16 AdamW updates round away (at LR 1e-6 about 1% of the weights moved at all).
- cuDNN's attention backend is off while training. Its backward (torch 2.11-2.13 on H100/H200)
  returns NaN gradients when an attention mask is passed (any padded micro-batch), the padded
  length is 64 mod 128, and a row's log-sum-exp is below -88.7, which Qwen2.5's
  "massive activation" heads produce (pytorch#196678). That was the "!!!!" collapse: a fixed
  optimizer step at every LR, only with padded micro-batches. Flash / memory-efficient / math
  kernels compute the same attention.
- One process, one device: several visible GPUs are refused (the Trainer would wrap the model
  in DataParallel and silently multiply the global batch); use OpenRLHF for several GPUs.
- AdamW (0.9, 0.95), weight decay 0, gradient clipping at 1.0, as OpenRLHF and the authors.
- ``loss_avg="sample"``: each row's mean NLL, averaged over the rows of the optimizer step,
  including a last, shorter step (the authors' micro-batch-1 weighting); ``"token"``: the mean
  over all target tokens of the step.
- A small set still trains: warmup takes floor(ratio x steps) steps, so a run of one step is
  not spent at learning rate 0; a run that leaves the weights unchanged is refused.
- A NaN/inf loss or gradient norm stops the run at that step; the finished model must pass
  ``upft.health.check_model``. Either failure is one ``error:`` line and no model folder.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from upft.health import answer_lengths, check_finite, check_model, early_stop_limit
from upft.errors import UserError
from upft.manifests import release_stage, write_manifest
from upft.runio import read_json, write_json, write_jsonl
from upft.schema import check_types


@dataclass
class TrainSettings:
    """Defaults follow the paper (METHOD.md, Table 3) and OpenRLHF's optimizer settings."""

    lr: float = 1e-6
    epochs: float = 1.0
    batch_size: int = 64  # global batch: rows per optimizer step (micro_batch x accumulation)
    micro_batch: int = 1  # rows per forward pass
    warmup_ratio: float = 0.03  # warmup steps = floor(ratio x optimizer steps)
    scheduler: str = "constant_with_warmup"
    max_len: int = 4096  # prompt + response tokens; longer rows are cut, prompts that leave no room dropped
    # "sample": each row's mean NLL, averaged over rows (the authors' weighting: a 9-token
    # prefix weighs as much as a 3000-token trace). "token": mean over all target tokens.
    loss_avg: str = "sample"
    weight_decay: float = 0.0
    adam_beta2: float = 0.95  # AdamW betas (0.9, adam_beta2)
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 16
    gradient_checkpointing: bool = False
    save_steps: int = 0  # >0: keep resumable checkpoints every N steps
    seed: int = 0
    device: str = "auto"
    report_to: str = "none"  # or "tensorboard", "wandb"

    def check(self) -> None:
        check_types(self, "train")
        if self.loss_avg not in ("sample", "token"):
            raise UserError(f"loss_avg must be 'sample' or 'token', got {self.loss_avg}")
        if self.micro_batch < 1 or self.batch_size < 1:
            raise UserError("batch_size and micro_batch must be at least 1")
        if self.batch_size % self.micro_batch:
            raise UserError(f"batch_size {self.batch_size} must be a multiple of micro_batch {self.micro_batch}")
        if self.lr <= 0 or self.epochs <= 0:
            raise UserError("lr and epochs must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


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


def loss_fn(loss_avg: str):
    """A Trainer ``compute_loss_func``; ``num_items_in_batch`` counts the optimizer step's rows
    (``loss_avg="sample"``) or target tokens (``"token"``), so the micro-batches of a step sum
    to one mean over that step, a last, shorter step included."""

    def fn(outputs, labels, num_items_in_batch):
        nll, mask = response_nll(outputs.logits, labels)
        if loss_avg == "token":
            return nll.sum() / num_items_in_batch
        per_sample = nll.sum(1) / mask.sum(1).clamp(min=1)
        return per_sample.sum() / num_items_in_batch

    return fn


def rows_with_targets(labels) -> int:
    """Rows of a micro-batch that have at least one token under the loss."""
    return int((labels[:, 1:] != -100).any(1).sum())


def optimizer_steps(n_rows: int, micro_batch: int, accumulation: int, epochs: float) -> int:
    """The optimizer steps the Trainer will take (its own formula: a last, shorter step counts)."""
    per_epoch = math.ceil(math.ceil(n_rows / micro_batch) / accumulation)
    return max(math.ceil(epochs * per_epoch), 1)


def one_process_one_device(device: str) -> None:
    """Refuse several visible GPUs: the HF Trainer would silently wrap the model in DataParallel."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > 1 and not device.startswith("cpu"):
        raise UserError(f"{n} GPUs are visible; the local trainer uses one. Set CUDA_VISIBLE_DEVICES to one GPU, "
                        "or train on several with OpenRLHF (scripts/train_sft.sh --gpus N)")


def _trainer_class():
    """The HF Trainer, counting rows (not tokens) per optimizer step for the per-sample mean."""
    import torch
    from transformers import Trainer, TrainerCallback

    class StopOnNonFinite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            check_finite(state.global_step, {k: logs.get(k) for k in ("loss", "grad_norm")})

    class UpftTrainer(Trainer):
        def __init__(self, *args, loss_avg: str, **kwargs):
            self.loss_avg = loss_avg
            super().__init__(*args, compute_loss_func=loss_fn(loss_avg), callbacks=[StopOnNonFinite()], **kwargs)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, n_tokens = super().get_batch_samples(epoch_iterator, num_batches, device)
            if self.loss_avg == "token":
                return batches, n_tokens
            return batches, torch.tensor(sum(rows_with_targets(b["labels"]) for b in batches), device=device)

    return UpftTrainer


def _small_params(model) -> dict:
    """Copies of the small trainable tensors (norms, biases, LoRA factors): AdamW moves every one
    that gets a gradient, so an unchanged copy after training means no effective update."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.numel() <= 1 << 20}


def train(rows: list[dict], model_path: str, out_dir: str, settings: TrainSettings, fingerprint_settings: dict) -> None:
    """Fine-tune and write a plain HF folder to ``out_dir`` (atomically, via ``out_dir.tmp``)."""
    import torch
    from transformers import TrainingArguments

    from upft.models import load_model, load_tokenizer, pick_device

    settings.check()
    device = pick_device(settings.device)
    one_process_one_device(device)
    tokenizer = load_tokenizer(model_path)
    data = tensorise(rows, settings.max_len)
    if not data:
        raise UserError("no training rows fit max_len")
    accumulation = settings.batch_size // settings.micro_batch
    steps = optimizer_steps(len(data), settings.micro_batch, accumulation, settings.epochs)
    warmup = int(settings.warmup_ratio * steps)

    out, tmp = Path(out_dir), Path(f"{out_dir}.tmp")
    # a crashed run of the same settings resumes from its checkpoints; anything else starts clean
    if tmp.exists() and (not (tmp / "settings.json").exists() or read_json(tmp / "settings.json") != fingerprint_settings):
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    write_json(tmp / "settings.json", fingerprint_settings)

    cuda = device.startswith("cuda")
    model = load_model(model_path, device, dtype="float32")  # fp32 master weights; bf16 autocast on CUDA
    limit = early_stop_limit(rows)  # prefix rows can teach the model to stop early: measure the base first
    early = (answer_lengths(model, tokenizer, limit), limit) if limit else None
    if settings.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    before = _small_params(model)
    args = TrainingArguments(
        output_dir=str(tmp / "checkpoints"),
        per_device_train_batch_size=settings.micro_batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=settings.lr,
        num_train_epochs=settings.epochs,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=warmup,
        weight_decay=settings.weight_decay,
        adam_beta1=0.9,
        adam_beta2=settings.adam_beta2,
        max_grad_norm=settings.max_grad_norm,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss must be seen, not replaced by the running mean
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        seed=settings.seed,
        bf16=cuda,
        use_cpu=device == "cpu",
        gradient_checkpointing=settings.gradient_checkpointing,
        report_to=settings.report_to,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = _trainer_class()(model=model, args=args, train_dataset=data,
                               data_collator=collate(tokenizer.pad_token_id), loss_avg=settings.loss_avg)
    has_ckpt = any((tmp / "checkpoints").glob("checkpoint-*"))
    print(f"[train] {len(data)} rows, {steps} optimizer steps of {settings.batch_size} rows "
          f"({warmup} warmup), device {device}" + (" (fp32 weights, bf16 autocast)" if cuda else ""), file=sys.stderr)
    cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)  # see the module docstring
    t0 = time.time()
    try:
        trainer.train(resume_from_checkpoint=True if has_ckpt else None)
    except UserError:
        shutil.rmtree(tmp)  # a diverged run cannot be resumed into anything useful
        raise
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)
    wall = time.time() - t0

    model = trainer.model
    log = [h for h in trainer.state.log_history if "loss" in h]
    if all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before):
        shutil.rmtree(tmp)
        lrs = sorted({h.get("learning_rate") for h in log})
        raise UserError(f"training left the weights unchanged ({trainer.state.global_step} optimizer steps, "
                        f"learning rates {lrs}); raise lr or give more rows")
    if settings.lora_rank:
        model = model.merge_and_unload()
    try:
        health = check_model(model, tokenizer, early)
    except UserError:
        shutil.rmtree(tmp)
        raise
    final = tmp / "model"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    write_jsonl(final / "train_log.jsonl", log)
    opt = trainer.optimizer.param_groups[0]
    write_manifest(final, "train", fingerprint_settings, n_rows=len(data), optimizer_steps=trainer.state.global_step,
                   warmup_steps=warmup, wall_s=wall, final_loss=log[-1]["loss"] if log else None,
                   tuning_tokens=sum(sum(t != -100 for t in d["labels"]) for d in data),
                   precision="fp32 weights, bf16 autocast" if cuda else "fp32",
                   optimizer={"betas": list(opt["betas"]), "weight_decay": opt["weight_decay"],
                              "max_grad_norm": settings.max_grad_norm},
                   nonfinite_steps=0, model_check=health)
    if out.exists():
        shutil.rmtree(out)
    os.replace(final, out)
    shutil.rmtree(tmp)
    release_stage(out)
