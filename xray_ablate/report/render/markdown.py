"""report.md from the content blocks."""

from __future__ import annotations

from xray_ablate.report import tables as T
from xray_ablate.report.render.blocks import Block, Figure, Heading, Table, Text


def markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_block(b) for b in blocks) + "\n"


def _block(block: Block) -> str:
    match block:
        case Heading(text, level):
            return f"{'#' * level} {text}"
        case Text(text):
            return text
        case Table(frame):
            return T.to_markdown(frame)
        case Figure(title, file):
            return f"![{title}]({file})"
    raise TypeError(f"not a report block: {block!r}")
