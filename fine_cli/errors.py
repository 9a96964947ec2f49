"""The one exception type that the CLI turns into a one-sentence message and an exit code."""

from __future__ import annotations


class FineError(Exception):
    """A problem with the user's input: the message names it and says how to fix it.

    ``exit_code`` follows a small convention: 2 = bad usage or config, 3 = bad input file,
    4 = failure while running.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
