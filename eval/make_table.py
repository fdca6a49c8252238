"""Combine evaluation runs into one paper-style markdown table (accuracy %, one row per run). Thin launcher of upft/commands/table.py (also `upft-table`)."""

from upft.commands.table import entry

if __name__ == "__main__":
    entry()
