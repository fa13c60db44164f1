"""fit_many(): train K runs that share an architecture and image size in one vectorised pass.

Each member is the run fit() would train for its config, built the same way: its own model
(initialised after seeding torch with its seed), its own CPU generator for data order and
augmentation (drawn in the same order as train/loop.py), its own class weights, normalisation
stats, training rows, optimizer settings, history, best state and early stopping. One forward
and backward serves all members: their parameters are stacked each step and the architecture runs
under ``torch.func.vmap(functional_call)`` with ``randomness="different"``, so every member draws
its own dropout masks (from the global torch generator, so not the masks fit() would draw).

Each member keeps its own leaf parameters (those of its ordinary nn.Module) and the stack is
rebuilt every step. That keeps torch.optim's own update rules: members with the same optimizer
settings share ONE optimizer over all their parameters (Adam/AdamW/SGD are element-wise and keep
per-tensor state, so that is K independent optimizers in one foreach call), while a member with no
batch this step (its epoch is shorter, it stopped early or diverged) has no gradient and is skipped
exactly as torch.optim skips a parameter without one: no moment update, no step count. A member
whose loss is NaN or infinite at an epoch's end fails alone; the rest go on.

A pack runs in passes of at most ``_Stack.per_pass`` members: vmap makes one tensor of the members'
activations, and CUDA's convolution kernels index tensors of up to 2**31 elements only (64 members
of cnn16 at 200 px and batch 32 would need 5.2e9); on CUDA a probe step also caps a pass at what
fits in ``memory_fraction`` of the free GPU memory. Each pass accumulates its members' own
gradients; the optimizers step once after the last pass, so the passes change no number.

``compile=True`` runs the training step's vmapped forward (and so its backward) through
``torch.compile``, every batch padded to the full size so that one shape compiles once; evaluation
stays eager. Where compiling fails, the pack goes on eagerly and says why (a warning, and each
run's ``batched_compile`` param).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from xray_ablate.config.schema import Config
from xray_ablate.data.labels import CLASSES
from xray_ablate.data.prepare import PreparedData
from xray_ablate.errors import UserError
from xray_ablate.models import build_model
from xray_ablate.train.augment import affine_theta, warp
from xray_ablate.train.device import autocast, seed_everything
from xray_ablate.train.fit import RunResult, class_weights, run_params, run_result, to_batches
from xray_ablate.train.inputs import FitInputs
from xray_ablate.train.loop import Batches, TrainingDiverged, to_input
from xray_ablate.train.optim import OPTIMIZERS, SCHEDULES
from xray_ablate.train.progress import Progress
from xray_ablate.train.sampling import epoch_rows

log = logging.getLogger(__name__)
INDEX_LIMIT = 2**31 - 1  # elements of one tensor that 32-bit indexing reaches
MEMORY_FRACTION = 0.8  # of the free GPU memory, for one pass


@dataclass
class _Member:
    index: int
    config: Config
    inputs: FitInputs
    model: nn.Module
    weights: np.ndarray | None  # class weights (None: off)
    loss_weights: torch.Tensor  # (classes,) on the device: ones when the run has no class weights
    generator: torch.Generator
    progress: Progress
    positions: dict[str, torch.Tensor]  # split -> rows of the resident images, in the split's order
    train_labels: torch.Tensor  # CPU, in the training split's order (class_balance draws from them)
    params: dict = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    order: torch.Tensor | None = None  # this epoch's rows, positions into positions["train"]
    running: bool = True
    failed: TrainingDiverged | None = None
    train_seconds: float = 0.0
    sums: list = field(default_factory=list)  # this epoch's summed training loss and correct count

    @property
    def batch_size(self) -> int:
        return self.config.trainer.batch_size

    def steps(self) -> int:
        return -(-len(self.order) // self.batch_size)


def pack_key(config: Config) -> tuple:
    """Runs with the same key can train in one fit_many pack."""
    b = config.backbone
    return (b.name, b.pretrained, b.freeze, b.unfreeze_last, config.image_size, config.trainer.amp)


def fit_many(configs: list[Config], data: PreparedData, inputs: list[FitInputs], device: torch.device,
             on_epoch: Callable[[int, dict], None] | None = None, compile: bool = False,
             memory_fraction: float = MEMORY_FRACTION) -> list[RunResult | TrainingDiverged]:
    """Train every (config, inputs) pair; one RunResult per member, or the TrainingDiverged that
    ended it. ``on_epoch(member, row)`` receives each epoch's history row."""
    if len(configs) != len(inputs) or not configs:
        raise ValueError("fit_many needs one FitInputs per config, and at least one config")
    if len({pack_key(c) for c in configs}) > 1:
        raise UserError("fit_many: members must share backbone, image_size and trainer.amp; "
                        f"got {sorted({pack_key(c) for c in configs})}")
    rows = np.unique(np.concatenate([getattr(i, s) for i in inputs for s in ("train", "val", "test")]))
    resident = to_batches(data, rows, device)  # every row any member uses, once
    labels = data.table["label"].to_numpy()
    members = [_member(k, c, i, labels, rows, device) for k, (c, i) in enumerate(zip(configs, inputs, strict=True))]
    base = copy.deepcopy(members[0].model).to("meta")
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in base.modules()):
        raise UserError(f"fit_many: backbone {configs[0].backbone.name} has BatchNorm, whose running "
                        "statistics cannot be vmapped; train it with the basic launcher")
    schedules = _optimizers(members)
    step = _Stack(base, members, device, configs[0].trainer.amp, compile, memory_fraction)

    started = time.perf_counter()
    for epoch in range(1, max(c.trainer.epochs for c in configs) + 1):
        active = [m for m in members if m.running and epoch <= m.config.trainer.epochs]
        if not active:
            break
        lrs = {m.index: m.optimizer.param_groups[0]["lr"] for m in active}
        _train_epoch(step, active, resident)
        for m in active:
            if not np.isfinite(m.sums[0]):
                m.running, m.train_seconds = False, time.perf_counter() - started
                m.failed = TrainingDiverged(f"training loss is {m.sums[0] / len(m.order)}: lower trainer.lr or "
                                            "check the data")
        alive = [m for m in active if m.running]
        val = step.evaluate(alive, resident, "val") if alive else {}
        for schedule in schedules:
            schedule.step()
        for m in alive:
            val_loss, val_probs = val[m.index]
            stop = m.progress.record(epoch, m.sums[0] / len(m.order), m.sums[1] / len(m.order), val_loss,
                                     val_probs, labels[m.inputs.val], lrs[m.index],
                                     lambda m=m: copy.deepcopy(m.model.state_dict()))
            if on_epoch is not None:
                on_epoch(m.index, m.progress.last)
            if stop or epoch == m.config.trainer.epochs:
                m.running, m.train_seconds = False, time.perf_counter() - started

    trained = [m for m in members if m.failed is None]
    for m in trained:
        m.model.load_state_dict(m.progress.best_state)
        m.model.eval()
    scores = {name: step.evaluate(trained, resident, name) for name in ("val", "test")}
    results = []
    for m in members:
        if m.failed is not None:
            results.append(m.failed)
            continue
        losses = {name: scores[name][m.index][0] for name in scores}
        probs = {name: scores[name][m.index][1] for name in scores}
        params = {**m.params, "batched_compile": step.compiled_status()} if compile else m.params
        results.append(run_result(data, m.inputs, params, m.progress, m.train_seconds, losses, probs, m.model))
    return results


