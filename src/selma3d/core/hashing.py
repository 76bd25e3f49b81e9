"""File checksums (SHA-256 hex digests, as manifests record them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | Path, h=None) -> str:
    """Hex digest of a file read in 1 MiB chunks; ``h`` continues a hash object already fed
    with earlier bytes (a resumed download) instead of starting a new SHA-256."""
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
