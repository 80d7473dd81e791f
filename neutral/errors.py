"""The errors a user sees, and how every command-line entry point reports them.

`UserError` is bad input a user can fix (a missing file, a bad config value, a checkpoint that does not
fit): launch.py, scripts/*.py and the converters print it as one line `error: <message>` on stderr and
exit with code 2, without a traceback. Every other exception is a bug and keeps its traceback.
`Interrupted` (Ctrl-C / SIGTERM handled cleanly, e.g. by the trainer) prints its message and exits 130.

    def main(argv=None) -> int: ...            # raises UserError subclasses on bad input
    if __name__ == "__main__":
        run_cli(main)                          # error: ... / exit 2
"""
from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


class UserError(Exception):
    """Bad input a user can fix; printed as one line `error: <message>` and exit code 2."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a config names) does not exist; the message says how to get it."""


class Interrupted(Exception):
    """The run was stopped on request (SIGINT / SIGTERM) after saving what it had; exit code 130."""


def report(fn: Callable[..., Any], *args: Any) -> int:
    """Call fn(*args) and turn the result into an exit code: its int result (0 for anything else),
    2 after printing `error: <message>` for a UserError, 130 after printing the message of an Interrupted
    (or `interrupted` for a bare KeyboardInterrupt). Other exceptions propagate with their traceback."""
    try:
        result = fn(*args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return INTERRUPTED_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run_cli(fn: Callable[..., Any], *args: Any) -> NoReturn:
    """The `if __name__ == "__main__"` of every entry point: sys.exit(report(fn, *args))."""
    sys.exit(report(fn, *args))
