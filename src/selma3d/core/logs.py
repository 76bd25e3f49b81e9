"""Logging set-up shared by rule scripts and the CLI (no heavy imports: CPU rules lack torch)."""

from __future__ import annotations

import logging


def setup_logging(path: str | None = None, level: int = logging.INFO) -> None:
    """Log to a file (a rule's log) or stderr, with timestamps."""
    handlers = [logging.FileHandler(path, mode="a")] if path else [logging.StreamHandler()]
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def start_rule(smk) -> None:
    """The prologue of every rule script: stderr and logging go to the rule's log file.

    The Snakefile puts this checkout's ``src/`` first on ``PYTHONPATH``, so a rule always runs
    the library beside its workflow (not another installed copy).
    """
    import sys

    if smk.log:
        sys.stderr = open(smk.log[0], "w", buffering=1)
    setup_logging()
