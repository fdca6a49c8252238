"""Sample one (or n) responses per training question from the model being tuned. Thin launcher of upft/commands/sample.py (also `upft-sample`)."""

from upft.commands.sample import entry

if __name__ == "__main__":
    entry()
