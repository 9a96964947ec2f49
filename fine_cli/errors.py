"""The exceptions that the library raises for problems a user can fix.

Each message is one sentence that names the problem and the fix. The library never
decides exit codes: ``fine_cli.cli`` maps these classes to them (``EXIT_CODES`` there).
"""

from __future__ import annotations


class FineError(Exception):
    """A problem with the user's input or run; the message names it and the fix."""


class ConfigError(FineError):
    """A configuration or argument is wrong: an unknown key, a bad value, a bad option."""


class InputFileError(FineError):
    """An input file is missing, foreign, corrupt, of another schema or inconsistent."""


class RunError(FineError):
    """The run itself failed: training diverged, an output could not be written."""


__all__ = ["ConfigError", "FineError", "InputFileError", "RunError"]
