"""The one MLflow run lifecycle: training runs, quality, report and sweep parents all end here.

Runs are made with the client API, not the fluent one, so a sweep's parent run and its jobs (which
may share one process) never fight over "the active run".
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from xray_ablate.errors import STOP_SIGNALS, Stopped
from xray_ablate.tracking import schema
from xray_ablate.tracking.names import MAX_TAG_VALUE, safe_tags, safe_value
from xray_ablate.tracking.recorder import Recorder
from xray_ablate.tracking.store import connect

ERROR_TAG = "xray.error"


@contextmanager
def tracked_run(tracking, name: str, tags: dict[str, str], parent_run_id: str | None = None,
                system_metrics: bool = False, reopen: str | None = None) -> Iterator[Recorder]:
    """A run that ends FINISHED, or FAILED (KILLED on Ctrl-C or a stop signal) with the error tag and
    traceback.

    ``tracking``: the tracking config (uri, experiment, artifact_root). ``reopen``: the id of a run
    to continue (a resumed sweep's parent) instead of creating one.
    """
    experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_root)
    client = MlflowClient(tracking.uri)
    tags = dict(tags)
    if parent_run_id:
        tags[schema.PARENT_RUN] = parent_run_id
    run_id = monitor = None
    try:
        with signals_held():  # a signal here acts once run_id is known, and the except ends the run
            if reopen:
                client.update_run(reopen, status="RUNNING")
                earlier = client.get_run(reopen).data.tags
                if ERROR_TAG in earlier:  # the last attempt's error, now redone
                    client.delete_tag(reopen, ERROR_TAG)
                run_id = reopen
                Recorder(client, run_id).tags(_resumed(tags, earlier))
            else:
                run_id = client.create_run(experiment_id, run_name=name, tags=safe_tags(tags)).info.run_id
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking.uri)
            monitor.start()
        yield Recorder(client, run_id, reopened=bool(reopen))
    except BaseException as err:
        if run_id is None:  # no run was made
            raise
        recorder = Recorder(client, run_id)
        with signals_held():
            try:
                recorder.tags({ERROR_TAG: safe_value(f"{type(err).__name__}: {err}", MAX_TAG_VALUE)})
                with suppress(OSError, MlflowException):  # an unwritable artifact folder may be the error
                    recorder.text(traceback.format_exc(), "error/traceback.txt")
            finally:  # the run never stays RUNNING
                client.set_terminated(run_id, "KILLED" if isinstance(err, KeyboardInterrupt | Stopped) else "FAILED")
        raise
    else:
        with signals_held():
            client.set_terminated(run_id, "FINISHED")
    finally:
        if monitor is not None:
            monitor.finish()


HELD_SIGNALS = (signal.SIGINT, *STOP_SIGNALS)


@contextmanager
def signals_held() -> Iterator[None]:
    """Inside, on the main thread: Ctrl-C and the stop signals wait until the block ends, then act
    as they would have. A run's creation and its end are each one block: a signal inside either
    left the run RUNNING in the store, with no error tag (the Ctrl-C sweep test failed so once, on a
    loaded machine). Signals whose handler is not Python's (ignored, default) are untouched."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signum: handler for signum in HELD_SIGNALS if callable(handler := signal.getsignal(signum))}
    caught: list[tuple[int, object]] = []
    for signum in handlers:
        signal.signal(signum, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if caught:
            signum, frame = caught[0]
            handlers[signum](signum, frame)


def _resumed(tags: dict[str, str], earlier: dict[str, str]) -> dict[str, str]:
    """A reopened run's tags: this attempt's, but its code version after the earlier attempts'
    when it differs (epochs trained under two versions: the report's mixing warning lists it)."""
    first, now = earlier.get(schema.CODE_VERSION), tags.get(schema.CODE_VERSION)
    if first and now and now != first and not first.endswith(f" then {now}"):
        tags = {**tags, schema.CODE_VERSION: f"{first} then {now}"}
    return tags
