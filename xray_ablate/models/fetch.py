"""Resumable, hash-checked HTTP download of one file: a `.part` file, HTTP Range, a progress bar."""

from __future__ import annotations

import http.client
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from xray_ablate.checksums import sha256_file
from xray_ablate.errors import UserError

CHUNK = 1 << 20
TIMEOUT_S = 30
# Tries in a row that add no byte before giving up; a try that adds bytes resets the count.
STALLED_TRIES = 3
RETRY_WAIT_S = 2.0


def part_path(dest: Path) -> Path:
    """Where the unfinished download of ``dest`` lives (kept between calls, for resuming)."""
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what an earlier call left,
    and move it into place only if its SHA-256 starts with ``sha256``. A mismatch deletes the
    download and is a UserError naming the URL and both hashes. Parallel jobs wanting the same
    file wait for one download (a lock file next to it) instead of writing the same part file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.with_name(dest.name + ".lock")):
        if not dest.is_file():  # else another process has just finished it
            _download(url, dest, sha256)
    return dest


def _download(url: str, dest: Path, sha256: str) -> None:
    part = part_path(dest)
    stalled = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            if _transfer(url, part):
                break
            problem = "the connection closed early"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # HTTPError: in _transfer
            problem = str(getattr(err, "reason", err))
        got = part.stat().st_size if part.exists() else 0
        stalled = 0 if got > before else stalled + 1
        if stalled >= STALLED_TRIES:
            raise UserError(f"download of {url} stopped at {got} bytes ({problem}); run the same "
                            f"command again to resume from {part}")
        print(f"{dest.name}: {problem} at {got} bytes; resuming", file=sys.stderr)
        if stalled:
            time.sleep(RETRY_WAIT_S)
    actual = sha256_file(part)
    if not actual.startswith(sha256.lower()):
        part.unlink()
        raise UserError(f"download of {url} has SHA-256 {actual}, expected {sha256}: deleted it (the server "
                        "sent another file, or something on the way changed it)")
    part.replace(dest)


def _transfer(url: str, part: Path) -> bool:
    """One request, appending to ``part`` from its current size; True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left after offset: the part is already whole
            return True
        raise UserError(f"could not download {url}: HTTP {err.code} {err.reason}") from None
    with response:
        if offset and response.status != 206:  # the server ignored the range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name.removesuffix(".part"), file=sys.stderr) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    return size == total if total is not None else True
