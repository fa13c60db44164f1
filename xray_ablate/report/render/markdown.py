"""report.md from the content blocks."""

from __future__ import annotations

from xray_ablate.report.render.blocks import Block, Figure, Heading, Table, Text
from xray_ablate.report.render.tables import to_markdown


def markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_block(b) for b in blocks) + "\n"


def _block(block: Block) -> str:
    match block:
        case Heading(text, level):
            return f"{'#' * level} {text}"
        case Text(text):
            return text
        case Table(frame):
            return to_markdown(frame)
        case Figure(title, file):
            return f"![{title}]({file})"
    raise TypeError(f"not a report block: {block!r}")
