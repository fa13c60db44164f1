"""python -m xray_ablate [overrides]: train one configuration (with -m: a sweep) and log to MLflow."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from xray_ablate.errors import UserError
from xray_ablate.settings import CONFIG_DIR
from xray_ablate.tracking.run import mlflow_run, run_tags
from xray_ablate.train.run import train_run

log = logging.getLogger("xray_ablate")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        with mlflow_run(cfg, run_tags(cfg)):
            results = train_run(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(2)
    log.info("test accuracy %.4f (macro F1 %.4f)", results["test_accuracy"], results["test_macro_f1"])
    return results["test_accuracy"]


if __name__ == "__main__":
    main()