def _member(k: int, config: Config, inputs: FitInputs, labels: np.ndarray,
            rows: np.ndarray, device: torch.device) -> _Member:
    """The member's model, built right after seeding torch with its seed, as fit() does."""
    seed_everything(config.seed, deterministic=config.trainer.deterministic)
    model = build_model(config.backbone, len(CLASSES), config.image_size, config.normalization.enabled,
                        inputs.norm_stats).to(device)
    weights = class_weights(config.class_weights.weights, labels[inputs.train])
    loss_weights = torch.ones(len(CLASSES)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    positions = {s: torch.from_numpy(np.searchsorted(rows, getattr(inputs, s))) for s in ("train", "val", "test")}
    train_labels = torch.from_numpy(labels[inputs.train].astype(np.int64))
    return _Member(k, config, inputs, model, weights, loss_weights.to(device),
                   torch.Generator().manual_seed(config.seed),
                   Progress(config.trainer.epochs, config.trainer.early_stopping_patience,
                            f"member {k} (seed {config.seed})"), positions, train_labels)


def _optimizers(members: list[_Member]) -> list:
    """One optimizer (and schedule) per distinct set of optimizer settings, over all its members'
    trainable parameters; returns the schedules."""
    groups: dict[tuple, list[_Member]] = {}
    for m in members:
        t = m.config.trainer
        key = (t.optimizer, t.lr, t.weight_decay, t.momentum, t.nesterov, t.lr_schedule, t.lr_step_epochs,
               t.lr_gamma, t.epochs)
        groups.setdefault(key, []).append(m)
    schedules = []
    for group in groups.values():
        trainer = group[0].config.trainer
        trainable = [p for m in group for p in m.model.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS[trainer.optimizer](trainable, trainer)
        schedule = SCHEDULES[trainer.lr_schedule](optimizer, trainer)
        for m in group:
            m.optimizer = optimizer
            m.params = run_params(m.weights, type(optimizer).__name__,
                                  type(schedule).__name__ if schedule else "constant")
        if schedule is not None:
            schedules.append(schedule)
    return schedules


class _Stack:
    """The members' shared architecture under vmap over their stacked parameters."""

    def __init__(self, base: nn.Module, members: list[_Member], device: torch.device, amp: bool,
                 compile: bool = False, memory_fraction: float = MEMORY_FRACTION):
        self.base, self.device, self.amp = base, device, amp
        self.named = {m.index: dict(m.model.named_parameters()) for m in members}
        # Buffers (Classifier's mean and std) never change: stacked once, picked per step.
        self.buffers = {name: torch.stack([dict(m.model.named_buffers())[name] for m in members])
                        for name, _ in base.named_buffers()}
        self.optimizers = list({id(m.optimizer): m.optimizer for m in members}.values())

        def forward(params, buffers, x):
            return functional_call(base, (params, buffers), (x,))

        self.forward = vmap(forward, randomness="different")  # own inputs per member
        self.forward_shared = vmap(forward, in_dims=(0, 0, None), randomness="different")  # the same inputs
        # Evaluation (a tenth of an epoch's work) stays eager: each input shape is one more compile.
        self.train_forward = _CompiledOrEager(self.forward, compile)
        batch = max(m.batch_size for m in members)
        # A compiled step pads every batch to the full size: one shape, one compile.
        self.pad_to = batch if compile else 0
        self.per_pass = max(1, INDEX_LIMIT // (batch * _widest_activation(base, members[0].config.image_size)))
        if device.type == "cuda":
            fits = int(memory_fraction * _free_memory(device) // _pass_memory_per_member(self, members[0]))
            self.per_pass = max(1, min(self.per_pass, fits))
            log.info("fit_many: %d members a pass (32-bit indexing and %.0f%% of free GPU memory)",
                     self.per_pass, 100 * memory_fraction)

    def compiled_status(self) -> str:
        """on, or why torch.compile fell back to eager."""
        failed = self.train_forward.failed
        return f"failed, ran eagerly: {failed}" if failed else "on"

    def stacked(self, members: list[_Member]) -> tuple[dict, dict]:
        idx = torch.tensor([m.index for m in members], device=self.device)
        params = {name: torch.stack([self.named[m.index][name] for m in members]) for name in self.named[
            members[0].index]}
        return params, {name: b.index_select(0, idx) for name, b in self.buffers.items()}

    def train_step(self, live: list[_Member], x: torch.Tensor, y: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of every live member on its own (padded) batch: x (L, B, C, H, W),
        y and mask (L, B). The summed loss and correct count per member (weighted mean loss as
        nn.CrossEntropyLoss(weight) computes it, times the batch size)."""
        self.base.train()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        sums = [self._backward(live[i:i + self.per_pass], x[i:i + self.per_pass], y[i:i + self.per_pass],
                               mask[i:i + self.per_pass]) for i in range(0, len(live), self.per_pass)]
        for optimizer in self.optimizers:  # members without a batch have no gradient: skipped
            optimizer.step()
        return torch.cat([loss for loss, _ in sums]), torch.cat([correct for _, correct in sums])

    def _backward(self, live: list[_Member], x: torch.Tensor, y: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of train_step: the members' gradients, their summed losses and correct counts."""
        params, buffers = self.stacked(live)
        with autocast(self.device, self.amp):
            logits = self.train_forward(params, buffers, x)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        w = torch.stack([m.loss_weights for m in live]).gather(1, y) * mask
        loss = (w * nll).sum(1) / w.sum(1)
        loss.sum().backward()
        return loss.detach() * mask.sum(1), ((logits.argmax(-1) == y) & mask).sum(1)

    @torch.no_grad()
    def evaluate(self, members: list[_Member], resident: Batches, split: str) -> dict[int, tuple]:
        """Per member: mean unweighted cross-entropy and class probabilities of its rows of a
        split, as train/loop.py evaluate() computes them."""
        if len(members) > self.per_pass:
            return {k: v for i in range(0, len(members), self.per_pass)
                    for k, v in self.evaluate(members[i:i + self.per_pass], resident, split).items()}
        self.base.eval()
        params, buffers = self.stacked(members)
        rows = [m.positions[split] for m in members]
        shared = all(torch.equal(r, rows[0]) for r in rows)
        size = max(m.batch_size for m in members)
        loss_sum = torch.zeros(len(members), device=self.device)
        probs = []
        for start in range(0, max(len(r) for r in rows), size):
            chunks = [r[start:start + size] for r in rows]
            with autocast(self.device, self.amp):
                if shared:
                    x, y = _gather(resident, chunks[0][None], self.device)
                    logits = self.forward_shared(params, buffers, x[0])
                    y, mask = y.expand(len(members), -1), torch.ones_like(y, dtype=torch.bool)
                else:
                    idx, mask = _pad(chunks)
                    x, y = _gather(resident, idx, self.device)
                    mask = mask.to(self.device)
                    logits = self.forward(params, buffers, x)
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)
            loss_sum += (nll * mask).sum(1)
            probs.append(torch.softmax(logits.float(), dim=-1))
        probs = torch.cat(probs, 1).cpu().numpy()
        losses = loss_sum.tolist()
        return {m.index: (losses[i] / max(len(rows[i]), 1), probs[i, :len(rows[i])])
                for i, m in enumerate(members)}


class _CompiledOrEager:
    """``torch.compile(fn)`` when asked for; the first failure (compiling happens at a call) is
    logged once and every later call runs ``fn`` eagerly."""

    def __init__(self, fn: Callable, compile: bool):
        self.fn, self.compiled, self.failed = fn, torch.compile(fn) if compile else None, ""

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as err:  # torch.compile raises many types; eager is the fallback
                self.compiled, self.failed = None, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
                log.warning("fit_many: torch.compile failed, running eagerly: %s", self.failed)
        return self.fn(*args)


def _free_memory(device: torch.device) -> int:
    """Bytes free on the GPU, counting blocks PyTorch's allocator holds but does not use."""
    return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _pass_memory_per_member(stack: _Stack, member: _Member) -> int:
    """Peak bytes one member adds to a training pass: one eager forward and backward of a copy of
    its parameters on a blank batch (the random state is restored: the probe draws no number a
    member would)."""
    device = stack.device
    params = {n: p.detach()[None].clone().requires_grad_(p.requires_grad)
              for n, p in stack.named[member.index].items()}
    buffers = {n: b[:1] for n, b in stack.buffers.items()}
    size = member.config.image_size
    x = torch.full((1, member.batch_size, 1, size, size), 0.5, device=device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.random.fork_rng(devices=[device]):
        stack.base.train()
        with autocast(device, stack.amp):
            logits = stack.forward(params, buffers, x)
        logits.float().sum().backward()
    del logits, params, x
    return max(1, torch.cuda.max_memory_allocated(device) - before)


def _widest_activation(base: nn.Module, image_size: int) -> int:
    """Elements of the model's largest layer output for one image (shapes only: ``base`` is on
    the meta device)."""
    widest = [image_size * image_size]
    hooks = [m.register_forward_hook(lambda _m, _i, out: widest.append(out.numel() if torch.is_tensor(out) else 0))
             for m in base.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            base.eval()(torch.empty(1, 1, image_size, image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return max(widest)


def _pad(chunks: list[torch.Tensor], width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (L, B) padded with row 0 to the longest chunk (or ``width``), and which are real."""
    width = max(width, *(len(c) for c in chunks))
    idx = torch.zeros(len(chunks), width, dtype=torch.long)
    mask = torch.zeros(len(chunks), width, dtype=torch.bool)
    for i, c in enumerate(chunks):
        idx[i, :len(c)], mask[i, :len(c)] = c, True
    return idx, mask


def _gather(resident: Batches, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (L, B, C, H, W) in [0, 1] and labels (L, B) of resident rows idx (L, B)."""
    flat = idx.flatten().to(resident.images.device)
    x = to_input(resident.images[flat], device)
    return x.view(*idx.shape, *x.shape[1:]), resident.labels[flat].to(device).view(idx.shape)


def _train_epoch(stack: _Stack, members: list[_Member], resident: Batches) -> None:
    """One epoch of every member: its own rows in its own order and its own augmentation draws,
    from its generator in the order train/loop.py train_one_epoch draws them. Sets m.sums."""
    device = stack.device
    for m in members:
        m.order = epoch_rows(m.train_labels, m.config.class_balance, m.generator)
    loss_sum = torch.zeros(len(members), device=device)
    correct = torch.zeros(len(members), device=device, dtype=torch.long)
    for step in range(max(m.steps() for m in members)):
        live = [i for i, m in enumerate(members) if step < m.steps()]
        batches = [members[i].order[step * members[i].batch_size:(step + 1) * members[i].batch_size]
                   for i in live]
        idx, mask = _pad([members[i].positions["train"][b] for i, b in zip(live, batches, strict=True)], stack.pad_to)
        x, y = _gather(resident, idx, device)
        _augment(x, [members[i] for i in live], [len(b) for b in batches])
        sums = stack.train_step([members[i] for i in live], x, y, mask.to(device))
        where = torch.tensor(live, device=device)
        loss_sum.index_add_(0, where, sums[0])
        correct.index_add_(0, where, sums[1])
    for m, loss, n in zip(members, loss_sum.tolist(), correct.tolist(), strict=True):
        m.sums = [loss, n]


def _augment(x: torch.Tensor, live: list[_Member], sizes: list[int]) -> None:
    """Warp, in place, the real rows of x (L, B, C, H, W) of members with augmentation on."""
    rows, thetas, fills = [], [], []
    for i, (m, n) in enumerate(zip(live, sizes, strict=True)):
        opts = m.config.augmentation
        if opts.enabled:
            rows.append(torch.arange(n) + i * x.shape[1])
            thetas.append(affine_theta(n, opts, m.generator))
            fills.append(torch.full((n,), float(opts.fill)))
    if not rows:
        return
    flat = x.view(-1, *x.shape[2:])
    rows = torch.cat(rows).to(x.device)
    fill = torch.cat(fills)
    fill = fill.view(-1, 1, 1, 1).to(x.device) if fill.any() else 0.0
    flat[rows] = warp(flat[rows], torch.cat(thetas).to(x.device), fill)
