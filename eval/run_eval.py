"""Evaluate a model on math/science benchmarks, graded with math-verify. Thin launcher of upft/commands/evaluate.py (also `upft-evaluate`)."""

from upft.commands.evaluate import entry

if __name__ == "__main__":
    entry()
