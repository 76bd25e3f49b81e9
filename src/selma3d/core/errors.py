"""Errors raised on bad input: the message names the file, the expectation and the finding."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input data or configuration, with the offending file named."""

    def __init__(self, path: str | Path | None, expected: str, found: str):
        self.path = None if path is None else str(path)
        self.expected = expected
        self.found = found
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}expected {expected}, found {found}")

    def __reduce__(self):  # survive the trip back from a worker process
        return (type(self), (self.path, self.expected, self.found))
