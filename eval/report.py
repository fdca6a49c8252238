"""Report finished runs as the paper's Tables 1-2 (mean ± std over seeds) plus figures. Thin launcher of upft/commands/report.py (also `upft-report`)."""

from upft.commands.report import entry

if __name__ == "__main__":
    entry()
