"""Pick the device and seed every random number generator a run uses."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from xray_ablate.errors import UserError


def select_device(name: str = "auto") -> torch.device:
    """auto = cuda > mps > cpu; an explicit device that is not available is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} was asked for, but MPS is not available here")
    return device


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, channels-last on the CPU: oneDNN runs NHWC convolutions and
    pooling natively, while NCHW max-pooling at one thread costs as much as the convolution before
    it (cnn16 at 64 px: a training step 1.4x faster at 1 thread, 1.7x at 2; BENCHMARKS.md).
    CUDA and MPS keep the default layout, which is what they were measured with."""
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    return model.to(device, memory_format=fmt)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch. On the CPU that makes a run repeatable; on CUDA, cuDNN and
    atomics still vary unless ``deterministic`` picks deterministic kernels (slower). Set either
    way: the jobs of a sweep share a process, and a job without it must not inherit it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        # only on a change: the call imports torch's compiler stack (0.9 s of every process)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA only; elsewhere full precision."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
