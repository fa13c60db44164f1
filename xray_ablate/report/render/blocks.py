"""The report's content model: a flat list of blocks that every renderer (md, html) walks."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2  # 1 is the report's title


@dataclass(frozen=True)
class Text:
    """A paragraph in inline Markdown (**bold**, `code`, [link](file)); lines starting "- " are a list."""

    text: str


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # a display table (formatted text), shown without its index


@dataclass(frozen=True)
class Figure:
    title: str
    file: str  # a PNG relative to the report folder


Block = Heading | Text | Table | Figure


def bullets(items: list[str]) -> Text:
    return Text("\n".join(f"- {item}" for item in items))
