"""Config -> settings: the synthetic demo data is generated once, and again when it changes."""

import json

import pytest
from omegaconf import OmegaConf

from xray_ablate.data import synthetic
from xray_ablate.data.settings import data_config, ensure_synthetic
from xray_ablate.errors import UserError


def _cfg(root, n=6):
    return OmegaConf.create({"dataset": {"root": str(root), "synthetic": {"n": n, "seed": 0, "size": 32}}})


def test_synthetic_data_is_generated_once_and_regenerated_when_its_arguments_change(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    ensure_synthetic(_cfg(root))
    assert len(list((root / "images").glob("*.png"))) == 6
    assert json.loads((root / synthetic.STAMP).read_text())["version"] == synthetic.GENERATOR_VERSION

    calls = []
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: calls.append(k))
    ensure_synthetic(_cfg(root))
    assert calls == []  # same stamp: nothing to do
    monkeypatch.undo()

    ensure_synthetic(_cfg(root, n=4))
    assert len(list((root / "images").glob("*.png"))) == 4  # no stale files of the old set


def test_a_missing_dataset_root_is_a_clear_error(make_cfg):
    cfg = make_cfg("dataset.root=null")
    with pytest.raises(UserError, match="dataset.root is not set"):
        data_config(cfg)
