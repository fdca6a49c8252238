"""Fine-tune on a prepared training set in one process (CPU or one GPU), on the HF Trainer.

For several GPUs or nodes use scripts/train_sft.sh (OpenRLHF + DeepSpeed) on the same file.

  python train/train_local.py --data runs/demo/prep-upft --model smollm2-135m-instruct --out runs/demo/model-upft
"""

from __future__ import annotations

import argparse

from upft.errors import cli
from upft.schema import add_flags, from_args
from upft.stages import run_train
from upft.local_trainer import TrainSettings


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="train.jsonl or the folder holding it")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    add_flags(ap, TrainSettings)  # every training setting is a flag, with the paper's default
    a = ap.parse_args(argv)
    settings = from_args(TrainSettings, a)
    settings.check()  # every value before the data or the model is touched
    run_train(a.data, a.model, a.out, settings, a.force)


def entry() -> None:
    """The console entry point (``upft-train-local``)."""
    cli(main)
