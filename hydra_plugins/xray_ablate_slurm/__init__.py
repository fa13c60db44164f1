"""Hydra instantiates launchers only from the hydra_plugins namespace: this names ours there."""

from xray_ablate.sweep.launchers.slurm import SlurmLauncher as _Slurm


class SlurmLauncher(_Slurm):
    """hydra/launcher=slurm (xray_ablate/sweep/launchers/slurm.py)."""
