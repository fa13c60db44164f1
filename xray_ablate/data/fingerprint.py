"""Content fingerprint of a dataset folder, cheap to recompute when nothing changed.

The fingerprint hashes every file's relative path and content, so the same data on two machines
has the same fingerprint (runs stay comparable) and any edited, added or removed file changes
it. File digests are remembered by (size, mtime): a warm call only stats the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from xray_ablate.data.atomic import write_text_atomic

_CHUNK = 1 << 20


def dataset_fingerprint(root: Path, cache_dir: Path) -> str:
    root = Path(root).resolve()
    memo_path = Path(cache_dir) / "filehashes" / (hashlib.sha1(str(root).encode()).hexdigest() + ".json")
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    fresh, total, changed = {}, hashlib.sha256(), False
    for rel, stat in sorted(_walk(root)):
        key = [stat.st_size, stat.st_mtime_ns]
        known = memo.get(rel)
        if known and known[:2] == key:
            digest = known[2]
        else:
            digest, changed = _file_digest(root / rel), True
        fresh[rel] = key + [digest]
        total.update(f"{rel}\0{digest}\n".encode())
    if changed or len(fresh) != len(memo):
        write_text_atomic(memo_path, json.dumps(fresh))
    return total.hexdigest()[:16]


def _walk(root: Path):
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    yield Path(entry.path).relative_to(root).as_posix(), entry.stat()


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
