"""A run's training state between epochs (TrainState), and the Checkpointer that keeps the latest
one in memory and writes it to disk on request or every few epochs, so that a stopped run (a
scheduler's signal, a time limit, a hard kill) resumes where it was. No MLflow here.

A resumed run gives the same numbers as an uninterrupted one on the CPU: the state holds every
source of randomness a run draws from after model construction (the data-order generator and the
global torch, NumPy and Python generators), and is taken at an epoch boundary.

Checkpoint folders sit on shared file systems, written by preempted jobs: the file holds tensors,
plain containers and numbers only (the NumPy generator's state as a tensor), so it loads with
``torch.load(weights_only=True)`` and a crafted file can never run code. A file in any other form,
an older format's included, is ignored with a warning naming it.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xray_ablate.data.atomic import temp_path_beside
from xray_ablate.train.progress import Progress

log = logging.getLogger(__name__)
FORMAT = "xray-ablate-train-state/2"  # written into every file; any other file is not resumed from


@dataclass
class TrainState:
    epoch: int  # the last finished epoch
    stopped: bool  # early stopping ended the run at ``epoch``
    seconds: float  # training time so far
    model: dict
    optimizer: dict
    schedule: dict | None
    generator: torch.Tensor  # the data-order and augmentation generator
    rng: dict  # global torch (CPU and CUDA), NumPy and Python generator states
    progress: dict  # history, best loss, epoch and state (early stopping counts from best_epoch)
    meta: dict = field(default_factory=dict)  # who the state belongs to (the job fills it in)

    @staticmethod
    def capture(epoch: int, stopped: bool, seconds: float, model: nn.Module, optimizer: torch.optim.Optimizer,
                schedule, generator: torch.Generator, progress: Progress) -> TrainState:
        """A copy (on the CPU) that later training steps do not change."""
        rng = {"torch": torch.get_rng_state(), "numpy": _numpy_state_as_tensors(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return TrainState(
            epoch, stopped, seconds, _cpu_copy(model.state_dict()), _cpu_copy(optimizer.state_dict()),
            _cpu_copy(schedule.state_dict()) if schedule is not None else None, generator.get_state(), rng,
            {"history": [dict(row) for row in progress.history], "best_loss": progress.best_loss,
             "best_epoch": progress.best_epoch, "best_state": progress.best_state})

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule, generator: torch.Generator,
                progress: Progress) -> None:
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        if schedule is not None:
            schedule.load_state_dict(self.schedule)
        generator.set_state(self.generator)
        torch.set_rng_state(self.rng["torch"])
        np.random.set_state(_numpy_state_from_tensors(self.rng["numpy"]))
        random.setstate(self.rng["python"])
        if "cuda" in self.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.rng["cuda"])
        progress.history = [dict(row) for row in self.progress["history"]]
        progress.best_loss, progress.best_epoch = self.progress["best_loss"], self.progress["best_epoch"]
        progress.best_state = self.progress["best_state"]


class Checkpointer:
    """One run's checkpoint file. fit() hands it the state after every epoch (``keep``); it writes
    the state every ``every`` epochs (``save_if_due``; 0: never) and whenever ``save`` is called
    (a signal).
    ``resume`` is the state to continue from, if the file held one of this run (``meta`` matches)."""

    def __init__(self, path: str | Path, every: int, meta: dict):
        self.path, self.every, self.meta = Path(path), every, dict(meta)
        self.latest: TrainState | None = None
        self.resume = self._load()

    def _load(self) -> TrainState | None:
        if not self.path.is_file():
            return None
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(stored, dict) or stored.pop("format", None) != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            state = TrainState(**stored)
        except pickle.UnpicklingError:  # torch refused a global: a crafted file or the older format
            log.warning("checkpoint %s holds objects other than tensors and plain values (an older format "
                        "or a crafted file); not unpickled: training from the start", self.path)
            return None
        except Exception as err:  # cut short by a hard kill, another format, or not ours: start over
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("checkpoint %s unreadable (%s): training from the start", self.path, reason)
            return None
        mismatch = {k: (state.meta.get(k), v) for k, v in self.meta.items() if state.meta.get(k) != v}
        if mismatch:
            log.warning("checkpoint %s is of another run %s: training from the start", self.path, mismatch)
            return None
        return state

    def keep(self, state: TrainState) -> None:
        """The state after an epoch, in memory (what a signal's ``save`` writes)."""
        state.meta = {**self.meta, **state.meta}
        self.latest = state

    def save_if_due(self) -> None:
        """Every ``every`` epochs: write the kept state. Called once the epoch is recorded, so a
        hard kill never leaves a checkpoint ahead of the recorded epochs (at worst one is redone)."""
        if self.every and self.latest is not None and self.latest.epoch % self.every == 0:
            self.save()

    def save(self) -> int | None:
        """Write the latest state; its epoch (None when no epoch has finished yet)."""
        if self.latest is None:
            return None
        tmp = temp_path_beside(self.path)  # a kill while writing leaves the last whole file
        try:
            torch.save({"format": FORMAT, **asdict(self.latest)}, tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("checkpoint of epoch %d written to %s", self.latest.epoch, self.path)
        return self.latest.epoch

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _numpy_state_as_tensors() -> dict:
    """NumPy's global generator state with its key array as a tensor (weights_only loads no arrays)."""
    state = np.random.get_state(legacy=False)
    return {**state, "state": {"key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
                               "pos": int(state["state"]["pos"])},
            "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def _numpy_state_from_tensors(state: dict) -> dict:
    return {**state, "state": {**state["state"], "key": state["state"]["key"].numpy().astype(np.uint32)}}


def _cpu_copy(obj):
    """Tensors in nested dicts and lists copied to the CPU (fresh storage: later steps do not touch it)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj
