"""Folders the project generated: marked when written, and the only non-empty folders it replaces.

A generated folder (synthetic dataset, report) carries ``MARKER``. Replacing or deleting a folder
is allowed when it is missing, empty, or carries the marker; anything else belongs to the user
and is a UserError naming the folder, so a wrong path never costs data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from xray_ablate.errors import UserError

MARKER = ".xray-ablate-generated"


def _is_ours(path: Path) -> bool:
    if not path.exists():
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    return (path / MARKER).is_file() or not any(path.iterdir())


def check_replaceable(path: Path, what: str) -> None:
    """A UserError unless ``path`` is missing, an empty folder, or a folder with the marker."""
    path = Path(path)
    if not _is_ours(path):
        raise UserError(
            f"{path} holds files this project did not create (no {MARKER} in it): refusing to "
            f"replace it with {what}; choose another folder, or empty or delete it yourself"
        )


def claim_dir(path: Path, what: str) -> Path:
    """Create ``path`` (or take an empty or marked one) and mark it as generated ``what``."""
    path = Path(path)
    check_replaceable(path, what)
    path.mkdir(parents=True, exist_ok=True)
    _mark(path, what)
    return path


def _mark(path: Path, what: str) -> None:
    (path / MARKER).write_text(json.dumps({"generated_by": "xray-ablate", "what": what}) + "\n")


def new_sibling(target: Path) -> Path:
    """An empty hidden folder next to ``target``, to build its replacement in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))


def replace_owned_dir(new: Path, target: Path, what: str) -> Path:
    """Swap the finished folder ``new`` in for ``target`` (marked), so ``target`` never holds a
    mix of old and new; refused before anything moves when ``target`` is not ours."""
    new, target = Path(new), Path(target)
    check_replaceable(target, what)
    _mark(new, what)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
