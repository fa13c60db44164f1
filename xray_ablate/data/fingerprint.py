"""Content fingerprint of a dataset folder, cheap to recompute when nothing changed.

The fingerprint hashes the relative path and content of every source file (those under
``subdirs`` whose suffix is in ``suffixes``), so the same data on two machines has the same
fingerprint (runs stay comparable), any edited, added or removed source file changes it, and a
README or notes beside the data do not. Links that loop and links to nothing are not read; their
paths are hashed, as ingest counts them. File digests are remembered by (size, mtime, ctime,
inode): a warm call only stats the files. Size and mtime alone let a file edited in place and
given its old time back (cp -p, tar -x, rsync -a) keep its old digest, and the cache its old
images and labels; no program can set ctime back.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xray_ablate.data.atomic import write_text_atomic
from xray_ablate.data.walk import list_files

_CHUNK = 1 << 20


def _memo_path(root: Path, cache_dir: Path) -> Path:
    return Path(cache_dir) / "filehashes" / (hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest() + ".json")


def file_digests(root: Path, cache_dir: Path) -> dict[Path, str]:
    """Content digest of each file the last fingerprint of ``root`` read, keyed by its absolute
    path through ``root`` (os.path.abspath: a link keeps its own path, as ingest records it)."""
    base = Path(os.path.abspath(root))
    try:
        return {base / rel: entry[-1] for rel, entry in json.loads(_memo_path(root, cache_dir).read_text()).items()}
    except (OSError, ValueError):
        return {}


def dataset_fingerprint(root: Path, cache_dir: Path, subdirs: tuple[str, ...] = ("",),
                        suffixes: tuple[str, ...] | None = None) -> str:
    root = Path(root).resolve()
    memo_path = _memo_path(root, cache_dir)
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    fresh, total = {}, hashlib.sha256()
    listings = [list_files(root / sub) for sub in subdirs if (root / sub).is_dir()]
    wanted = [(path.relative_to(root).as_posix(), stat) for listing in listings
              for path, stat in listing.files.items()
              if suffixes is None or path.suffix.lower() in suffixes]
    files = sorted((rel, stat) for rel, stat in wanted if stat is not None)
    unread = sorted([rel for rel, stat in wanted if stat is None]
                    + [path.relative_to(root).as_posix() for listing in listings for path in listing.loops])
    todo = [rel for rel, stat in files if (memo.get(rel) or [None])[:-1] != _identity(stat)]
    # Hash new and changed files in threads: file reads and blake2b release the GIL.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = dict(zip(todo, pool.map(lambda rel: _readable_digest(root / rel), todo), strict=True))
    for rel, stat in files:
        digest = digests[rel] if rel in digests else memo[rel][-1]
        if digest is None:
            unread.append(rel)
            continue
        fresh[rel] = [*_identity(stat), digest]
        total.update(f"{rel}\0{digest}\n".encode())
    for rel in sorted(unread):  # a loop added or removed changes what ingest counts
        total.update(f"{rel}\0unread\n".encode())
    if todo or len(fresh) != len(memo):
        write_text_atomic(memo_path, json.dumps(fresh))
    return total.hexdigest()[:16]


def _identity(stat: os.stat_result) -> list[int]:
    """What says a file is unchanged since its digest was taken."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _readable_digest(path: Path) -> str | None:
    """None for a file this user cannot read: ingest excludes it and says why; the rest goes on."""
    try:
        return file_digest(path)
    except OSError:
        return None


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
