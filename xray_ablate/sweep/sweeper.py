"""hydra/sweeper=planned: Hydra's basic sweeper without its second composition of every job.

Before a sweep starts, ``config.load.plan`` composes and validates every job (the command line
refuses a bad one in one line); the basic sweeper then composed each job once more to validate it
again, and the launcher a third time to run it. A Hydra compose takes about 0.5 s, so the repeat
cost a tiny 32-job sweep some 16 s. The job order, batches and launchers are the basic sweeper's.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class PlannedSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing to do: config.load.plan composed every job of the batch before the sweep."""

