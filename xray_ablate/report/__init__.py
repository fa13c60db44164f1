"""The ablation report: tables with variance estimates, tests, factorial effects and plots.

``python -m xray_ablate.report [report.sweep_id=ID | report.experiment_name=NAME]`` or, from code,
``build_report(cfg, sweep_id=...)``. Reads MLflow only; of the training code it imports only the
pure rule evaluation.learning_check, so "did it learn?" is decided in one place.
"""

from xray_ablate.report.build import build_report, write_report

__all__ = ["build_report", "write_report"]
