"""Build a training set from sampled responses. Thin launcher of upft/commands/prep.py (also `upft-prep`)."""

from upft.commands.prep import entry

if __name__ == "__main__":
    entry()
