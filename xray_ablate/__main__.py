"""python -m xray_ablate [overrides]: train one configuration; with -m, a sweep over seeds.

Every job's config is composed and checked before Hydra starts (a bad key or value is one line,
exit 2, and nothing runs); a sweep's start, jobs and finish wrap Hydra's launcher. With
sweep.until=resolved, the adaptive rounds launch further seeds the same way, and with
audit.canary=true the canary run comes last.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from xray_ablate.audit import check_layers
from xray_ablate.config import load
from xray_ablate.config.schema import Config
from xray_ablate.errors import UserError, exit_on_user_error
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.sweep.adaptive import run_rounds
from xray_ablate.sweep.canary import run_canary
from xray_ablate.sweep.job import run_job
from xray_ablate.sweep.lifecycle import JobsFailed, sweep_run
from xray_ablate.tracking.store import check_reachable

MULTIRUN = ("-m", "--multirun")
log = logging.getLogger("xray_ablate")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def cli() -> None:
    args = sys.argv[1:]
    if any(a.startswith("-") and a not in MULTIRUN for a in args):
        main()  # Hydra's own flags (--help, --cfg job, --info ...): nothing is trained
        sys.exit(0)
    multirun = any(a in MULTIRUN for a in args)
    with exit_on_user_error():
        plan = load.plan([a for a in args if a not in MULTIRUN], multirun)
        check_layers(plan.configs)
        check_reachable(plan.configs[0].tracking.uri)
    if not multirun:
        main()  # a user's mistake found only now (e.g. a missing dataset) exits 2 in run_job
        sys.exit(0)
    try:
        with exit_on_user_error(), sweep_run(plan, report=print_report) as sweep:
            main()
            if plan.configs[0].sweep.until == "resolved":
                run_rounds(plan, sweep, lambda overrides: _launch(args, overrides))
            if plan.configs[0].audit.canary:
                run_canary(plan, sweep, lambda overrides: _launch(args, overrides))
    except JobsFailed:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


def print_report(config: Config, sweep_id: str) -> bool:
    """Build the sweep's report and print it with its links; whether it was built. (Imported when
    a sweep ends: a job's process never loads the report code.)"""
    from xray_ablate.report import write_report

    try:
        written = write_report(config, sweep_id=sweep_id)
    except Exception as err:  # the runs are safe in MLflow; `make report` can retry
        log.error("report not built", exc_info=not isinstance(err, UserError))
        print(f"report not built: {err}")
        return False
    print("\n" + (written.folder / "report.md").read_text() + f"\nreport and plots: {written.folder}\n"
          + "\n".join(written.links()))
    return True


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _launch(args: list[str], overrides: list[str]) -> None:
    """Hydra's launcher once more: the command line with ``overrides`` in place of its values of the
    same keys (hydra.* ones, e.g. the launcher and the sweep folder, stay)."""
    keys = {_key(o) for o in overrides}
    sys.argv = [sys.argv[0], "-m", *[a for a in args if a not in MULTIRUN and _key(a) not in keys], *overrides]
    GlobalHydra.instance().clear()
    main()


if __name__ == "__main__":
    cli()
