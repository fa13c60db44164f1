"""python -m xray_ablate.report [overrides]: write reports/<name>/ for a sweep or an experiment.

    python -m xray_ablate.report                              # the newest sweep
    python -m xray_ablate.report report.sweep_id=ID           # one sweep
    python -m xray_ablate.report report.experiment_name=demo  # every run of experiment=demo
    python -m xray_ablate.report experiment=demo              # the same, via the experiment config
    python -m xray_ablate.report tracking.uri=... tracking.experiment=... report.baseline.backbone=vgg16
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from xray_ablate.config import schema  # noqa: F401  registers config_schema, conf/config.yaml's first default
from xray_ablate.config.load import check_command_line, to_config
from xray_ablate.errors import exit_on_user_error
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.report.build import write_report
from xray_ablate.tracking.store import check_reachable


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        config = to_config(cfg)
        check_reachable(config.tracking.uri)  # a server that does not answer: one line, not minutes of retries
        written = write_report(config)
    print("\n".join(written.links()))
    print(written.folder / "report.md")


def cli() -> None:
    with exit_on_user_error():
        check_command_line(sys.argv[1:])  # a bad key or value: one line and exit 2, before Hydra starts
    main()


if __name__ == "__main__":
    cli()
