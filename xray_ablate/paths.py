"""Where the project lives: its root, its Hydra config folder, and the resolvers its YAML uses.

The bottom of the import graph: no project imports."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> Path:
    """$XRAY_ABLATE_HOME, else the checkout this package was installed from, else the cwd."""
    if os.environ.get("XRAY_ABLATE_HOME"):
        return Path(os.environ["XRAY_ABLATE_HOME"]).resolve()
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


CONFIG_DIR = str(project_root() / "conf")
OmegaConf.register_new_resolver("project_root", lambda: str(project_root()), replace=True)
# ${pick:cond,a,b} = a if cond else b; experiments use it to choose a sweep design.
OmegaConf.register_new_resolver("pick", lambda cond, a, b: a if cond else b, replace=True)
