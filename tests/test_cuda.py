"""The CUDA path: fit(), deterministic kernels, the saliency audit and BRISQUE on a GPU.

Skipped without CUDA (CI has none); run on a GPU machine with `pytest -q tests/test_cuda.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from xray_ablate.audit import audit_split
from xray_ablate.config.load import to_config
from xray_ablate.config.schema import QualityConfig
from xray_ablate.data.prepare import prepare
from xray_ablate.data.settings import data_config
from xray_ablate.data.synthetic import generate
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.quality.scores import score_images
from xray_ablate.train.fit import fit
from xray_ablate.train.inputs import prepare_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("cuda") / "data", n=120, seed=0, size=128)

    def make(*overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return to_config(compose("config", overrides=[
                f"dataset.root={root}", f"paths.cache_dir={root.parent / 'cache'}", "image_size=64",
                "trainer.epochs=4", "trainer.batch_size=16", "num_workers=1", "device=cuda", *overrides]))

    config = make()
    return make, prepare(data_config(config))


def test_fit_on_cuda_learns_with_bf16_and_images_on_the_device(setup):
    make, data = setup
    config = make()
    result = fit(config, data, prepare_inputs(config, data), CUDA)
    assert next(result.model.parameters()).device.type == "cuda"
    assert np.isfinite(result.history[["train_loss", "val_loss"]].to_numpy()).all()
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
    probs = result.predictions.filter(like="prob_").to_numpy()
    assert probs.sum(axis=1) == pytest.approx(1.0, abs=1e-3)
    print(f"\ncuda fit: {torch.cuda.get_device_name(0)}, test accuracy {result.metrics['test_accuracy']:.3f}, "
          f"{result.metrics['train_images_per_second']:.0f} train images/s")


def test_deterministic_cuda_runs_repeat_exactly(setup):
    make, data = setup
    config = make("trainer.deterministic=true", "trainer.epochs=2")
    first = fit(config, data, prepare_inputs(config, data), CUDA)
    second = fit(config, data, prepare_inputs(config, data), CUDA)
    keys = [k for k in first.metrics if k.startswith(("test_", "val_", "best_val"))]
    assert {k: first.metrics[k] for k in keys} == {k: second.metrics[k] for k in keys}


def test_audit_runs_on_the_cuda_model(setup):
    make, data = setup
    config = make("audit.images=16", "trainer.epochs=1")
    inputs = prepare_inputs(config, data)
    result = fit(config, data, inputs, CUDA)
    audit = audit_split(result.model, data, inputs.test, result.predictions.filter(like="prob_").to_numpy(),
                        config.audit)
    assert audit is not None and len(audit.per_image) == min(16, len(inputs.test))
    for name, value in audit.metrics.items():
        if name.startswith(("audit_outside_lung", "audit_border_")) and "area" not in name:
            assert 0 <= value <= 1, name


def test_brisque_scores_on_cuda_match_the_cpu(brisque_weights):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96)).astype(np.uint8) for _ in range(4)]
    cpu = score_images(images, QualityConfig(), torch.device("cpu"))
    gpu = score_images(images, QualityConfig(), CUDA)
    assert [s for s, _ in gpu] == pytest.approx([s for s, _ in cpu], rel=1e-3, abs=1e-2)


def test_a_cuda_run_resumes_from_a_weights_only_checkpoint_with_the_same_numbers(setup, tmp_path):
    """The checkpoint of a CUDA run (the CUDA generators' states among its tensors) loads with
    weights_only=True, and a deterministic run stopped after epoch 1 ends as an uninterrupted one."""
    from xray_ablate.train.checkpoint import Checkpointer

    make, data = setup
    config = make("trainer.deterministic=true", "trainer.epochs=2", "trainer.lr_schedule=cosine")
    inputs = prepare_inputs(config, data)
    straight = fit(config, data, inputs, CUDA)
    key = {"config_key": "cuda", "seed": 0}
    first = Checkpointer(tmp_path / "run.pt", 1, key)

    def crash(row):
        if row["epoch"] == 1:
            first.save()
            raise RuntimeError("hard kill")

    with pytest.raises(RuntimeError):
        fit(config, data, inputs, CUDA, on_epoch=crash, checkpoint=first)
    stored = torch.load(tmp_path / "run.pt", weights_only=True)
    assert all(isinstance(s, torch.Tensor) for s in stored["rng"]["cuda"])
    again = Checkpointer(tmp_path / "run.pt", 1, key)
    assert again.resume is not None and again.resume.epoch == 1
    resumed = fit(config, data, inputs, CUDA, checkpoint=again)
    keys = [k for k in straight.metrics if k.startswith(("test_", "val_", "best_val"))]
    assert {k: resumed.metrics[k] for k in keys} == {k: straight.metrics[k] for k in keys}
