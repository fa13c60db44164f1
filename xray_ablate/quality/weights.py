"""piq's BRISQUE SVM weights: checked before scoring so a missing file never means a download."""

from __future__ import annotations

from pathlib import Path

import torch

from xray_ablate.errors import UserError
from xray_ablate.settings import project_root

WEIGHTS_NAME = "brisque_svm_weights.pt"


def weights_path() -> Path:
    """Where piq's torch.hub download looks first: $TORCH_HOME/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def require_weights() -> Path:
    """The weights file, or a UserError that says where it belongs and how to put it there.

    piq would otherwise try to download it from GitHub, which hangs or fails with a urllib
    traceback on a machine without network.
    """
    path = weights_path()
    if path.is_file():
        return path
    copy = project_root().parent / "shared" / "models" / WEIGHTS_NAME
    source = str(copy) if copy.is_file() else f"shared/models/{WEIGHTS_NAME}"
    raise UserError(
        f"BRISQUE SVM weights not found at {path} (piq would try to download them). Fix: "
        f"mkdir -p {path.parent} && cp {source} {path}, or set TORCH_HOME to a folder whose "
        f"hub/checkpoints/ holds {WEIGHTS_NAME} (see shared/models/README.md)"
    )
