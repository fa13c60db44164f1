"""piq's BRISQUE SVM weights: found, checked against a pinned SHA-256, and loaded safely.

The project loads them itself with ``torch.load(weights_only=True)`` and hands the tensors to
the score (quality/brisque.py): piq would fetch them through torch.hub, which unpickles with
full unpickling and so runs whatever a crafted file holds, and never checks a hash.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from xray_ablate.checksums import verify_sha256
from xray_ablate.errors import UserError
from xray_ablate.paths import project_root

WEIGHTS_NAME = "brisque_svm_weights.pt"
# shared/models/README.md: the LIVE BRISQUE model rebuilt as (sv_coef [774], sv [774, 36]).
WEIGHTS_SHA256 = "0e976ea2dcf746a966888565bc754484ec28f7318f60b5ac8080259033f27a37"


def weights_path() -> Path:
    """Where piq's torch.hub download looks first: $TORCH_HOME/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def require_weights() -> Path:
    """The weights file once its SHA-256 is the pinned one, or a UserError that says where it
    belongs and how to put it there (or which hash it should have)."""
    path = weights_path()
    if path.is_file():
        return verify_sha256(path, WEIGHTS_SHA256, "BRISQUE SVM weights")
    copy = project_root().parent / "shared" / "models" / WEIGHTS_NAME
    source = str(copy) if copy.is_file() else f"shared/models/{WEIGHTS_NAME}"
    raise UserError(
        f"BRISQUE SVM weights not found at {path} (piq would try to download them). Fix: "
        f"mkdir -p {path.parent} && cp {source} {path}, or set TORCH_HOME to a folder whose "
        f"hub/checkpoints/ holds {WEIGHTS_NAME} (see shared/models/README.md)"
    )


def svm_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """(sv_coef [774], sv [774, 36]) float32 on the CPU, from the verified file."""
    return _load(require_weights())


@lru_cache(maxsize=4)
def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    sv_coef, sv = torch.load(path, map_location="cpu", weights_only=True)
    return sv_coef, sv
