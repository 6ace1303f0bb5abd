"""Errors shown to the user as one line (exit code 2), never as a traceback."""

from __future__ import annotations


class QbenchError(Exception):
    """A user-facing error: bad input, missing data, corrupt file.

    The message must fit on one line and name the bad value and what is allowed.
    The CLI prints ``error: <message>`` on stderr and exits with code 2.
    """


def choice_error(what: str, value: object, allowed) -> QbenchError:
    """Build the standard 'unknown X' error naming the value and the allowed ones."""
    allowed = sorted(str(a) for a in allowed)
    return QbenchError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line reports."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
