"""The one MLflow run lifecycle: training runs, quality, report and sweep parents all end here.

Runs are made with the client API, not the fluent one, so a sweep's parent run and its jobs (which
may share one process) never fight over "the active run".
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.tracking import MlflowClient

from xray_ablate.errors import Stopped
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
    if reopen:
        client.update_run(reopen, status="RUNNING")
        if ERROR_TAG in client.get_run(reopen).data.tags:  # the last attempt's error, now being redone
            client.delete_tag(reopen, ERROR_TAG)
        run_id = reopen
        Recorder(client, run_id).tags(tags)
    else:
        run_id = client.create_run(experiment_id, run_name=name, tags=safe_tags(tags)).info.run_id
    monitor = None
    if system_metrics:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking.uri)
        monitor.start()
    recorder = Recorder(client, run_id)
    try:
        yield recorder
    except BaseException as err:
        recorder.tags({ERROR_TAG: safe_value(f"{type(err).__name__}: {err}", MAX_TAG_VALUE)})
        recorder.text(traceback.format_exc(), "error/traceback.txt")
        client.set_terminated(run_id, "KILLED" if isinstance(err, KeyboardInterrupt | Stopped) else "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")
    finally:
        if monitor is not None:
            monitor.finish()
