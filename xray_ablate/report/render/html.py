"""report.html from the content blocks: one self-contained page (CSS inline, figures as base64
PNG, tables from pandas), rendered with Jinja2; no JavaScript."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from xray_ablate.report.render.blocks import Block, Figure, Heading, Table, Text

TEMPLATE = "report.html.j2"
_NUMBER = re.compile(r"^(|–|nan|[-+−]?[\d.\[(].*)$")  # a number, an interval, or nothing
_BOLD = (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>")
_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_SAFE_HREF = re.compile(r"(https?://|#)|[^:]*$")  # the web, a section, or a path with no scheme


def render_html(blocks: list[Block], folder: Path) -> str:
    """The page; figures are read from ``folder`` (the report folder) and embedded."""
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "Ablation report")
    sections, anchors = [], {}
    for block in blocks:
        if isinstance(block, Heading) and block.level == 1:
            continue
        item = {"kind": type(block).__name__.lower(), "html": _html(block, folder)}
        if isinstance(block, Heading):
            item |= {"level": block.level, "id": _anchor(block.text, anchors)}
            item["html"] = Markup(f'<h{block.level} id="{item["id"]}">{html.escape(block.text)}</h{block.level}>')
        sections.append(item)
    toc = [s for s in sections if s["kind"] == "heading" and s["level"] == 2]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True)
    return env.get_template(TEMPLATE).render(title=title, intro=sections[:1], body=sections[1:], toc=[
        {"id": s["id"], "text": s["html"].striptags()} for s in toc])


def _html(block: Block, folder: Path) -> Markup:
    match block:
        case Heading():
            return Markup("")  # rendered with its anchor above
        case Text(text):
            return Markup(inline_html(text))
        case Table(frame):
            return Markup(_table(frame))
        case Figure(title, file):
            data = base64.b64encode((folder / file).read_bytes()).decode("ascii")
            # the heading above names it; alt keeps the title for readers without images
            return Markup(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}"></figure>')
    raise TypeError(f"not a report block: {block!r}")


def _table(frame: pd.DataFrame) -> str:
    """pandas' HTML table; numbers right-aligned (the CSS default), columns of words left-aligned."""
    words = [c for c in frame.columns if not frame[c].fillna("").astype(str).str.match(_NUMBER).all()]
    uuid = hashlib.sha256(frame.to_csv().encode()).hexdigest()[:8]  # ids stable from build to build
    style = frame.style.set_uuid(uuid).hide(axis="index").set_table_attributes('class="data"')
    style = style.format(na_rep="", escape="html")
    left = [{"selector": "th, td", "props": "text-align: left"}]
    table = style.set_table_styles(dict.fromkeys(words, left), overwrite=False).to_html()
    return _BOLD[0].sub(_BOLD[1], table)  # the cells' **bold** (the verdicts), as the Markdown report shows it


def inline_html(text: str) -> str:
    """A Text block's Markdown subset as HTML: paragraphs, "- " lists, **bold**, `code`, links."""
    out, items = [], []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if items:
        out.append("<ul>" + "".join(items) + "</ul>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escaped text with `code`, **bold** and [links](href). Names from the data and the config
    reach these lines (an experiment, an attribute), so nothing inside a code span becomes markup,
    and a link is made only to the web, a section or a file: [x](javascript:...) stays text, and
    quotes are escaped so an href cannot grow attributes."""
    parts = _CODE.split(html.escape(text, quote=True))  # odd parts: the code spans' contents
    return "".join(f"<code>{part}</code>" if i % 2 else _LINK.sub(_link, _BOLD[0].sub(_BOLD[1], part))
                   for i, part in enumerate(parts))


def _link(match: re.Match) -> str:
    text, href = match.groups()
    return f'<a href="{href}">{text}</a>' if _SAFE_HREF.match(href) else match.group(0)


def _anchor(text: str, seen: dict[str, int]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    seen[slug] = seen.get(slug, 0) + 1
    return slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
