"""Hydra instantiates sweepers only from the hydra_plugins namespace: this names ours there."""

from xray_ablate.sweep.sweeper import PlannedSweeper as _Planned


class PlannedSweeper(_Planned):
    """hydra/sweeper=planned (xray_ablate/sweep/sweeper.py)."""
