"""Write files so that readers see the old file or the whole new one, never a part; and check,
before any work, that a folder can be written at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from xray_ablate.errors import UserError

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


def check_writable(folder: Path, what: str, hint: str) -> None:
    """A UserError naming ``folder`` when this user cannot create files in it, or in the folder
    that would hold it when it does not exist yet (nothing is created here)."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {what} {folder}: {existing} is a file ({hint})")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == Path(os.path.abspath(folder)) else f" ({existing} is)"
        raise UserError(f"cannot write {what} {folder}: not writable for this user{where}; {hint}")
