"""fit(): train one configuration with one seed and test its best checkpoint. No MLflow here.

Reads like torchvision's references/classification/train.py: data to the device, model,
criterion, optimizer and schedule, then epochs of train + validate, keeping the state with the
lowest validation loss, which is the one tested.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from xray_ablate import evaluation
from xray_ablate.config.choices import CLASSES
from xray_ablate.config.schema import ClassWeightsConfig, Config
from xray_ablate.data.prepare import PreparedData
from xray_ablate.errors import UserError
from xray_ablate.models import build_model
from xray_ablate.train.checkpoint import Checkpointer, TrainState
from xray_ablate.train.device import place_model, seed_everything
from xray_ablate.train.inputs import FitInputs
from xray_ablate.train.loop import Batches, TrainingDiverged, evaluate, train_one_epoch
from xray_ablate.train.optim import build_optimizer, build_schedule
from xray_ablate.train.progress import Progress

log = logging.getLogger(__name__)
# Keep the images on the GPU when they take less than this share of its free memory.
DEVICE_MEMORY_SHARE = 0.3


@dataclass
class RunResult:
    params: dict  # what the run chose from the data: class weights, optimizer class, counts...
    history: pd.DataFrame  # one row per epoch: train/val loss and accuracy, learning rate
    best_epoch: int
    metrics: dict[str, float]  # final val_* and test_* metrics of the best state, timings
    predictions: pd.DataFrame  # per test image: image_id, label, prob_<class>
    model: nn.Module  # with the best state loaded, in eval mode
    learned: dict  # evaluation.learning_check: did the run learn, and if not, why


def fit(config: Config, data: PreparedData, inputs: FitInputs, device: torch.device,
        on_epoch: Callable[[dict], None] | None = None, checkpoint: Checkpointer | None = None) -> RunResult:
    """``on_epoch`` receives each epoch's history row as soon as it exists (live curves).
    ``checkpoint``: continue from its ``resume`` state, and hand it the state after every epoch."""
    seed_everything(config.seed, deterministic=config.trainer.deterministic)
    labels = data.table["label"].to_numpy()
    batches = {name: to_batches(data, getattr(inputs, name), device) for name in ("train", "val", "test")}

    model = place_model(build_model(config.backbone, len(CLASSES), config.image_size,
                                    config.normalization.enabled, inputs.norm_stats), device)
    weights = class_weights(config.class_weights, labels[inputs.train])
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(
        weights, dtype=torch.float32, device=device))
    trainer = config.trainer
    optimizer = build_optimizer(model, trainer)
    schedule = build_schedule(optimizer, trainer)
    augment = config.augmentation if config.augmentation.enabled else None
    generator = torch.Generator().manual_seed(config.seed)  # data order and augmentation, on every device
    params = run_params(weights, type(optimizer).__name__,
                        type(schedule).__name__ if schedule else "constant")

    progress = Progress(trainer.epochs, trainer.early_stopping_patience)
    first, stop, earlier_seconds = 1, False, 0.0
    if checkpoint is not None and checkpoint.resume is not None:
        state = checkpoint.resume
        state.restore(model, optimizer, schedule, generator, progress)
        first, stop, earlier_seconds = state.epoch + 1, state.stopped, state.seconds
        log.info("resuming after epoch %d of %d", state.epoch, trainer.epochs)
    started = time.perf_counter() - earlier_seconds
    for epoch in range(first, trainer.epochs + 1):
        if stop:
            break
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(
            model, criterion, optimizer, batches["train"], trainer.batch_size, device, generator, augment,
            trainer.amp, desc=f"epoch {epoch}/{trainer.epochs}", balance=config.class_balance)
        val_loss, val_probs = evaluate(model, batches["val"], trainer.batch_size, device, trainer.amp)
        if schedule is not None:
            schedule.step()
        stop = progress.record(epoch, train_loss, train_acc, val_loss, val_probs, labels[inputs.val], lr,
                               lambda: copy.deepcopy(model.state_dict()))
        if checkpoint is not None:
            checkpoint.keep(TrainState.capture(epoch, stop, time.perf_counter() - started, model, optimizer,
                                               schedule, generator, progress))
        if on_epoch is not None:
            on_epoch(progress.last)
        if checkpoint is not None:
            checkpoint.save_if_due()
    train_seconds = time.perf_counter() - started

    if progress.best_state is None:  # no finite validation loss: there is no state to test
        raise TrainingDiverged(f"validation loss not finite at any of the {len(progress.history)} epochs: lower "
                               f"trainer.lr (now {trainer.lr}) or check the data")
    model.load_state_dict(progress.best_state)
    model.eval()
    losses, probs = {}, {}
    for name in ("val", "test"):
        losses[name], probs[name] = evaluate(model, batches[name], trainer.batch_size, device, trainer.amp)
    return run_result(data, inputs, params, progress, train_seconds, losses, probs, model)


def run_params(weights: np.ndarray | None, optimizer_class: str, schedule_class: str) -> dict:
    """What a run chose: optimizer and schedule classes, and the class weights it computed."""
    params = {"optimizer_class": optimizer_class, "lr_schedule_class": schedule_class}
    if weights is not None:
        params.update({f"class_weight_{c}": round(float(w), 4) for c, w in zip(CLASSES, weights, strict=True)})
    return params


def run_result(data: PreparedData, inputs: FitInputs, params: dict, progress: Progress, train_seconds: float,
               losses: dict[str, float], probs: dict[str, np.ndarray], model: nn.Module) -> RunResult:
    """The RunResult of a trained run from its best state's val and test losses and probabilities."""
    labels = data.table["label"].to_numpy()
    history = progress.history
    results = {"best_epoch": float(progress.best_epoch), "epochs_run": float(len(history)),
               "train_seconds": train_seconds,
               "train_images_per_second": len(inputs.train) * len(history) / train_seconds}
    for name in ("val", "test"):
        results.update(evaluation.classification_metrics(labels[getattr(inputs, name)], probs[name], name))
        results["test_loss" if name == "test" else "best_val_loss"] = losses[name]
    if inputs.test_outlier is not None and (~inputs.test_outlier).any():
        keep = ~inputs.test_outlier
        sub = evaluation.classification_metrics(labels[inputs.test][keep], probs["test"][keep], "test_filtered")
        results["test_filtered_accuracy"] = sub["test_filtered_accuracy"]
    y_test = labels[inputs.test]
    majority = evaluation.majority(labels[inputs.train], evaluation.LABELS)
    learned = evaluation.learning_check(y_test, probs["test"], history[-1]["train_loss"], majority)
    results.update({k: learned[k] for k in ("top_prediction_share", "loss_ratio", "majority_rate",
                                            "p_above_majority")})
    low, high = evaluation.wilson(int((probs["test"].argmax(1) == y_test).sum()), len(y_test))
    results.update({"test_accuracy_wilson_low": low, "test_accuracy_wilson_high": high})
    predictions = evaluation.predictions_frame(data.table["image_id"].to_numpy()[inputs.test], y_test, probs["test"])
    return RunResult(params, pd.DataFrame(history), progress.best_epoch, results, predictions, model, learned)


def class_weights(setting: ClassWeightsConfig, train_labels: np.ndarray) -> np.ndarray | None:
    """None (class_weights=off), inverse frequency scaled so the largest class has weight 1, or a list."""
    if not setting.enabled:
        return None
    if setting.weights == "inverse_frequency":
        counts = np.bincount(train_labels, minlength=len(CLASSES)).astype(float)
        if (counts == 0).any():
            missing = [c for c, n in zip(CLASSES, counts, strict=True) if n == 0]
            raise UserError(f"class weights: no training image of {', '.join(missing)}")
        return counts.max() / counts
    return np.asarray(list(setting.weights), dtype=float)  # checked by the config schema


def to_batches(data: PreparedData, rows: np.ndarray, device: torch.device) -> Batches:
    images = torch.from_numpy(np.asarray(data.images[rows])).unsqueeze(1)
    labels = torch.from_numpy(data.table["label"].to_numpy()[rows].astype(np.int64))
    if device.type != "cuda" or images.numel() < DEVICE_MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]:
        return Batches(images.to(device), labels.to(device))
    return Batches(images.pin_memory(), labels)
