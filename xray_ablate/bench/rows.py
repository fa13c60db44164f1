"""One benchmark figure and how BENCHMARKS.md shows it."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch


@dataclass
class Row:
    suite: str
    what: str
    value: float
    unit: str
    target: str = ""  # e.g. "< 1 s"; empty when there is none
    met: bool | None = None
    command: str = ""
    notes: str = ""

    def markdown(self) -> str:
        status = "" if self.met is None else ("yes" if self.met else "**no**")
        value = f"{self.value:,.3g}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        return (f"| {self.suite} | {self.what} | {value} {self.unit} | {self.target} | {status} "
                f"| `{self.command}` | {self.notes} |")


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {device}, torch {torch.__version__}"
