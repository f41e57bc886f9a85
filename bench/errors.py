"""Errors with an exit code. The CLI prints their message as one line, without a traceback.

Exit codes (house rule): 2 for bad input, 1 for a failed check, 0 for success.
"""


class TwinbenchError(Exception):
    """Base class: a message meant for the user, and the exit code that goes with it."""

    exit_code = 1


class UserError(TwinbenchError):
    """Bad input: a path, a value or an option the user can fix. Exit code 2."""

    exit_code = 2


class CheckFailed(TwinbenchError):
    """A check ran and failed (parity out of tolerance, manifest changed, regression). Exit 1."""

    exit_code = 1


class WorkerError(TwinbenchError):
    """A framework worker crashed or failed. Exit 1 unless it reported a user error."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int = 1, *, killed_by: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.killed_by = killed_by  # the signal's name when the worker was killed (SIGKILL, ...)


def one_line(message: str, *, tail: int = 3) -> str:
    """A multi-line error as one line for a record or a step table: the first line and the last
    ``tail`` non-empty lines after it (a worker's "last output:" block names what went wrong)."""
    # Traceback caret lines ("^^^^") carry nothing once joined.
    lines = [line.strip() for line in str(message).splitlines() if line.strip(" ^~")]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return lines[0] + " " + " | ".join(lines[1:][-tail:])
