"""One run's epochs as they finish: the history, the best validation loss and its state, early
stopping, and the epoch log lines."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from xray_ablate import evaluation
from xray_ablate.config.choices import CLASSES

log = logging.getLogger(__name__)
FLAT_LOSS_EPOCHS = 3  # warn when the training loss is still at ln(classes) after this many epochs


class Progress:
    def __init__(self, epochs: int, patience: int | None):
        self.epochs, self.patience = epochs, patience
        self.history: list[dict] = []
        self.best_loss, self.best_epoch, self.best_state = float("inf"), 0, None

    def record(self, epoch: int, train_loss: float, train_acc: float, val_loss: float,
               val_probs: np.ndarray, val_labels: np.ndarray, lr: float, state: Callable[[], dict]) -> bool:
        """Add the epoch's history row; keep ``state()`` when the validation loss is the lowest so
        far. True when early stopping ends the run here."""
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
               "val_acc": float((val_probs.argmax(1) == val_labels).mean()), "lr": lr}
        self.history.append(row)
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f", epoch,
                 self.epochs, train_loss, train_acc, val_loss, row["val_acc"])
        chance = math.log(len(CLASSES))
        if epoch == FLAT_LOSS_EPOCHS and train_loss >= evaluation.FLAT_LOSS_SHARE * chance:
            log.warning("training loss %.3f has not moved off ln(%d) = %.3f after %d epochs: the model may "
                        "not learn (try another trainer.lr)", train_loss, len(CLASSES), chance,
                        epoch)
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.best_state = val_loss, epoch, state()
            return False
        if self.patience is not None and epoch - self.best_epoch >= self.patience:
            log.info("early stop: no better validation loss for %d epochs", self.patience)
            return True
        return False

    @property
    def last(self) -> dict:
        return self.history[-1]
