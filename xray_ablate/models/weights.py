"""Find pretrained weights in the local caches only: never download, never hang."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch

from xray_ablate.errors import UserError


def torch_hub_file(url: str) -> Path:
    """The torch hub checkpoint for ``url`` ($TORCH_HOME/hub/checkpoints/<file name>)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not path.is_file():
        raise UserError(
            f"pretrained weights not found: {path}\n"
            f"This machine does not download weights. Fetch {url} on a machine with network "
            f"access and copy it to that path (or set TORCH_HOME), or use backbone.pretrained=false."
        )
    return path


def hf_hub_file(repo_id: str, filename: str) -> Path:
    """A file of a Hugging Face model repo in the local HF cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    if isinstance(found, str):
        return Path(found)
    expected = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    raise UserError(
        f"pretrained weights not found: {filename} of {repo_id} under {expected}\n"
        f"This machine does not download weights. Run `huggingface-cli download {repo_id} {filename}` "
        "on a machine with network access and copy its HF cache here (or set HF_HOME), "
        "or use backbone.pretrained=false."
    )


def load_state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
