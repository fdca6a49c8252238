"""Build (and run) the OpenRLHF SFT command for a prepared training set.

``scripts/train_sft.sh`` calls this. One node with N GPUs runs under the ``deepspeed``
launcher; several nodes under ``torchrun`` (give --nnodes/--node-rank/--master-addr on each
node). The paper's settings are the defaults. The chat template always comes from the model
folder (``--data.apply_chat_template``), so OpenRLHF's "User: {}\\nAssistant: " default
template can never be used by accident.

  python -m upft.openrlhf_launcher --data R/prep --model R/base-hf --out R/model-openrlhf --gpus 8 [--dry-run]
  python -m upft.openrlhf_launcher --config configs/x.yaml --data R/prep --model M --out R/model   (flags override the file)

OpenRLHF runs through ``upft.openrlhf_sft``, which sets the loss weighting (``--loss-avg``:
``sample``, the authors' per-row mean, by default; ``token`` is OpenRLHF's own default), turns
off cuDNN attention (NaN gradients on padded batches, see ``upft.local_trainer``) and stops on a
non-finite loss or gradient norm. The model is written to OUT.tmp and becomes OUT only after
``upft.health.check_model`` passes (finite weights, non-degenerate greedy answers).

The run is recorded like our other stages: OUT/manifest.json (settings fingerprint, wall time,
the model check), OUT/openrlhf.log (its console output) and OUT/train_log.jsonl (the loss
curve, read from the TensorBoard events OpenRLHF writes under OUT/tensorboard). A folder
holding a different run is refused; the same finished run is skipped. A failed run leaves no
OUT, only its log in OUT.failed.log.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from upft.configs import read_config
from upft.errors import UserError, cli
from upft.manifests import abandon_stage, begin_stage, release_stage, write_manifest
from upft.openrlhf_sft import STEP_TOKENS
from upft.runio import read_jsonl, sha256_file, write_jsonl
from upft.schema import add_flags, check_types, from_args, keys


# OpenRLHF settings that count something: their least value
COUNTS = {"gpus": 1, "nnodes": 1, "node_rank": 0, "master_port": 1, "epochs": 1, "batch_size": 1, "micro_batch": 1,
          "max_len": 3, "zero_stage": 0, "lora_rank": 0, "lora_alpha": 1, "data_procs": 0}


@dataclass
class OpenRLHFSettings:
    """OpenRLHF training on one or several nodes; the defaults are the paper's (METHOD.md, Table 3).
    The flags of this command and the ``train:`` section of an experiment config (trainer: openrlhf)."""

    gpus: int = field(default=1, metadata={"help": "GPUs per node"})
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    epochs: int = 1
    lr: float = 1e-6
    scheduler: str = "constant_with_warmup"
    warmup_ratio: float = 0.03
    batch_size: int = field(default=64, metadata={"help": "global batch"})
    micro_batch: int = field(default=1, metadata={"help": "per GPU"})
    max_len: int = 4096
    loss_avg: str = field(default="sample", metadata={
        "choices": ("sample", "token"),
        "help": "sample: each row's mean NLL averaged over rows (the authors' weighting); "
                "token: mean over all target tokens of the step (OpenRLHF's default)"})
    zero_stage: int = 3
    no_adam_offload: bool = False
    attn: str = field(default="flash_attention_2", metadata={"help": "flash_attention_2, sdpa or eager"})
    no_gradient_checkpointing: bool = False
    group_by_length: bool = field(default=False, metadata={
        "help": "each optimizer step's rows go into micro-batches sorted by length: the same step, less "
                "padding (see upft.openrlhf_sft)"})
    causal_attention: bool = field(default=False, metadata={
        "help": "right-padded micro-batches go to attention without their padding mask: the same outputs at "
                "every trained position, and SDPA's flash kernel instead of its memory-efficient one (see "
                "upft.openrlhf_sft)"})
    trained_logits: bool = field(default=False, metadata={
        "help": "the loss's log-probabilities from the trained positions' logits alone, not OpenRLHF's float32 "
                "logits of every position: the same loss, less GPU time and memory (see upft.openrlhf_sft)"})
    data_procs: int = field(default=0, metadata={
        "help": "processes OpenRLHF tokenizes the set with; 0: one per 20,000 rows, at most 8 (OpenRLHF's "
                "fixed 8 cost more than they save on small sets, see upft.openrlhf_sft)"})
    lora_rank: int = 0
    lora_alpha: int = 16
    tensorboard: str | None = field(default=None, metadata={"help": "TensorBoard log folder (default: OUT/tensorboard)"})
    wandb_project: str | None = field(default=None, metadata={"help": "log to wandb (needs WANDB_API_KEY)"})
    seed: int = 0

    def check(self) -> None:
        check_types(self, "train")
        for key, least in COUNTS.items():
            if getattr(self, key) < least:
                raise UserError(f"train.{key} must be at least {least}, got {getattr(self, key)}")
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise UserError(f"train.lr must be > 0 and warmup_ratio in [0, 1), got {self.lr} and {self.warmup_ratio}")
        if self.group_by_length and self.epochs > 1:  # OpenRLHF's steps can then span two epochs,
            # which the per-step sorting does not follow (upft.openrlhf_sft)
            raise UserError(f"train.group_by_length needs epochs: 1, got {self.epochs}")
        world = self.gpus * self.nnodes
        if self.batch_size % (self.micro_batch * world):
            raise UserError(f"batch_size {self.batch_size} must be a multiple of micro-batch x GPUs = "
                            f"{self.micro_batch * world}")


@dataclass
class Job:
    """One OpenRLHF run: what to train, where to, and how."""

    data: str  # train.jsonl from data_prep/build.py, or its folder
    model: str
    out: str
    settings: OpenRLHFSettings
    extra: list[str] = field(default_factory=list)  # further OpenRLHF flags, passed as they are
    force: bool = False
    dry_run: bool = False

    @property
    def data_file(self) -> Path:
        return Path(self.data) / "train.jsonl" if Path(self.data).is_dir() else Path(self.data)

    @property
    def staging_dir(self) -> str:
        """Where OpenRLHF writes; renamed to ``out`` once the model passes its check."""
        return f"{self.out}.tmp"

    @property
    def tensorboard_dir(self) -> str:
        return self.settings.tensorboard or str(Path(self.staging_dir) / "tensorboard")


def parse(argv: list[str] | None) -> Job:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML of these options (keys as flags without '--'; a 'train:' section "
                                     "of an experiment config works too); flags given here override it")
    ap.add_argument("--data", help="train.jsonl from data_prep/build.py, or its folder")
    ap.add_argument("--model", help="HF folder, hub id, GGUF file or embedded model name (GGUF is converted)")
    ap.add_argument("--out")
    add_flags(ap, OpenRLHFSettings)
    ap.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    ap.add_argument("--force", action="store_true", help="replace a different run in --out")
    ap.add_argument("extra", nargs="*", help="further OpenRLHF flags, after --")
    a = ap.parse_args(argv)
    if a.config:
        ap.set_defaults(**config_defaults(a.config))
        a = ap.parse_args(argv)
    for key in ("data", "model", "out"):
        if getattr(a, key) is None:
            raise UserError(f"--{key} is required (on the command line or in --config)")
    settings = from_args(OpenRLHFSettings, a)
    settings.check()
    return Job(a.data, a.model, a.out, settings, a.extra, a.force, a.dry_run)


def config_defaults(path: str) -> dict:
    """Option defaults from a YAML file; an unknown key is an error, not silently ignored."""
    cfg = read_config(path)
    cfg = dict(cfg.get("train", cfg))
    if cfg.pop("trainer", "openrlhf") != "openrlhf":  # an experiment config's train section names its trainer
        raise UserError(f"{path}: train.trainer is not 'openrlhf'; use scripts/run_experiment.sh for the local trainer")
    known = keys(OpenRLHFSettings)
    out = {}
    for key, value in cfg.items():
        dest = key.replace("-", "_")
        if dest not in known:
            raise UserError(f"{path}: unknown training option '{key}' (known: {', '.join(sorted(known))})")
        out[dest] = value
    return out


def check_data(path: Path) -> int:
    """The file must be ours: chat-message prompts and responses that OpenRLHF renders itself.
    Returns its number of rows."""
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
    return len(rows)


def where_free(arg: str) -> str:
    """A command-line argument as the run's fingerprint sees it: which GPUs and which port a run
    happened to use do not change the model, so a run redone on other GPUs is the same run."""
    if arg.startswith("--include=localhost:"):  # deepspeed's GPU list: keep how many, not which
        return f"--num_gpus={len(arg.split(':', 1)[1].split(','))}"
    return "--master_port=*" if arg.startswith("--master_port=") else arg


def command(job: Job) -> list[str]:
    """The OpenRLHF command line of a job (deepspeed on one node, torchrun across nodes)."""
    a, data = job.settings, job.data_file
    procs = a.data_procs or min(8, 1 + check_data(data) // 20_000)
    if a.nnodes > 1:
        launcher = ["torchrun", f"--nproc_per_node={a.gpus}", f"--nnodes={a.nnodes}", f"--node_rank={a.node_rank}",
                    f"--master_addr={a.master_addr}", f"--master_port={a.master_port}", "-m"]
    else:
        # deepspeed ignores CUDA_VISIBLE_DEVICES once --num_gpus is given and takes GPUs 0..N-1,
        # so two runs pinned to different GPUs would share GPU 0; name the visible ones instead
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        where = f"--include=localhost:{','.join(visible[:a.gpus])}" if visible else f"--num_gpus={a.gpus}"
        launcher = ["deepspeed", where, f"--master_port={a.master_port}", "--module"]
    cmd = launcher + [
        "upft.openrlhf_sft", "--upft.loss_avg", a.loss_avg, "--upft.data_procs", str(procs),
        "--model.model_name_or_path", job.model,
        "--data.dataset", str(data.resolve()),
        "--data.input_key", "prompt", "--data.output_key", "response", "--data.apply_chat_template",
        "--data.max_len", str(a.max_len),
        "--train.max_epochs", str(a.epochs), "--train.batch_size", str(a.batch_size),
        "--train.micro_batch_size", str(a.micro_batch), "--train.seed", str(a.seed),
        "--adam.lr", str(a.lr), "--lr_scheduler", a.scheduler, "--lr_warmup_ratio", str(a.warmup_ratio),
        "--ds.zero_stage", str(a.zero_stage), "--ds.param_dtype", "bf16", "--ds.attn_implementation", a.attn,
        "--ckpt.output_dir", job.staging_dir, "--ckpt.save_steps", "-1", "--logger.logging_steps", "1",
    ]
    if not a.no_adam_offload:
        cmd.append("--ds.adam_offload")
    if not a.no_gradient_checkpointing:
        cmd.append("--model.gradient_checkpointing_enable")
    if a.group_by_length:
        cmd.append("--upft.group_by_length")
    if a.causal_attention:
        cmd.append("--upft.causal_attention")
    if a.trained_logits:
        cmd.append("--upft.trained_logits")
    if a.lora_rank:
        cmd += ["--ds.lora.rank", str(a.lora_rank), "--ds.lora.alpha", str(a.lora_alpha)]
    # run_name is part of the TensorBoard path; OpenRLHF's default holds a ':'
    cmd += ["--logger.tensorboard_dir", job.tensorboard_dir, "--logger.wandb.run_name", Path(job.out).name]
    if a.wandb_project:
        cmd += ["--logger.wandb.key", os.environ.get("WANDB_API_KEY", ""), "--logger.wandb.project", a.wandb_project]
    return cmd + job.extra


def check_gpus(wanted: int) -> None:
    import torch

    have = torch.cuda.device_count()
    if wanted > have:
        raise UserError(f"asked for {wanted} GPUs on this node but {have} are visible")


def compare_losses(one: Path, other: Path) -> dict:
    """Two runs' per-step losses (their ``train_log.jsonl``) side by side: runs that should take the
    same steps (1 GPU vs ZeRO-3 on 2; with and without --group-by-length) must follow each other."""
    a, b = ([r["loss_mean"] for r in read_jsonl(f) if "loss_mean" in r] for f in (one, other))
    diffs = [abs(x - y) for x, y in zip(a, b)]
    return {"steps": [len(a), len(b)], "max_abs_diff": round(max(diffs), 4) if diffs else None,
            "mean_abs_diff": round(sum(diffs) / len(diffs), 4) if diffs else None, "losses": [a, b]}


def loss_curve(tb_dir: str) -> list[dict]:
    """The training loss per logged step, read from OpenRLHF's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, dict] = {}
    for events in sorted(Path(tb_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("train/"):
                for e in acc.Scalars(tag):
                    point = points.setdefault(e.step, {"step": e.step})
                    point[tag.removeprefix("train/")] = e.value
                    point["wall_time"] = max(point.get("wall_time", 0.0), e.wall_time)
    return [points[k] for k in sorted(points)]


def timing(curve: list[dict], t0: float, t_trained: float, t_checked: float, log: str) -> dict:
    """Where a run's wall time went, from the loss curve's event times and OpenRLHF's log: launch to
    the first logged step, the steps, the rest (saving), our model check; and tuning tokens per
    second per GPU, from the tokens rank 0 trained up to each logged step (``upft.openrlhf_sft.
    counting_tokens``; None where a logged step lacks its count). ``tokens_per_s_per_gpu`` is the rate in
    steady state, over the later half of the logged steps (the last (n-1)//2 of n, timed from the end of
    the one before them; the first steps may run slower while memory is allocated for new shapes),
    ``tokens_per_s_per_gpu_all_steps`` the rate over every step after the first. The counts are what
    OpenRLHF trained: a last window of rows too small for a whole optimizer step is left out, so a set
    whose rows are not a multiple of the step's has fewer than its tuning tokens (lease 23: 1856 of
    1918 rows). Where the log has our phase lines
    (``upft.openrlhf_sft.mark``), ``phases_s`` splits the first and last parts further: launch
    (DeepSpeed's launcher until our process starts), load (imports, process group, model, tokenizer,
    data), DeepSpeed init (engine and optimizer, ``op_load_s`` of it loading or building ops), first
    step (the training loop's start to the first logged step), save, exit (after the save)."""
    ops = sum(float(x) for x in re.findall(r"Time to load \w+ op: ([\d.]+) seconds", log))
    out = {"launch_to_first_step_s": None, "steps_s": None, "after_last_step_s": None,
           "op_load_s": round(ops, 1), "model_check_s": round(t_checked - t_trained, 1), "tokens_per_s_per_gpu": None,
           "tokens_per_s_per_gpu_all_steps": None, "steady_state_steps": None}
    logged = [p for p in curve if "wall_time" in p]
    times = [p["wall_time"] for p in logged]
    if len(times) >= 2:
        first, last = times[0], times[-1]
        out.update(launch_to_first_step_s=round(first - t0, 1), steps_s=round(last - first, 1),
                   after_last_step_s=round(t_trained - last, 1))
    counted = [p.get(STEP_TOKENS) for p in logged]
    if len(logged) >= 2 and None not in counted:
        out["tokens_per_s_per_gpu_all_steps"] = round(sum(counted[1:]) / (times[-1] - times[0]))
    if len(logged) >= 3 and None not in counted:
        half, last = len(logged) // 2, logged[-1]["step"]  # logged points half+1.. (0-based), from the end of half
        out.update(tokens_per_s_per_gpu=round(sum(counted[half + 1:]) / (times[-1] - times[half])),
                   steady_state_steps=f"{logged[half]['step'] + 1}-{last} of {last}")
    mark: dict[str, float] = {}
    for name, at in re.findall(r"^\[upft\] phase (\w+) ([\d.]+)$", log, re.M):
        mark.setdefault(name, float(at))
    spans = {"launch": (t0, mark.get("start")), "load": (mark.get("start"), mark.get("prepare_start")),
             "deepspeed_init": (mark.get("prepare_start"), mark.get("prepare_end")),
             "first_step": (mark.get("fit_start"), times[0] if times else None),
             "save": (mark.get("save_start"), mark.get("save_end")), "exit": (mark.get("save_end"), t_trained)}
    if mark:
        out["phases_s"] = {k: round(b - a, 1) if a is not None and b is not None else None
                           for k, (a, b) in spans.items()}
    return out


def accept_model(path: Path, base: str, rows: list[dict]) -> dict:
    """Load the saved model (on a GPU when there is one) and run the health check on it; for a set
    with prefix rows, first measure the base model's answer lengths (see ``upft.health``)."""
    from upft.health import answer_lengths, check_model, early_stop_limit
    from upft.models import load_model, load_tokenizer

    early, limit = None, early_stop_limit(rows)
    if limit:
        early = (answer_lengths(load_model(base), load_tokenizer(base), limit), limit)
    return check_model(load_model(str(path)), load_tokenizer(str(path)), early)


def run(cmd: list[str], log: Path) -> None:
    """Run OpenRLHF, teeing its output: the user sees progress, the folder keeps the log."""
    try:
        with log.open("w", encoding="utf-8") as f:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: install the GPU requirements (requirements-gpu.txt)") from None
    if proc.wait() != 0:
        # our guards in upft.openrlhf_sft say why in an "error: " line (a launcher may prefix the rank)
        errors = [ln.split("error: ", 1)[1].strip() for ln in log.read_text(encoding="utf-8").splitlines()
                  if "error: " in ln]
        raise UserError(errors[0] if errors else f"OpenRLHF exited with status {proc.returncode}")


def main(argv: list[str] | None) -> None:
    train(parse(argv))


def train(job: Job) -> None:
    """Run a job: OpenRLHF into OUT.tmp, the model check, then OUT with its manifest and loss curve."""
    from upft.models import resolve_model

    job.settings.check()
    check_data(job.data_file)
    job.model = resolve_model(job.model)  # OpenRLHF needs an HF folder or hub id; a GGUF is converted once
    cmd = command(job)
    key = os.environ.get("WANDB_API_KEY")
    print(shlex.join("***" if key and c == key else c for c in cmd), flush=True)
    if job.dry_run:
        return
    check_gpus(job.settings.gpus)
    from upft.stages import recorded_style

    settings = {"command": [where_free(c) for c in cmd if c != key], "data_sha256": sha256_file(job.data_file),
                "style": recorded_style(job.data_file.parent)}  # carried to evaluation (see upft.stages)
    out, tmp = Path(job.out), Path(job.staging_dir)
    rank = job.settings.node_rank
    if rank == 0 and begin_stage(out, settings, ["config.json"], job.force):
        print(f"[skip] {out} already holds this run", file=sys.stderr)
        return
    shutil.rmtree(tmp, ignore_errors=True)  # OpenRLHF cannot resume a half-written model
    tmp.mkdir(parents=True)
    t0 = time.time()
    try:
        run(cmd, tmp / "openrlhf.log")
        if rank != 0:
            return
        t_trained = time.time()
        wall = t_trained - t0
        curve = loss_curve(job.tensorboard_dir)
        rows = read_jsonl(job.data_file)
        health = accept_model(tmp, job.model, rows)
        took = timing(curve, t0, t_trained, time.time(), (tmp / "openrlhf.log").read_text(errors="replace"))
    except UserError as e:
        failed = Path(f"{out}.failed.log")
        if (tmp / "openrlhf.log").exists():
            shutil.move(tmp / "openrlhf.log", failed)
        shutil.rmtree(tmp, ignore_errors=True)
        abandon_stage(out)
        raise UserError(f"{e} (OpenRLHF's log: {failed})") from None
    write_jsonl(tmp / "train_log.jsonl", curve)
    write_manifest(tmp, "train-openrlhf", settings, wall_s=wall, steps=len(curve), loss_avg=job.settings.loss_avg,
                   nonfinite_steps=0, model_check=health, timing=took)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    release_stage(out)


def entry() -> None:
    """The console entry point (``upft-train-openrlhf``)."""
    cli(main)


if __name__ == "__main__":
    entry()
