"""One training run: what each config group changes, and what lands in MLflow."""

import mlflow
import numpy as np
import pytest
import torch
from conftest import train_once
from mlflow.tracking import MlflowClient

from xray_ablate.config.choices import CLASSES
from xray_ablate.config.schema import AugmentationConfig, ClassWeightsConfig
from xray_ablate.errors import UserError
from xray_ablate.sweep.job import load_data
from xray_ablate.tracking import schema
from xray_ablate.train import fit as train_module
from xray_ablate.train import loop
from xray_ablate.train.augment import random_affine
from xray_ablate.train.device import seed_everything
from xray_ablate.train.fit import class_weights
from xray_ablate.train.inputs import normalization_stats


def _train(cfg):
    run_id, result = train_once(cfg)
    return run_id, result.metrics


def test_inverse_frequency_weights_scale_the_largest_class_to_one():
    labels = np.repeat([0, 1, 2, 3], [12, 6, 4, 3])
    on = ClassWeightsConfig("on", "inverse_frequency")
    assert class_weights(on, labels) == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert class_weights(ClassWeightsConfig("off"), labels) is None
    assert class_weights(ClassWeightsConfig("on", [1, 1.75, 6.4, 1.94]), labels) == pytest.approx([1, 1.75, 6.4, 1.94])
    with pytest.raises(UserError, match="4 non-negative numbers"):
        ClassWeightsConfig("on", [1, 2])


@pytest.mark.slow
def test_class_weights_reach_the_loss(make_cfg, monkeypatch):
    seen = []

    class SpyLoss(torch.nn.CrossEntropyLoss):
        def __init__(self, weight=None):
            super().__init__(weight=weight)
            seen.append(None if weight is None else weight.tolist())

    monkeypatch.setattr(train_module.nn, "CrossEntropyLoss", SpyLoss)
    cfg = make_cfg("class_weights=on", "tracking.log_checkpoint=false")
    run_id, _ = _train(cfg)
    data = load_data(cfg)
    train_labels = data.table["label"].to_numpy()[data.split_indices("train")]
    counts = np.bincount(train_labels, minlength=4)
    assert seen == [pytest.approx((counts.max() / counts).tolist())]
    params = MlflowClient().get_run(run_id).data.params
    assert float(params["class_weight_covid"]) == pytest.approx(counts.max() / counts[2], abs=1e-4)


def test_normalization_statistics_come_from_training_images_only(make_cfg):
    data = load_data(make_cfg())
    train = data.split_indices("train")
    mean, std = normalization_stats(data, train)
    pixels = np.asarray(data.images)[train] / 255.0
    assert (mean, std) == pytest.approx((pixels.mean(), pixels.std()))
    # Changing every non-training image leaves the statistics unchanged.
    altered = np.array(data.images)
    others = np.setdiff1d(np.arange(len(altered)), train)
    altered[others] = 255
    data.images = altered
    assert normalization_stats(data, train) == pytest.approx((mean, std))


@pytest.mark.slow
def test_augmentation_changes_training_batches_only(make_cfg, monkeypatch):
    calls = []
    real = loop.random_affine

    def spy(x, opts, generator):
        calls.append(x.shape[0])
        return real(x, opts, generator)

    monkeypatch.setattr(loop, "random_affine", spy)
    cfg = make_cfg("augmentation=on", "trainer.epochs=2", "tracking.log_checkpoint=false")
    run_id, _ = _train(cfg)
    n_train = int(MlflowClient().get_run(run_id).data.params["n_train"])
    assert sum(calls) == 2 * n_train  # every training image, each epoch; val/test never

    x = torch.rand(4, 1, 32, 32)
    out = random_affine(x, AugmentationConfig(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)
    still = AugmentationConfig(rotation_turns=0.0, zoom=0.0, translate=0.0)
    same = random_affine(x, still, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-5)  # zero rotation/zoom/shift is the identity


@pytest.mark.slow
def test_one_epoch_run_leaves_a_complete_finished_mlflow_run(make_cfg):
    cfg = make_cfg("tracking.log_figures=true")
    run_id, results = _train(cfg)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "masked-tf_1.0-cw_off-cb_natural-norm_on-aug_on-bq_off-cnn16_gap-s0"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["dataset.mode"] == "masked" and params["trainer.epochs"] == "1"
    assert params["seed"] == "0" and "paths.cache_dir" in params
    for factor, level in {"dataset": "masked", "class_weights": "off", "normalization": "on",
                          "augmentation": "on", "brisque_filter": "off", "backbone": "cnn16_gap"}.items():
        assert tags[f"factor.{factor}"] == level
    data = load_data(cfg)
    assert tags[schema.SPLIT_HASH] == data.manifest_hash
    assert tags[schema.FINGERPRINT] == data.fingerprint
    assert tags[schema.SEED] == "0" and len(tags[schema.CONFIG_KEY]) == 12
    assert tags[schema.CODE_VERSION]
    for name in schema.final_metric_names("test") + schema.final_metric_names("val"):
        assert name in metrics, name
    assert metrics["test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert sum(metrics[f"test_support_{c}"] for c in CLASSES) == (data.table["split"] == "test").sum()
    history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "classification_report.txt", "classification_report.json",
            "confusion_matrix.png", "learning_curve.png", "split", "checkpoint"} <= artifacts
    manifest = client.list_artifacts(run_id, "split")[0].path
    assert data.manifest_hash in manifest
    state = torch.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/best_model.pt"),
                       weights_only=True)
    assert "head.4.weight" in state


