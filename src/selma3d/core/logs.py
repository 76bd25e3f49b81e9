"""Logging set-up shared by rule scripts and the CLI (no heavy imports: CPU rules lack torch)."""

from __future__ import annotations

import logging


def setup_logging(path: str | None = None, level: int = logging.INFO) -> None:
    """Log to a file (a rule's log) or stderr, with timestamps."""
    handlers = [logging.FileHandler(path, mode="a")] if path else [logging.StreamHandler()]
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
