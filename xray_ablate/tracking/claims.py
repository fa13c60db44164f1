"""Hold one job (experiment, config key, seed) while it runs, so that a second sweep meeting the
same job waits for it, then finds it finished, instead of training it twice.

SQLite store: a file lock in ``<db>.locks/`` (the OS releases it when its process dies).
Tracking server (no shared file system to lock on): a RUNNING run of kind ``claim`` whose
heartbeat tag the holder renews; a claim not renewed for ``stale`` seconds (its process died or
lost the network) is ignored.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from mlflow.tracking import MlflowClient

from xray_ablate.tracking import schema
from xray_ablate.tracking.resume import process_tags
from xray_ablate.tracking.store import connect, sqlite_path

log = logging.getLogger(__name__)
CLAIM, HEARTBEAT_TAG = "claim", "xray.heartbeat"
BEAT_SECONDS, STALE_SECONDS, POLL_SECONDS = 30.0, 180.0, 5.0


@contextmanager
def job_lock(tracking, config_key: str, seed: int) -> Iterator[None]:
    """Held while the job runs; waits while another process holds it."""
    database = sqlite_path(tracking.uri)
    if database is None:
        with heartbeat_claim(tracking, config_key, seed):
            yield
        return
    folder = Path(f"{database}.locks")
    folder.mkdir(exist_ok=True)
    lock = FileLock(folder / (re.sub(r"[^\w.-]", "_", f"{tracking.experiment}-{config_key}-{seed}") + ".lock"))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        _log_wait(config_key, seed)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def heartbeat_claim(tracking, config_key: str, seed: int, beat: float = BEAT_SECONDS,
                    stale: float = STALE_SECONDS, poll: float = POLL_SECONDS) -> Iterator[str]:
    """A claim run held (its heartbeat renewed every ``beat`` s) for the ``with`` block; its id.

    A claim holds only when it is the one fresh claim on the job once created. Of two created at
    the same moment, the one searched second sees both, so at most one holds (whatever the
    machines' clocks say); when both see both, both step back for a random part of ``poll``.
    """
    experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_root)
    client = MlflowClient(tracking.uri)
    tags = {schema.KIND: CLAIM, schema.CONFIG_KEY: config_key, schema.SEED: str(seed), **process_tags()}
    waited = False
    while True:
        if not _fresh_claims(client, experiment_id, config_key, seed, stale):
            claim = client.create_run(experiment_id, tags={**tags, HEARTBEAT_TAG: str(time.time())}).info.run_id
            if _fresh_claims(client, experiment_id, config_key, seed, stale) == [claim]:
                break
            client.delete_run(claim)
        if not waited:
            _log_wait(config_key, seed)
            waited = True
        time.sleep(poll * random.uniform(0.5, 1.5))
    stop = threading.Event()
    beating = threading.Thread(target=_beat, args=(client, claim, beat, stop), daemon=True)
    beating.start()
    try:
        yield claim
    finally:
        stop.set()
        beating.join()
        client.set_terminated(claim, "FINISHED")
        client.delete_run(claim)  # a claim is bookkeeping, not a result: keep it out of the UI


def _fresh_claims(client: MlflowClient, experiment_id: str, config_key: str, seed: int, stale: float) -> list[str]:
    """The ids of the claims on this job renewed in the last ``stale`` seconds."""
    query = (f"tags.`{schema.KIND}` = '{CLAIM}' and tags.`{schema.CONFIG_KEY}` = '{config_key}' "
             f"and tags.`{schema.SEED}` = '{seed}' and attributes.status = 'RUNNING'")
    return [run.info.run_id for run in client.search_runs([experiment_id], query, max_results=1000)
            if time.time() - float(run.data.tags.get(HEARTBEAT_TAG, "0")) < stale]


def _beat(client: MlflowClient, claim: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            client.set_tag(claim, HEARTBEAT_TAG, str(time.time()))
        except Exception as err:  # a network blip: the next beat may get through before `stale`
            log.warning("claim %s: heartbeat not recorded (%s)", claim, err)


def _log_wait(config_key: str, seed: int) -> None:
    log.info("waiting: another process runs config %s seed %s", config_key, seed)
