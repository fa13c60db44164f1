"""The files under a dataset folder, as ingest and the fingerprint both see them.

Links are followed (images/ may be a view of links: DVC, git-annex), folder links too, but a
link that loops is reported instead: a link that never resolves (``self.png -> self.png``, a
chain ``a -> b -> a``), or a folder link into a folder that holds it (``loopdir -> .``, ``up ->
..``) or that the walk already went through on its way down, which would otherwise be walked
again and again. Names starting with '.' are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from xray_ablate.errors import UserError


@dataclass
class Listing:
    files: dict[Path, os.stat_result | None] = field(default_factory=dict)  # None: a link to nothing
    loops: dict[Path, str] = field(default_factory=dict)  # the link -> why it is not followed


def list_files(start: Path) -> Listing:
    """Every regular file under ``start`` (by the path through the links that lead to it), the
    links to nothing, and the loops. Pipes and devices are left out: reading one may never end."""
    listing = Listing()
    stack = [(Path(start), (os.path.realpath(start),))]  # a folder and the real folders above it
    while stack:
        folder, chain = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        _visit(entry, chain, listing, stack)
        except PermissionError:  # its files are unknown, so none can be excluded by name: stop
            raise UserError(f"cannot list the folder {folder}: permission denied for this user") from None
    return listing


def never_resolves(path: Path) -> bool:
    """Whether ``path`` is a link that loops: the system gives up resolving it (ELOOP)."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def _visit(entry: os.DirEntry, chain: tuple[str, ...], listing: Listing, stack: list) -> None:
    path = Path(entry.path)
    try:
        if not entry.is_dir():
            info = entry.stat()
            if stat.S_ISREG(info.st_mode):
                listing.files[path] = info
            return
    except FileNotFoundError:
        listing.files[path] = None
        return
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        listing.loops[path] = f"link to {os.readlink(path)!r} never resolves: a symbolic link loop"
        return
    real = os.path.realpath(path)
    if os.path.commonpath([real, chain[-1]]) == real:
        listing.loops[path] = f"folder link to {real}, a folder it lies in: not followed (it loops)"
    elif real in chain:
        listing.loops[path] = f"folder link to {real}, already walked on the way here: not followed (it loops)"
    else:
        stack.append((path, (*chain, real)))
