"""Build (and run) the OpenRLHF SFT command for a prepared training set.

``scripts/train_sft.sh`` calls this. One node with N GPUs runs under the ``deepspeed``
launcher; several nodes under ``torchrun`` (give --nnodes/--node-rank/--master-addr on each
node). The paper's settings are the defaults. The chat template always comes from the model
folder (``--data.apply_chat_template``), so OpenRLHF's "User: {}\\nAssistant: " default
template can never be used by accident.

  python -m upft.launch --data R/prep --model R/base-hf --out R/model-openrlhf --gpus 8 [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from upft.runio import UserError, cli, read_jsonl


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="train.jsonl from data_prep/build.py, or its folder")
    ap.add_argument("--model", required=True, help="HF folder or hub id (see upft.models for GGUF)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs per node")
    ap.add_argument("--nnodes", type=int, default=1)
    ap.add_argument("--node-rank", type=int, default=0)
    ap.add_argument("--master-addr", default="127.0.0.1")
    ap.add_argument("--master-port", type=int, default=29500)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--scheduler", default="constant_with_warmup")
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch")
    ap.add_argument("--micro-batch", type=int, default=1, help="per GPU")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--zero-stage", type=int, default=3)
    ap.add_argument("--no-adam-offload", action="store_true")
    ap.add_argument("--attn", default="flash_attention_2", help="flash_attention_2, sdpa or eager")
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--tensorboard", help="TensorBoard log folder")
    ap.add_argument("--wandb-project", help="log to wandb (needs WANDB_API_KEY)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    ap.add_argument("extra", nargs="*", help="further OpenRLHF flags, after --")
    return ap.parse_args(argv)


def check_data(path: Path) -> None:
    """The file must be ours: chat-message prompts and responses that OpenRLHF renders itself."""
    if not path.is_file():
        raise UserError(f"training data not found: {path}")
    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{path}: no training rows")
    for key in ("prompt", "response"):
        if not isinstance(rows[0].get(key), list):
            raise UserError(f"{path}: rows need a '{key}' message list (build the file with data_prep/build.py)")
    if "," in str(path) or "@" in str(path):
        raise UserError(f"{path}: OpenRLHF splits dataset paths on ',' and '@'; rename it")


def command(a: argparse.Namespace) -> list[str]:
    data = Path(a.data) / "train.jsonl" if Path(a.data).is_dir() else Path(a.data)
    check_data(data)
    world = a.gpus * a.nnodes
    if a.batch_size % (a.micro_batch * world):
        raise UserError(f"--batch-size {a.batch_size} must be a multiple of micro-batch x GPUs = {a.micro_batch * world}")
    if a.nnodes > 1:
        launcher = ["torchrun", f"--nproc_per_node={a.gpus}", f"--nnodes={a.nnodes}", f"--node_rank={a.node_rank}",
                    f"--master_addr={a.master_addr}", f"--master_port={a.master_port}", "-m"]
    else:
        launcher = ["deepspeed", f"--num_gpus={a.gpus}", f"--master_port={a.master_port}", "--module"]
    cmd = launcher + [
        "openrlhf.cli.train_sft",
        "--model.model_name_or_path", a.model,
        "--data.dataset", str(data.resolve()),
        "--data.input_key", "prompt", "--data.output_key", "response", "--data.apply_chat_template",
        "--data.max_len", str(a.max_len),
        "--train.max_epochs", str(a.epochs), "--train.batch_size", str(a.batch_size),
        "--train.micro_batch_size", str(a.micro_batch), "--train.seed", str(a.seed),
        "--adam.lr", str(a.lr), "--lr_scheduler", a.scheduler, "--lr_warmup_ratio", str(a.warmup_ratio),
        "--ds.zero_stage", str(a.zero_stage), "--ds.param_dtype", "bf16", "--ds.attn_implementation", a.attn,
        "--ckpt.output_dir", a.out, "--ckpt.save_steps", "-1", "--logger.logging_steps", "1",
    ]
    if not a.no_adam_offload:
        cmd.append("--ds.adam_offload")
    if not a.no_gradient_checkpointing:
        cmd.append("--model.gradient_checkpointing_enable")
    if a.lora_rank:
        cmd += ["--ds.lora.rank", str(a.lora_rank), "--ds.lora.alpha", str(a.lora_alpha)]
    if a.tensorboard:  # run_name is part of the log path; OpenRLHF's default holds a ':'
        cmd += ["--logger.tensorboard_dir", a.tensorboard, "--logger.wandb.run_name", Path(a.out).name]
    if a.wandb_project:
        cmd += ["--logger.wandb.key", os.environ.get("WANDB_API_KEY", ""), "--logger.wandb.project", a.wandb_project]
    return cmd + a.extra


def main(argv: list[str] | None) -> None:
    a = parse(argv)
    cmd = command(a)
    key = os.environ.get("WANDB_API_KEY")
    print(shlex.join("***" if key and c == key else c for c in cmd), flush=True)
    if not a.dry_run:
        try:
            os.execvp(cmd[0], cmd)
        except FileNotFoundError:
            raise UserError(f"{cmd[0]} not found: install the GPU requirements (requirements-gpu.txt)") from None


if __name__ == "__main__":
    cli(main)
