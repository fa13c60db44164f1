"""Write files so that readers see the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# mkstemp creates files 0600; a cache shared by a group needs the mode the umask gives.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temp_path_beside(path: Path) -> Path:
    """An empty file ``.<name>.<random>.tmp`` next to ``path``, with the umask's usual mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    return Path(name)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
