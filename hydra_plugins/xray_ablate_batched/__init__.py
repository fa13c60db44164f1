"""Hydra instantiates launchers only from the hydra_plugins namespace: this names ours there."""

from xray_ablate.sweep.launchers.batched import BatchedLauncher as _Batched


class BatchedLauncher(_Batched):
    """hydra/launcher=batched (xray_ablate/sweep/launchers/batched.py)."""