def test_per_run_figures_are_logged_only_when_asked(make_cfg):
    """tracking.log_figures=false (the tests' default, and debug's): no PNGs, every other record."""
    run_id, _ = _train(make_cfg("tracking.log_checkpoint=false"))
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert {"predictions.csv", "classification_report.json", "history.csv"} <= artifacts
    assert not {"confusion_matrix.png", "learning_curve.png"} & artifacts


def test_a_run_whose_validation_loss_is_never_finite_fails_with_the_reason(make_cfg):
    """trainer.lr=1e9 and one step per epoch: the training loss is taken before the step (finite),
    the validation loss after it (NaN), so there is no best state: load_state_dict(None)'s
    TypeError traceback before; now the run fails with why. (A NaN after a finite epoch keeps
    that epoch's state.)"""
    cfg = make_cfg("trainer.lr=1e9", "trainer.batch_size=64", "tracking.log_checkpoint=false", "audit.enabled=false")
    with pytest.raises(loop.TrainingDiverged, match=r"^validation loss not finite at any of the 1 epochs: lower "
                                                    r"trainer.lr \(now 1000000000.0\) or check the data$"):
        _train(cfg)
    run = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")[0]
    assert run.info.status == "FAILED" and "validation loss not finite" in run.data.tags["xray.error"]


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_on_cpu(make_cfg):
    cfg = make_cfg("trainer.epochs=2", "tracking.log_checkpoint=false", "device=cpu")
    _, first = _train(cfg)
    _, second = _train(cfg)
    keys = [k for k in first if k.startswith(("test_", "val_"))]
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    _, other = _train(make_cfg("trainer.epochs=2", "tracking.log_checkpoint=false", "seed=1"))
    assert other["best_val_loss"] != first["best_val_loss"]


