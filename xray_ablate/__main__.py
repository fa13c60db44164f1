"""python -m xray_ablate [overrides]: train one configuration; with -m, a sweep over seeds."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from xray_ablate.settings import CONFIG_DIR
from xray_ablate.sweep import callback
from xray_ablate.sweep.job import run_job


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def cli() -> None:
    """Run Hydra, then (for a sweep) always print the summary; non-zero exit if a job failed."""
    code, interrupted = 0, False
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        code, interrupted = 130, True
    finally:
        code = max(code, callback.finish(interrupted=interrupted))
    sys.exit(code)


if __name__ == "__main__":
    cli()
