"""Hold out a fixed, seeded dev split of training questions, to tune L, p, LR and epochs on. Thin launcher of upft/commands/split_dev.py (also `upft-split-dev`)."""

from upft.commands.split_dev import entry

if __name__ == "__main__":
    entry()