def test_deterministic_kernels_are_not_inherited_by_the_next_job():
    """The jobs of a sweep share a process (Hydra's basic launcher): a job with
    trainer.deterministic=false after one with true ran with deterministic kernels still."""
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(1, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_an_exception_fails_the_run_and_keeps_the_traceback(make_cfg, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(train_module, "train_one_epoch", broken)
    cfg = make_cfg()
    with pytest.raises(RuntimeError, match="injected failure"):
        _train(cfg)
    run = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["xray.error"] == "RuntimeError: injected failure"
    text = mlflow.artifacts.load_text(run.info.artifact_uri + "/error/traceback.txt")
    assert "injected failure" in text and "Traceback" in text


def test_a_nan_loss_stops_the_run_with_a_clear_message(make_cfg, monkeypatch):
    class NanLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    monkeypatch.setattr(train_module.nn, "CrossEntropyLoss", NanLoss)
    cfg = make_cfg()
    with pytest.raises(loop.TrainingDiverged, match="training loss is nan"):
        _train(cfg)
    run = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")[0]
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_brisque_filter_changes_training_images_but_never_the_test_split(make_cfg, brisque_weights):
    off_id, _ = _train(make_cfg("tracking.log_checkpoint=false"))
    on_id, on = _train(make_cfg("brisque_filter=on", "brisque_filter.iqr_factor=0.1",
                                "tracking.log_checkpoint=false"))
    client = MlflowClient()
    off, on_run = client.get_run(off_id).data, client.get_run(on_id).data
    assert on_run.tags["factor.brisque_filter"] == "on"
    assert on_run.params["n_test"] == off.params["n_test"]
    assert on_run.tags[schema.SPLIT_HASH] == off.tags[schema.SPLIT_HASH]
    removed = sum(on_run.metrics[f"brisque_removed_{c}"] for c in CLASSES)
    assert removed > 0
    trained = int(on_run.params["n_train"]) + int(on_run.params["n_val"])
    assert trained == int(off.params["n_train"]) + int(off.params["n_val"]) - removed


@pytest.mark.slow
def test_reported_losses_do_not_depend_on_class_weights(make_cfg):
    off_id, off = _train(make_cfg("tracking.log_checkpoint=false", "trainer.lr=1e-12"))
    on_id, on = _train(make_cfg("class_weights=on", "tracking.log_checkpoint=false", "trainer.lr=1e-12"))
    # lr ~ 0: (nearly) identical weights, so only the loss definition could differ.
    assert on["test_loss"] == pytest.approx(off["test_loss"])
    assert on["best_val_loss"] == pytest.approx(off["best_val_loss"])


@pytest.mark.slow  # over 2.5 s: not in the inner loop
def test_per_image_test_predictions_are_logged(make_cfg):
    cfg = make_cfg("tracking.log_checkpoint=false")
    run_id, results = _train(cfg)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.csv")
    import pandas as pd

    predictions = pd.read_csv(path)
    data = load_data(cfg)
    test = data.table[data.table["split"] == "test"]
    assert list(predictions["image_id"]) == list(test["image_id"])
    probs = predictions[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert probs.sum(axis=1) == pytest.approx(1.0, abs=1e-4)
    accuracy = (probs.argmax(1) == predictions["label"].to_numpy()).mean()
    assert accuracy == pytest.approx(results["test_accuracy"])


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=0", "trainer.epochs must be at least 1, not 0"),
    ("split.val_fraction=0", "split.val_fraction must be in \\(0, 1\\), not 0"),
])
def test_settings_that_cannot_train_are_user_errors(make_cfg, override, message):
    with pytest.raises(UserError, match=message):
        make_cfg(override)


@pytest.mark.parametrize("overrides, optimizer_class, schedule_class", [
    ([], "Adam", "constant"),
    (["trainer.optimizer=sgd", "trainer.momentum=0.5", "trainer.nesterov=true"], "SGD", "constant"),
    (["trainer.optimizer=adamw", "trainer.lr_schedule=cosine"], "AdamW", "CosineAnnealingLR"),
])
@pytest.mark.slow
def test_the_configured_optimizer_and_schedule_train(make_cfg, monkeypatch, overrides, optimizer_class,
                                                     schedule_class):
    built = []
    real_build = train_module.build_optimizer

    def spy(model, trainer):
        built.append(real_build(model, trainer))
        return built[-1]

    monkeypatch.setattr(train_module, "build_optimizer", spy)
    cfg = make_cfg("trainer.epochs=2", *overrides)
    run_id, _ = _train(cfg)
    run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert [type(o).__name__ for o in built] == [optimizer_class]
    assert built[0].state, "the optimizer that was built is the one that stepped"
    assert run.data.params["optimizer_class"] == optimizer_class
    assert run.data.params["lr_schedule_class"] == schedule_class
    if optimizer_class == "SGD":
        group = built[0].param_groups[0]
        assert group["momentum"] == 0.5 and group["nesterov"] is True
    lrs = [m.value for m in MlflowClient(cfg.tracking.uri).get_metric_history(run_id, "lr")]
    if schedule_class == "CosineAnnealingLR":  # epoch 1 at the full rate, epoch 2 at half (T_max = 2)
        assert lrs == pytest.approx([1e-3, 5e-4])
    else:
        assert lrs == pytest.approx([1e-3, 1e-3])


def _probe_on(levels: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """feature_probes of a randomly initialised cnn16_gap on ``images`` (N, 32, 32) with the
    attribute ``site`` = ``levels``: splits of 60 % / 20 % / 20 %; its metrics, after checking its
    per-image hits against them."""
    import pandas as pd

    from xray_ablate.config.schema import BackboneConfig
    from xray_ablate.models import build_model
    from xray_ablate.train.inputs import FitInputs
    from xray_ablate.train.probe import feature_probes

    class Data:  # what the probe reads of PreparedData
        def __init__(self):
            self.images = images
            self.table = pd.DataFrame({"label": np.zeros(len(images), int), "site": levels,
                                       "image_id": [f"i{k}" for k in range(len(images))]})

    torch.manual_seed(0)
    model = build_model(BackboneConfig(name="cnn16_gap", pretrained=False), len(CLASSES), 32)
    n = len(images)
    order = np.random.default_rng(0).permutation(n)
    inputs = FitInputs(order[:int(0.6 * n)], order[int(0.6 * n):int(0.8 * n)], order[int(0.8 * n):], None, None)
    metrics, hits = feature_probes(model, Data(), inputs, ["site"], 32, torch.device("cpu"))
    assert list(hits["image_id"]) == [f"i{k}" for k in inputs.test]
    assert hits["probe_site"].mean() == pytest.approx(metrics["probe_site_accuracy"])
    assert metrics["probe_site_n"] == len(inputs.test)
    return metrics


def test_the_feature_probe_finds_a_planted_attribute_and_not_a_random_one():
    """Planted truth: images of site "a" are brighter than those of "b"; even an untrained network's
    last features carry that, and the probe reads the site off them on the test split. A site drawn
    independently of the images stays near the majority rate."""
    rng = np.random.default_rng(1)
    n = 300
    planted = np.where(rng.random(n) < 0.5, "a", "b")
    noise = rng.integers(0, 60, (n, 32, 32))
    images = (noise + np.where(planted == "a", 120, 40)[:, None, None]).astype(np.uint8)
    found = _probe_on(planted, images)
    assert found["probe_site_accuracy"] >= 0.95 and 0.3 < found["probe_site_majority"] < 0.7, found
    shuffled = _probe_on(np.where(rng.random(n) < 0.5, "a", "b"), images)
    assert shuffled["probe_site_accuracy"] < shuffled["probe_site_majority"] + 0.15, shuffled
