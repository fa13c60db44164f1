"""What the sweep process tells its jobs (possibly in other processes or on other nodes)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_ENV = {"sweep_id": "XRAY_ABLATE_SWEEP_ID", "parent_run_id": "XRAY_ABLATE_SWEEP_PARENT_RUN",
        "outcome_dir": "XRAY_ABLATE_SWEEP_OUTCOMES", "pid": "XRAY_ABLATE_SWEEP_PID"}


@dataclass(frozen=True)
class SweepInfo:
    sweep_id: str
    parent_run_id: str
    outcome_dir: str  # one folder per invocation: a rerun must not read the last one's files
    pid: str  # the sweep's process: a job running in it (the basic launcher) stops the whole sweep

    def export(self) -> None:
        # Environment variables reach joblib workers, submitit processes and SLURM jobs alike.
        for field, name in _ENV.items():
            os.environ[name] = getattr(self, field)

    @staticmethod
    def current() -> SweepInfo | None:
        if all(os.environ.get(name) for name in _ENV.values()):
            return SweepInfo(**{field: os.environ[name] for field, name in _ENV.items()})
        return None

    @staticmethod
    def clear() -> None:
        for name in _ENV.values():
            os.environ.pop(name, None)
