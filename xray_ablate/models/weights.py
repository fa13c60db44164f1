"""Pretrained checkpoints: the pinned URL and SHA-256 of each, where it lives, and the verified load.

Nothing is read before its SHA-256 matches the pinned one, wherever the file came from, and
checkpoints are unpickled with ``weights_only=True``. Downloads happen only when asked
(``python -m xray_ablate.models fetch`` or ``backbone.download=true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from xray_ablate.checksums import verify_sha256
from xray_ablate.errors import UserError
from xray_ablate.models.fetch import download


@dataclass(frozen=True)
class Checkpoint:
    url: str
    sha256: str  # the full hex digest, or the published prefix where only that is known

    @property
    def filename(self) -> str:
        """The file name torch.hub gives the download (the last part of the URL)."""
        return Path(urlparse(self.url).path).name


# Keyed like models.FEATURE_BUILDERS. torchvision's file names carry the first 8 hex digits of
# the file's SHA-256; the full digests below start with them and are the ones recorded
# independently by several public projects that checked the files they downloaded.
CHECKPOINTS: dict[str, Checkpoint] = {
    "vgg16": Checkpoint("https://download.pytorch.org/models/vgg16-397923af.pth",
                        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),
    "vgg19": Checkpoint("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                        "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"),
    "resnet50": Checkpoint("https://download.pytorch.org/models/resnet50-0676ba61.pth",
                           "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"),
    "inception_v3": Checkpoint("https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
                               "0cc3c7bd75056d25e46cba549dc184522069b81e9787eff6df84f397bd52a5ef"),
    # timm's legacy_xception (Cadene's port of the Keras weights). Only the 9-digit prefix in the
    # file name is published (a public record of a download shows a SHA-256 43020ad2...21aa90, so
    # it is a SHA-256 prefix); no full digest was found, so the prefix is pinned.
    "xception": Checkpoint("https://github.com/rwightman/pytorch-image-models/releases/download/"
                           "v0.1-cadene/xception-43020ad28.pth", "43020ad28"),
}


def cache_dir() -> Path:
    """torch.hub's checkpoint folder, $TORCH_HOME/hub/checkpoints (where torchvision and timm look)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def ensure_checkpoint(backbone: str, download_missing: bool = False,
                      directory: Path | None = None) -> tuple[Path, bool]:
    """The verified checkpoint file of ``backbone`` (in ``directory``, default the torch hub cache)
    and whether it was downloaded now. A missing file is downloaded only if ``download_missing``."""
    checkpoint = CHECKPOINTS[backbone]
    path = (directory or cache_dir()) / checkpoint.filename
    fetched = not path.is_file()
    if fetched:
        if not download_missing:
            raise UserError(
                f"pretrained weights for {backbone} not found: {path}; get them with "
                f"`python -m xray_ablate.models fetch {backbone}` (for offline nodes: on a machine with network, "
                f"into a TORCH_HOME they share) or let the run fetch them with backbone.download=true; "
                f"or use backbone.pretrained=false")
        download(checkpoint.url, path, checkpoint.sha256)
    # Checked again after a download too: another process may have put the file there.
    return verify_sha256(path, checkpoint.sha256, f"{backbone} weights"), fetched


def checkpoint_file(backbone: str, download_missing: bool = False) -> Path:
    """The verified checkpoint file of ``backbone`` in the torch hub cache."""
    return ensure_checkpoint(backbone, download_missing)[0]


def load_state_dict(backbone: str, download_missing: bool = False) -> dict:
    """The verified checkpoint of ``backbone`` as a state dict (tensors only, nothing executed)."""
    return torch.load(checkpoint_file(backbone, download_missing), map_location="cpu", weights_only=True)
