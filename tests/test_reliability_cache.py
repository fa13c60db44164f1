"""Issue 15 items 3 and 7 (cache): a damaged cache entry is rebuilt with a one-line warning,
temporary files of a killed build are removed, pool workers exit with their parent, and cache
files are as readable as the umask allows. Issue 28: a cache folder this user cannot write is
one line at once, and a pool worker killed mid-build is an error within seconds."""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from test_data_helpers import config, copy_dataset

from xray_ablate.config.load import to_config
from xray_ablate.data import integrity
from xray_ablate.data.__main__ import main
from xray_ablate.data.pool import pool_map
from xray_ablate.data.prepare import prepare
from xray_ablate.errors import UserError
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.sweep.job import load_data


@pytest.fixture
def warm(synthetic_root, tmp_path):
    """A prepared copy of the 40 phantoms: (config, first result, cache folder)."""
    cfg = config(copy_dataset(synthetic_root, tmp_path / "data"), tmp_path / "cache", "masked", 32)
    first = prepare(cfg)
    first.images = np.array(first.images)  # copies: damaging the cache files must not change them
    first.lungs = np.array(first.lungs)
    return cfg, first, tmp_path / "cache"


def _one(folder, pattern):
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_truncated_inventory_is_rebuilt_not_trained_on(warm, caplog):
    cfg, first, cache = warm
    inventory = _one(cache / "inventory", "*.csv")
    lines = inventory.read_text().splitlines(keepends=True)
    inventory.write_text("".join(lines[: len(lines) // 2]))  # the recipe
    again = prepare(cfg)
    assert len(again.table) == len(first.table) == 40  # not the 19 rows left in the file
    assert again.decoded_now == 0  # the rebuilt inventory matches the cached images
    (message,) = _warnings(caplog)
    assert message.startswith(f"inventory cache {inventory} is damaged") and "rebuilding" in message
    assert "\n" not in message
    caplog.clear()
    prepare(cfg)
    assert _warnings(caplog) == []  # repaired for good


def test_overwritten_array_of_the_same_size_is_rebuilt(warm, caplog):
    cfg, first, cache = warm
    array = _one(cache / "images", "*.npy")
    size = array.stat().st_size
    with open(array, "r+b") as fh:  # the recipe: random bytes over part of the array
        fh.seek(size // 2)
        fh.write(np.random.default_rng(0).bytes(1000))
    assert array.stat().st_size == size
    again = prepare(cfg)
    assert again.decoded_now == 40
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(first.images))
    (message,) = _warnings(caplog)
    assert message.startswith(f"image cache {array} is damaged") and "sha256 differs" in message


def test_overwritten_lung_masks_of_the_same_size_are_rebuilt(warm, caplog):
    """The lung-mask array is covered by the entry's checksums like the image array."""
    cfg, first, cache = warm
    lungs = _one(cache / "lungs", "*.npy")
    size = lungs.stat().st_size
    with open(lungs, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(np.random.default_rng(2).bytes(500))
    assert lungs.stat().st_size == size
    again = prepare(cfg)
    assert again.decoded_now == 40
    rows = np.arange(len(first.table))
    assert first.lung_masks(rows).any()
    np.testing.assert_array_equal(again.lung_masks(rows), first.lung_masks(rows))
    (message,) = _warnings(caplog)
    assert message.startswith(f"image cache {lungs} is damaged") and "sha256 differs" in message
    caplog.clear()
    assert prepare(cfg).decoded_now == 0 and _warnings(caplog) == []  # repaired for good


@pytest.mark.parametrize("damage", ["garbage json", "missing npy", "index rows", "short npy", "missing lungs"])
def test_any_damaged_file_of_an_entry_rebuilds_it(warm, caplog, damage):
    cfg, first, cache = warm
    images = cache / "images"
    if damage == "garbage json":
        _one(images, "*.json").write_text("{")
    elif damage == "missing npy":
        _one(images, "*.npy").unlink()
    elif damage == "missing lungs":
        _one(cache / "lungs", "*.npy").unlink()
    elif damage == "index rows":
        index = _one(images, "*.csv")
        index.write_text(index.read_text().replace("synth-00001", "synth-99999"))
    else:
        array = _one(images, "*.npy")
        os.truncate(array, array.stat().st_size - 100)
    again = prepare(cfg)
    assert again.decoded_now == 40
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(first.images))
    (message,) = _warnings(caplog)
    assert message.startswith("image cache") and "rebuilding it" in message


def test_sampled_check_reads_blocks_of_a_large_array(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(np.random.default_rng(1).bytes(16 * 2**20))
    recorded = integrity.file_checksums(path)
    integrity.verify_file(path, recorded, "sample")
    with open(path, "r+b") as fh:  # 64 KiB of damage: wider than the 16 KiB between samples
        fh.seek(5 * 2**20)
        fh.write(bytes(64 * 1024))
    with pytest.raises(integrity.CacheDamaged, match="sample_sha256 differs"):
        integrity.verify_file(path, recorded, "sample")
    with pytest.raises(integrity.CacheDamaged, match="sha256 differs"):
        integrity.verify_file(path, recorded, "full")


def test_unknown_verify_mode_is_a_user_error(warm):
    cfg, _, _ = warm
    with pytest.raises(UserError, match="cache_verify must be one of"):
        prepare(replace(cfg, cache_verify="sometimes"))


def test_temporary_files_of_a_killed_build_are_removed(warm):
    cfg, first, cache = warm
    key = first.cache_key
    stale = cache / "images" / f".{key}.npy.abc123.tmp"
    stale.write_bytes(b"half an array")
    other = cache / "images" / ".0123456789abcdef.npy.zz.tmp"  # another key: maybe being written
    other.write_bytes(b"")
    stale_lungs = cache / "lungs" / f".{key}.npy.def456.tmp"
    stale_lungs.write_bytes(b"half the lung masks")
    prepare(cfg)
    assert not stale.exists() and not stale_lungs.exists() and other.exists()


def test_cache_files_follow_the_umask(warm):
    _, _, cache = warm
    umask = os.umask(0)
    os.umask(umask)
    paths = [*cache.glob("images/*"), *cache.glob("lungs/*"), *cache.glob("inventory/*")]
    assert any(p.parent.name == "lungs" for p in paths)
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_group_shared_umask_gives_group_readable_files(tmp_path):
    """mkstemp makes 0600 files: a cache shared by a group (umask 002) was unreadable to it."""
    script = ("import os, sys; os.umask(0o002); from pathlib import Path; "
              "from xray_ablate.data.atomic import write_text_atomic; "
              "write_text_atomic(Path(sys.argv[1]), 'x')")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "f.csv")], check=True)
    assert (tmp_path / "f.csv").stat().st_mode & 0o777 == 0o664


_POOL_SCRIPT = """
import os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from xray_ablate.data.pool import spawn_pool

pool = (spawn_pool(2) if sys.argv[1] == "guarded"
        else ProcessPoolExecutor(2, mp_context=get_context("spawn")))
futures = [pool.submit(time.sleep, 0.5) for _ in range(2)]
[f.result() for f in futures]
print(" ".join(str(pid) for pid in pool._processes), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # kill -9 during the build
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead, only not yet reaped
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("kind", ["plain", "guarded"])
@pytest.mark.slow  # over 2.5 s: not in the inner loop
def test_pool_workers_exit_when_their_parent_is_killed(kind, tmp_path):
    repo = str(Path(__file__).resolve().parents[1])
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:  # a file, not a pipe: orphans holding a pipe would block run()
        done = subprocess.run([sys.executable, "-c", _POOL_SCRIPT, kind], stdout=fh, stderr=fh,
                              timeout=120, env={**os.environ, "PYTHONPATH": repo})
    pids = [int(p) for p in out.read_text().split()]
    assert done.returncode == -signal.SIGKILL and len(pids) == 2, out.read_text()
    try:  # the guard polls every 0.5 s; unguarded workers are given 2 s to show they stay
        deadline = time.monotonic() + (10 if kind == "guarded" else 2)
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        if kind == "guarded":
            assert not any(_alive(p) for p in pids)
        else:  # the failure the issue found: orphans that wait for work forever
            assert all(_alive(p) for p in pids)
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _read_only(root: Path) -> Path:
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(Path(folder) / name, 0o444)
        os.chmod(folder, 0o555)
    return root


@pytest.fixture
def unprivileged(monkeypatch):
    """This user as an unprivileged one. Root (as in CI) may write into a read-only folder: the
    check asks os.access, so there it answers from the owner's mode bits, as it would for an
    unprivileged owner; as any other user the permissions themselves refuse."""
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, **kwargs):
            if mode & os.W_OK and not os.stat(path).st_mode & stat.S_IWUSR:
                return False
            return real(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", access)


def test_a_read_only_dataset_with_the_cache_defaulting_inside_it_is_one_line(
        synthetic_root, tmp_path, monkeypatch, capsys, unprivileged):
    root = _read_only(copy_dataset(synthetic_root, tmp_path / "data"))
    before = sorted(os.listdir(root))
    monkeypatch.delenv("XRAY_ABLATE_CACHE", raising=False)
    monkeypatch.setenv("XRAY_ABLATE_HOME", str(root))  # the project (and its .cache) is the dataset
    message = (f"cannot write the cache folder {root / '.cache'}: not writable for this user ({root} is); "
               "point paths.cache_dir or XRAY_ABLATE_CACHE (--cache-dir for the summary) at a writable folder")
    assert main(["summary", str(root)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=[
            f"dataset.root={root}", f"paths.root_dir={root}", "image_size=32", "backbone=cnn16_gap"]))
    assert cfg.paths.cache_dir == str(root / ".cache")  # the default, inside the dataset
    with pytest.raises(UserError) as err:
        load_data(cfg)
    assert str(err.value) == message
    assert sorted(os.listdir(root)) == before  # nothing written there
    if os.geteuid() != 0:  # and permissions, not the check alone, stop a write
        with pytest.raises(PermissionError):
            (root / ".cache").mkdir()


ONE_PROCESS = "num_workers=1 (--workers 1 for the summary) works without worker processes"


def test_worker_processes_that_cannot_start_are_one_line_at_once(monkeypatch):
    """The issue's unprivileged user could not run the Python under root's home folder: each
    worker died at its start."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: path != sys.executable and real(path, mode, **kw))
    with pytest.raises(UserError) as err:
        pool_map(abs, [-1, -2], 2, "scoring 2 numbers")
    assert str(err.value) == (f"worker processes cannot start for scoring 2 numbers: {sys.executable} is "
                              f"not executable for this user; {ONE_PROCESS}")


def _pool_workers(parent: int) -> list[int]:
    """The pids of the spawned pool workers of ``parent`` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the cache is built without workers")
@pytest.mark.slow  # a summary of the 200-image fixture in a subprocess
def test_a_pool_worker_killed_mid_build_is_an_error_within_seconds(fixture_root, tmp_path):
    """CPython 3.11 waited forever for a broken pool's queue (the issue's 11 minutes)."""
    root = copy_dataset(fixture_root, tmp_path / "data")
    repo = str(Path(__file__).resolve().parents[1])
    with open(tmp_path / "err.txt", "w") as err:  # a file: orphans holding a pipe would block
        summary = subprocess.Popen(
            [sys.executable, "-m", "xray_ablate.data", "summary", str(root), "--cache-dir",
             str(tmp_path / "cache"), "--image-size", "32"], stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONPATH": repo})
        try:
            while summary.poll() is None and not (workers := _pool_workers(summary.pid)):
                time.sleep(0.01)
            assert summary.poll() is None, "the summary ended before it started a worker"
            os.kill(workers[0], signal.SIGKILL)  # while it starts: before it can finish its share
            killed = time.monotonic()
            assert summary.wait(timeout=120) == 2
            seconds = time.monotonic() - killed
        finally:
            summary.kill()
    # One error line (Python's resource tracker may add its own warnings after a SIGKILL).
    [last] = [line for line in (tmp_path / "err.txt").read_text().splitlines() if line.startswith("error: ")]
    assert re.fullmatch(r"error: a worker process died while preprocessing \d+ images \(raw, 32px\) "
                        r"\(killed, out of memory, or unable to start .+\); " + re.escape(ONE_PROCESS), last), last
    assert seconds < 60, seconds  # measured: about 1 s
