"""Prefix self-consistency of a model's solutions and a suggested L. Thin launcher of upft/commands/prefix_analysis.py (also `upft-prefix-analysis`)."""

from upft.commands.prefix_analysis import entry

if __name__ == "__main__":
    entry()
