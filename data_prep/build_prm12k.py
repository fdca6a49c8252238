"""Build PRM-12K (MATH minus MATH-500). Thin launcher of upft/commands/prm12k.py (also `upft-prm12k`)."""

from upft.commands.prm12k import entry

if __name__ == "__main__":
    entry()
