"""The report's renderers: one content model (render/blocks.py, built by render/content.py), written
as report.md (render/markdown.py) and as a self-contained report.html (render/html.py)."""
