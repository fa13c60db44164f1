"""Issue 15 item 4: the BRISQUE weights file is checked against a pinned SHA-256 and loaded with
``weights_only=True`` by the project; a crafted pickle never runs. The project's BRISQUE gives
piq's own scores."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import piq
import pytest
import torch
from PIL import Image

from xray_ablate.config.schema import QualityConfig
from xray_ablate.quality import weights
from xray_ablate.quality.brisque import brisque
from xray_ablate.quality.scores import score_files
from xray_ablate.quality.weights import WEIGHTS_SHA256, weights_path


class _Payload:
    """Unpickling this creates ``path``: stands for any code a crafted weights file could run."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A crafted brisque_svm_weights.pt in a fresh TORCH_HOME, and the file its payload creates."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights_path().parent.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save(_Payload(marker), weights_path())
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(image)
    return marker, image


def test_piq_would_run_the_payload(crafted):
    """The failure the issue found: piq unpickles the file through torch.hub."""
    marker, _ = crafted
    with pytest.raises(Exception):  # noqa: B017 - the payload returns no tensors; piq then fails
        piq.brisque(torch.rand(1, 1, 64, 64))
    assert marker.exists()


def test_the_project_refuses_the_crafted_file_before_loading_it(crafted):
    marker, image = crafted
    with pytest.raises(Exception) as err:
        score_files([image], QualityConfig(analysis_size=64), workers=1)
    message = str(err.value)
    assert type(err.value).__name__ == "UserError" and "\n" not in message
    assert message.startswith(f"BRISQUE SVM weights {weights_path()} has SHA-256 ")
    assert f"expected {WEIGHTS_SHA256}" in message
    assert not marker.exists()


def test_weights_only_loading_refuses_the_payload_even_without_the_hash(crafted):
    marker, _ = crafted
    with pytest.raises(pickle.UnpicklingError):
        weights._load(weights_path())
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_scores_as_piq(brisque_weights, dtype):
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (2, 1, 80, 96)).astype(np.float64)
    smooth = np.linspace(20, 230, 80 * 96).reshape(1, 1, 80, 96) + rng.normal(0, 4, (1, 1, 80, 96))
    x = torch.from_numpy(np.clip(np.concatenate([noise, smooth]), 0, 255)).to(dtype)
    ours = brisque(x)
    theirs = piq.brisque(x, data_range=255.0, reduction="none")
    assert ours.dtype == dtype and ours.shape == (3,)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # the same operations
    assert weights_path() == brisque_weights
