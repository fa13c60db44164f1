"""Find finished work to skip, and runs left RUNNING by processes that died."""

from __future__ import annotations

import json
import logging
import os
import re
import socket

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from xray_ablate.tracking import schema
from xray_ablate.tracking.lifecycle import ERROR_TAG
from xray_ablate.tracking.names import safe_value
from xray_ablate.tracking.store import connect

log = logging.getLogger(__name__)
HOST_TAG, PID_TAG, SLURM_TAG = "xray.host", "xray.pid", "xray.slurm_job"


def process_tags() -> dict[str, str]:
    """Where the run's process is: host and pid, and the SLURM job (array job_task) running it."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    if "SLURM_JOB_ID" in os.environ:
        array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        tags[SLURM_TAG] = "_".join(array) if all(array) else os.environ["SLURM_JOB_ID"]
    return tags


def finished_run(tracking, config_key: str, seed: int, fingerprint: str, split_hash: str) -> str | None:
    """The id of a FINISHED run of this (config key, seed, dataset fingerprint, split), if any."""
    experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_root)
    client = MlflowClient(tracking.uri)
    query = (f"tags.`{schema.CONFIG_KEY}` = '{config_key}' and tags.`{schema.SEED}` = '{seed}' "
             f"and tags.`{schema.FINGERPRINT}` = '{fingerprint}' "
             f"and tags.`{schema.SPLIT_HASH}` = '{split_hash}' and attributes.status = 'FINISHED'")
    runs = client.search_runs([experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def unevaluated(tracking, run_id: str, asked: dict) -> list[str]:
    """What finished run ``run_id`` lacks of the evaluation ``asked`` now (external sets, subgroup
    attributes, the audit's settings; see sweep.job.evaluation_asked). None of it is in the config
    key, so a resumed sweep would otherwise skip the job and never do what was added or changed."""
    done = _evaluated(MlflowClient(tracking.uri).get_run(run_id), asked)
    missing = ([f"eval.sets {name}" for name in asked["sets"] if name not in done.get("sets", [])]
               + [f"eval.subgroups {name}" for name in asked["subgroups"] if name not in done.get("subgroups", [])])
    if asked["audit"] is not None and asked["audit"] != done.get("audit"):
        had = done.get("audit") or {}
        missing.append("the audit" + "".join(f" with audit.{key}={value!r} (it had {had.get(key, 'none')!r})"
                                             for key, value in asked["audit"].items() if had and value != had.get(key)))
    return missing


def _evaluated(run, asked: dict) -> dict:
    """What a finished run evaluated, as ``asked`` is written: its EVALUATED tag; for a run from
    before that tag, the sets whose metrics (ext_<name>_n) it holds, and the subgroups and audit
    settings its params hold (params are a resumed run's first attempt's and cut when long: the
    subgroups are read as text, the audit settings compared as the text they were logged as)."""
    try:
        return json.loads(run.data.tags[schema.EVALUATED])
    except (KeyError, TypeError, ValueError):
        params = run.data.params
        text = params.get("eval.subgroups", "")
        audit = None
        if asked["audit"] is not None and params.get("audit.enabled") != "False":
            audit = {key: value if params.get(f"audit.{key}", safe_value(value)) == safe_value(value)
                     else params[f"audit.{key}"] for key, value in asked["audit"].items()}
        return {"sets": {m[1] for key in run.data.metrics if (m := re.fullmatch(r"ext_([A-Za-z0-9.-]+)_n", key))},
                "subgroups": {name for name in asked["subgroups"] if json.dumps(name) in text}, "audit": audit}


def resumable_run(tracking, run_id: str) -> str | None:
    """``run_id`` when that run still exists and has not finished (a stopped run to continue)."""
    try:
        run = MlflowClient(tracking.uri).get_run(run_id)
    except MlflowException:
        return None
    return run_id if run.info.lifecycle_stage == "active" and run.info.status != "FINISHED" else None


def logged_steps(tracking, run_id: str, key: str) -> set[int]:
    """The steps at which ``run_id`` logged the metric ``key`` (a resumed run's epochs so far)."""
    return {m.step for m in MlflowClient(tracking.uri).get_metric_history(run_id, key)}


def mark_member(tracking, run_id: str, sweep_id: str) -> None:
    """Count an earlier run as a member of this sweep (its report then sees it)."""
    MlflowClient(tracking.uri).set_tag(run_id, schema.SWEEP_MEMBER.format(sweep_id), "1")


def sweep_parent(tracking, sweep_id: str) -> str | None:
    """The parent run of an earlier invocation of this sweep, if any."""
    experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_root)
    query = f"tags.`{schema.KIND}` = 'sweep' and tags.`{schema.SWEEP_ID}` = '{sweep_id}'"
    found = MlflowClient(tracking.uri).search_runs([experiment_id], query, max_results=1)
    return found[0].info.run_id if found else None


def fail_dead_runs(tracking) -> list[str]:
    """Mark FAILED the RUNNING runs of this host whose process no longer exists."""
    experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_root)
    client = MlflowClient(tracking.uri)
    host, dead = socket.gethostname(), []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=10000):
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue  # another machine's run: it may still be alive
        if _alive(int(tags[PID_TAG])):
            continue
        client.set_tag(run.info.run_id, ERROR_TAG, f"process {tags[PID_TAG]} died while running")
        client.set_terminated(run.info.run_id, "FAILED")
        dead.append(run.info.run_id)
    if dead:
        log.warning("marked %d runs of dead processes as FAILED: %s", len(dead), ", ".join(dead))
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
