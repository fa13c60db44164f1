"""The ablation report: tables with variance estimates, tests, factorial effects and plots.

``python -m xray_ablate.report [report.sweep_id=ID | report.experiment_name=NAME]`` or, from code,
``build_report(cfg, sweep_id=...)``. Reads MLflow only; never imports the training code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xray_ablate.report.build import build_report

__all__ = ["build_report"]


def __getattr__(name: str):
    # Lazy, so that the pure statistics import without MLflow and matplotlib.
    if name == "build_report":
        from xray_ablate.report.build import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
