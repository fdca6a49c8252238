"""Fine-tune on a prepared training set in one process (CPU or one GPU), on the HF Trainer. Thin launcher of upft/commands/train_local.py (also `upft-train-local`)."""

from upft.commands.train_local import entry

if __name__ == "__main__":
    entry()
