"""One training run: data -> model -> epochs -> best checkpoint -> metrics, all logged to MLflow.

Called inside an active MLflow run (see xray_ablate.tracking.run.mlflow_run).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from xray_ablate import settings
from xray_ablate.data.labels import CLASSES
from xray_ablate.data.prepare import PreparedData, prepare
from xray_ablate.errors import UserError
from xray_ablate.models import BackboneSpec, build_model, uses_training_stats
from xray_ablate.tracking import schema
from xray_ablate.tracking.run import log_config, log_figure, log_json, scratch_dir
from xray_ablate.train import figures, metrics
from xray_ablate.train.augment import AugmentOptions
from xray_ablate.train.device import seed_everything, select_device
from xray_ablate.train.loop import Batches, evaluate, train_one_epoch
from xray_ablate.train.optim import build_optimizer, build_schedule

log = logging.getLogger(__name__)
# Keep the images on the GPU when they take less than this share of its free memory.
DEVICE_MEMORY_SHARE = 0.3


@dataclass
class SplitIndices:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def load_data(cfg: DictConfig) -> PreparedData:
    config = settings.data_config(cfg)  # first: a missing dataset.root is a clear error
    settings.ensure_synthetic(cfg)
    return prepare(config)


def train_run(cfg: DictConfig, data: PreparedData | None = None) -> dict[str, float]:
    """Train and test one configuration with one seed; returns the final metrics."""
    log_config(cfg)
    if int(cfg.trainer.epochs) < 1:
        raise UserError(f"trainer.epochs must be at least 1, not {cfg.trainer.epochs}")
    data = data or load_data(cfg)
    # Images without a patient id count as their own patient: a leakage risk worth seeing.
    mlflow.log_metrics({"data_patient_fallbacks": data.patient_fallbacks,
                        "data_excluded": len(data.excluded)})
    mlflow.set_tags({schema.FINGERPRINT: data.fingerprint, schema.SPLIT_HASH: data.manifest_hash})
    mlflow.log_artifact(str(data.manifest_path), "split")
    mlflow.log_text(data.excluded.to_csv(index=False), "data/excluded.csv")

    device = select_device(cfg.device)
    seed_everything(int(cfg.seed), deterministic=bool(cfg.trainer.deterministic))
    split, test_outlier = _split_indices(data, cfg)
    labels = data.table["label"].to_numpy()
    batches = {name: _batches(data, getattr(split, name), device) for name in ("train", "val", "test")}
    mlflow.log_params({f"n_{name}": len(getattr(split, name)) for name in ("train", "val", "test")})

    spec = BackboneSpec(cfg.backbone.name, bool(cfg.backbone.pretrained), cfg.backbone.freeze,
                        int(cfg.backbone.unfreeze_last), bool(cfg.backbone.download))
    normalize = bool(cfg.normalization.enabled)
    stats = None
    if normalize and uses_training_stats(spec):
        stats = _normalization_stats(data, split.train)
        mlflow.log_params({"norm_mean": round(stats[0], 6), "norm_std": round(stats[1], 6)})
    model = build_model(spec, len(CLASSES), int(cfg.image_size), normalize, stats).to(device)
    weights = class_weights(cfg.class_weights.weights, labels[split.train])
    if weights is not None:
        mlflow.log_params({f"class_weight_{c}": round(float(w), 4) for c, w in zip(CLASSES, weights, strict=True)})
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(
        weights, dtype=torch.float32, device=device))
    optimizer = build_optimizer(model, cfg.trainer)
    schedule = build_schedule(optimizer, cfg.trainer)
    mlflow.log_params({"optimizer_class": type(optimizer).__name__,
                       "lr_schedule_class": type(schedule).__name__ if schedule else "constant"})
    augment = AugmentOptions(cfg.augmentation.rotation_turns, cfg.augmentation.zoom,
                             cfg.augmentation.translate, cfg.augmentation.fill) \
        if cfg.augmentation.enabled else None
    generator = torch.Generator().manual_seed(int(cfg.seed))  # data order and augmentation
    amp, batch_size = bool(cfg.trainer.amp), int(cfg.trainer.batch_size)

    history, best_state, best = [], None, (float("inf"), 0)
    patience = cfg.trainer.early_stopping_patience
    started = time.perf_counter()
    for epoch in range(1, int(cfg.trainer.epochs) + 1):
        train_loss, train_acc = train_one_epoch(
            model, criterion, optimizer, batches["train"], batch_size, device, generator, augment,
            amp, desc=f"epoch {epoch}/{cfg.trainer.epochs}")
        val_loss, val_probs = evaluate(model, batches["val"], batch_size, device, amp)
        val_acc = float((val_probs.argmax(1) == labels[split.val]).mean())
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"]}
        if schedule is not None:
            schedule.step()
        history.append(row)
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f", epoch,
                 cfg.trainer.epochs, train_loss, train_acc, val_loss, val_acc)
        if val_loss < best[0]:
            best = (val_loss, epoch)
            best_state = copy.deepcopy(model.state_dict())
        elif patience is not None and epoch - best[1] >= int(patience):
            log.info("early stop: no better validation loss for %d epochs", patience)
            break
    train_seconds = time.perf_counter() - started

    model.load_state_dict(best_state)
    results = {"best_epoch": float(best[1]), "epochs_run": float(len(history)),
               "train_seconds": train_seconds,
               "train_images_per_second": len(split.train) * len(history) / train_seconds}
    probs = {}
    for name in ("val", "test"):
        loss, probs[name] = evaluate(model, batches[name], batch_size, device, amp)
        results.update(metrics.classification_metrics(labels[getattr(split, name)], probs[name], name))
        results["test_loss" if name == "test" else "best_val_loss"] = loss
    if test_outlier is not None and (~test_outlier).any():
        keep = ~test_outlier
        sub = metrics.classification_metrics(labels[split.test][keep], probs["test"][keep], "test_filtered")
        results["test_filtered_accuracy"] = sub["test_filtered_accuracy"]
    mlflow.log_metrics(results)
    test_ids = data.table["image_id"].to_numpy()[split.test]
    _log_artifacts(cfg, model, test_ids, labels[split.test], probs["test"], pd.DataFrame(history), best[1])
    return results


def class_weights(setting, train_labels: np.ndarray) -> np.ndarray | None:
    """None (off), inverse frequency scaled so the largest class has weight 1, or a list."""
    if setting is None:
        return None
    if setting == "inverse_frequency":
        counts = np.bincount(train_labels, minlength=len(CLASSES)).astype(float)
        if (counts == 0).any():
            missing = [c for c, n in zip(CLASSES, counts, strict=True) if n == 0]
            raise UserError(f"class weights: no training image of {', '.join(missing)}")
        return counts.max() / counts
    weights = np.asarray(list(setting), dtype=float)
    if weights.shape != (len(CLASSES),) or (weights < 0).any():
        raise UserError(f"class_weights.weights must be {len(CLASSES)} non-negative numbers in the "
                        f"order {', '.join(CLASSES)}, not {list(setting)}")
    return weights


def _split_indices(data: PreparedData, cfg: DictConfig) -> tuple[SplitIndices, np.ndarray | None]:
    split = SplitIndices(*(data.split_indices(s) for s in ("train", "val", "test")))
    if not cfg.brisque_filter.enabled:
        return split, None
    from xray_ablate.quality.filter import brisque_filter

    result = brisque_filter(data, cfg)
    mlflow.log_metrics(result.metrics())
    kept = SplitIndices(split.train[result.keep[split.train]], split.val[result.keep[split.val]], split.test)
    return kept, result.test_outlier[split.test]


def _normalization_stats(data: PreparedData, train: np.ndarray) -> tuple[float, float]:
    """Mean and std of training pixels in [0, 1]: computed on the training split only.

    Summed in chunks of images, so a large training set is never copied to float64 whole."""
    total = total_sq = 0.0
    rows = np.sort(train)
    for start in range(0, len(rows), 256):
        chunk = np.asarray(data.images[rows[start:start + 256]], dtype=np.float64) / 255.0
        total += chunk.sum()
        total_sq += np.square(chunk).sum()
    count = len(rows) * data.images.shape[1] * data.images.shape[2]
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def _batches(data: PreparedData, rows: np.ndarray, device: torch.device) -> Batches:
    images = torch.from_numpy(np.asarray(data.images[rows])).unsqueeze(1)
    labels = torch.from_numpy(data.table["label"].to_numpy()[rows].astype(np.int64))
    if device.type != "cuda" or images.numel() < DEVICE_MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]:
        return Batches(images.to(device), labels.to(device))
    return Batches(images.pin_memory(), labels)


def _log_artifacts(cfg: DictConfig, model: nn.Module, test_ids: np.ndarray, y_test: np.ndarray,
                   probs: np.ndarray, history: pd.DataFrame, best_epoch: int) -> None:
    # Per-image predictions allow image-level analyses later (McNemar, bootstrap over images).
    predictions = pd.DataFrame({"image_id": test_ids, "label": y_test})
    for i, cls in enumerate(CLASSES):
        predictions[f"prob_{cls}"] = probs[:, i]
    mlflow.log_text(predictions.to_csv(index=False, float_format="%.6g"), "predictions.csv")
    text, as_dict = metrics.report(y_test, probs)
    mlflow.log_text(text, "classification_report.txt")
    log_json(as_dict, "classification_report.json")
    log_figure(figures.confusion_figure(metrics.confusion(y_test, probs), "test"), "confusion_matrix.png")
    log_figure(figures.learning_curve_figure(history, best_epoch), "learning_curve.png")
    mlflow.log_text(history.to_csv(index=False), "history.csv")
    if cfg.tracking.log_checkpoint:
        with scratch_dir() as tmp:
            path = tmp / "best_model.pt"
            torch.save(model.state_dict(), path)
            mlflow.log_artifact(str(path), "checkpoint")
