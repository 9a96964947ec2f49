"""The exceptions that the library raises for problems a user can fix.

Each message is one sentence that names the problem and the fix. The library never
decides exit codes: ``fine_cli.cli`` maps these classes to them (``EXIT_CODES`` there).
"""

from __future__ import annotations

import reprlib
from typing import Any

# Characters of a bad value that a message echoes back: a huge value (a YAML alias bomb,
# a megabyte of metadata) is cut, and never rendered in full to be cut.
MAX_ECHO = 80
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = MAX_ECHO, MAX_ECHO, MAX_ECHO


def echo(value: Any) -> str:
    """A short repr of ``value`` for a message: at most about MAX_ECHO characters, and
    computed in bounded time whatever the value's size or nesting."""
    return shorten(_REPR.repr(value))


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters, ending in '...' when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FineError(Exception):
    """A problem with the user's input or run; the message names it and the fix."""


class ConfigError(FineError):
    """A configuration or argument is wrong: an unknown key, a bad value, a bad option."""


class InputFileError(FineError):
    """An input file is missing, foreign, corrupt, of another schema or inconsistent."""


class RunError(FineError):
    """The run itself failed: training diverged, an output could not be written."""


__all__ = [
    "MAX_ECHO",
    "ConfigError",
    "FineError",
    "InputFileError",
    "RunError",
    "echo",
    "shorten",
]
