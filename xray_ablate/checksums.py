"""SHA-256 of files, and the check that a file is the one the code expects before it is read."""

from __future__ import annotations

import hashlib
from pathlib import Path

from xray_ablate.errors import UserError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> Path:
    """``path`` if its SHA-256 starts with ``expected`` (a full hash or a published prefix),
    else a UserError naming the file and both hashes. Nothing is loaded before this passes."""
    actual = sha256_file(path)
    if not actual.startswith(expected.lower()):
        raise UserError(f"{what} {path} has SHA-256 {actual}, expected {expected}: the file is not the "
                        "one this project was built for (corrupt, truncated or replaced); delete it and "
                        "fetch it again")
    return path
