"""Which copy of the library a workflow's jobs run: the one beside its Snakefile."""

from __future__ import annotations

import os
import sys


def use_checkout(src: str) -> None:
    """Put ``src`` (a checkout's ``src/`` folder) first on ``sys.path`` and on ``PYTHONPATH``.

    The Snakefile calls this, so input functions and every rule script (a child process, also
    under ``--sdm conda`` and on SLURM nodes, which re-read the Snakefile) import the library
    beside the workflow, even when another copy is installed.
    """
    if sys.path[:1] != [src]:
        sys.path.insert(0, src)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join([src] + rest)
