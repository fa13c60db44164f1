"""What the sweep process tells its jobs (possibly in other processes or on other nodes)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_ENV_ID, _ENV_PARENT = "XRAY_ABLATE_SWEEP_ID", "XRAY_ABLATE_SWEEP_PARENT_RUN"
MEMBER_TAG = "xray.in_sweep.{}"  # set on every run a sweep counts, its own or reused ones


@dataclass(frozen=True)
class SweepInfo:
    sweep_id: str
    parent_run_id: str

    def export(self) -> None:
        # Environment variables reach joblib workers, submitit processes and SLURM jobs alike.
        os.environ[_ENV_ID], os.environ[_ENV_PARENT] = self.sweep_id, self.parent_run_id

    @staticmethod
    def current() -> SweepInfo | None:
        if os.environ.get(_ENV_ID):
            return SweepInfo(os.environ[_ENV_ID], os.environ[_ENV_PARENT])
        return None

    @staticmethod
    def clear() -> None:
        os.environ.pop(_ENV_ID, None)
        os.environ.pop(_ENV_PARENT, None)
