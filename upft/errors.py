"""The error convention of every command: a ``UserError`` is bad input or a refused run, shown
as one ``error: ...`` line with exit status 2 (``cli``), never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """Bad input or a refused operation: reported as one line, exit status 2."""


def cli(main: Callable[[list[str] | None], Any]) -> None:
    """Run an entry point; turn a UserError, or a path that cannot be used as asked, into one
    clear line on stderr and exit 2."""
    try:
        main(None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        # a path the user gave that cannot be written or read as asked (under a file, read-only)
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
        sys.exit(2)
