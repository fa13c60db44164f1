"""Checksums of cache files: recorded when an entry is written, checked when it is read.

A damaged entry (truncated, overwritten, half-deleted, unparsable) raises CacheDamaged, and the
cache rebuilds it with a one-line warning. Arrays are checked in full up to FULL_HASH_MAX_BYTES
(``verify="auto"``), above that by a hash of evenly spaced blocks, which reads 4 MiB of any file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from xray_ablate.checksums import sha256_file

FULL_HASH_MAX_BYTES = 256 * 2**20  # a full SHA-256 of this takes ~0.2-1 s
_SAMPLES, _BLOCK = 1024, 4096


class CacheDamaged(Exception):
    """A cache file does not match the checksum recorded when it was written."""


def sample_sha256(path: Path) -> str:
    """SHA-256 of the file size and _SAMPLES evenly spaced blocks (the whole file when small)."""
    size = Path(path).stat().st_size
    digest = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as fh:
        if size <= _SAMPLES * _BLOCK:
            digest.update(fh.read())
        else:
            for i in range(_SAMPLES):
                fh.seek(i * (size - _BLOCK) // (_SAMPLES - 1))
                digest.update(fh.read(_BLOCK))
    return digest.hexdigest()


def file_checksums(path: Path) -> dict:
    """What ``verify_file`` checks later: size, full and sampled SHA-256."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path),
            "sample_sha256": sample_sha256(path)}


def verify_file(path: Path, recorded: dict, verify: str = "auto") -> None:
    """CacheDamaged unless ``path`` has the recorded size and hash (full or sampled by ``verify``)."""
    size = Path(path).stat().st_size
    if size != recorded["bytes"]:
        raise CacheDamaged(f"{Path(path).name} has {size} bytes, {recorded['bytes']} were written")
    full = verify == "full" or (verify == "auto" and size <= FULL_HASH_MAX_BYTES)
    key, actual = ("sha256", sha256_file(path)) if full else ("sample_sha256", sample_sha256(path))
    if actual != recorded[key]:
        raise CacheDamaged(f"{Path(path).name} changed after it was written ({key} differs)")


def verify_bytes(data: bytes, name: str, recorded: dict) -> bytes:
    """``data`` (a small file read whole) if it has the recorded size and SHA-256."""
    if len(data) != recorded["bytes"] or hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        raise CacheDamaged(f"{name} changed after it was written ({len(data)} bytes, "
                           f"{recorded['bytes']} were written)")
    return data


def bytes_checksums(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def remove_stale_temps(folder: Path, key: str) -> None:
    """Temporary files of ``key`` left by a killed writer. Call with the key's lock held: every
    writer of the key holds it too, so no live write is removed."""
    for tmp in Path(folder).glob(f".{key}.*.tmp"):
        tmp.unlink(missing_ok=True)
